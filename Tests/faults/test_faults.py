"""The fault suite (./scripts/faults; a short run in ./scripts/test): steady load on 2 gateways × 2 persistence
workers × 2 room services behind nginx, on PostgreSQL, and one fault at a time. Every client sends with a
client_id, reconnects by itself through nginx resuming after the last seq it saw, and resends what was not acked.

After each fault the load stops, every unacked message is resent until acked, and the invariant is checked from
every client's log and from the database:
- every message acked to its sender is stored exactly once and reached every member of its room, live or by resume;
- per room, everyone saw the same order (the same id at each seq);
- no client_id was acked twice with different seqs.
For each fault it prints: messages sent, acked, lost, duplicated, error frames, and the time until every client
was back. Everything runs on 127.0.0.1, bounded in count and time.
"""
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import QUICK_MEMBERSHIP, ScaledStack, psql, wait_http  # noqa: E402

SHORT = os.environ.get("CHAT_FAULTS_SHORT") == "1"
ROOMS = int(os.environ.get("CHAT_FAULTS_ROOMS", "4" if SHORT else "12"))
PER_ROOM = int(os.environ.get("CHAT_FAULTS_CLIENTS_PER_ROOM", "3" if SHORT else "5"))
RATE = float(os.environ.get("CHAT_FAULTS_RATE", "4"))          # messages per second per client
BEFORE, AFTER = (1.5, 2.5) if SHORT else (3.0, 6.0)            # seconds of load before the fault and after the repair
RESEND_AFTER = 2.0                                             # an unacked message is sent again after this long
COMMON = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "common.sh"
RESULTS = []


class LoadClient:
    """One chat user: a socket through nginx that reconnects and resumes by itself, an outbox of unacked
    messages, and a log of what it saw."""

    def __init__(self, url, room, name):
        self.url, self.room, self.name = url, room, name
        self.last_seq = None
        self.seen = {}          # seq -> id, every chat frame received
        self.doubled = 0        # a seq received twice with different ids
        self.acks = {}          # client_id -> (id, seq), this fault's messages
        self.every_ack = {}     # client_id -> (id, seq), all along: an ack may come again later (a redelivery)
        self.ack_conflicts = 0  # a client_id acked with two different seqs
        self.outbox = {}        # client_id -> (frame, last sent)
        self.counter = 0
        self.sent_before = 0
        self.errors = 0
        self.close_codes = []
        self.down_since = None  # when the socket dropped (None while connected)
        self.outages = []       # seconds each drop lasted
        self.sending = True
        self.ws = None
        self.stop = False
        self.latencies = []     # (when, seconds from send to delivery) of each chat frame of this room, first time seen

    def new_message(self):
        self.counter += 1
        client_id = f"{self.name}-{self.counter}"
        frame = {"message": f"{self.name} #{self.counter} @{time.time():.3f}", "client_id": client_id}
        self.outbox[client_id] = (frame, 0.0)
        return client_id

    async def run(self):
        attempt = 0
        while not self.stop:
            url = self.url + ("" if self.last_seq is None else f"?since={self.last_seq}")
            try:
                async with websockets.connect(url, additional_headers={"Origin": "http://127.0.0.1"}, open_timeout=5,
                                              max_size=None, close_timeout=1) as ws:
                    self.ws = ws
                    attempt = 0
                    if self.down_since is not None:
                        self.outages.append(time.monotonic() - self.down_since)
                        self.down_since = None
                    for client_id in list(self.outbox):
                        await self.send(client_id)
                    tasks = {asyncio.create_task(self.read(ws)), asyncio.create_task(self.write(ws))}
                    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    if ws.close_code is not None:
                        self.close_codes.append(ws.close_code)
                    for task in done:
                        task.result()
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                pass
            self.ws = None
            if self.stop:
                break
            if self.down_since is None:
                self.down_since = time.monotonic()
            attempt += 1
            ceiling = min(2.0, 0.05 * 2 ** min(attempt, 6))
            await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)

    async def send(self, client_id):
        frame, _ = self.outbox[client_id]
        self.outbox[client_id] = (frame, time.monotonic())
        await self.ws.send(json.dumps(frame))

    async def write(self, ws):
        while not self.stop:
            if self.sending and random.random() < RATE / 10:
                await self.send(self.new_message())
            now = time.monotonic()
            for client_id, (_, sent) in list(self.outbox.items()):
                if now - sent > RESEND_AFTER:
                    await self.send(client_id)
            await asyncio.sleep(0.1)
        await ws.close()

    async def read(self, ws):
        async for raw in ws:
            data = json.loads(raw)
            kind = data.get("type")
            if "error" in data:
                self.errors += 1
            elif kind == "ack":
                ack = (data["id"], data["seq"])
                earlier = self.every_ack.setdefault(data["client_id"], ack)
                if earlier != ack:
                    self.ack_conflicts += 1
                if int(data["client_id"].rsplit("-", 1)[1]) > self.sent_before:
                    self.acks[data["client_id"]] = ack
                self.outbox.pop(data["client_id"], None)
            elif kind == "reset":
                self.last_seq = data["last_seq"]
            elif kind is None and "seq" in data:
                if data["seq"] in self.seen and self.seen[data["seq"]] != data["id"]:
                    self.doubled += 1
                elif data["seq"] not in self.seen and " @" in data.get("message", ""):
                    now = time.time()
                    self.latencies.append((now, now - float(data["message"].rsplit(" @", 1)[1])))
                self.seen[data["seq"]] = data["id"]
                self.last_seq = max(self.last_seq or 0, data["seq"])


class Faults:
    """The stack, its RabbitMQ and PostgreSQL (which scripts/faults started and lets this suite stop), and the load."""

    def __init__(self):
        self.stack = ScaledStack("faults", env=QUICK_MEMBERSHIP).start()
        self.rabbit_dir, self.rabbit_port = os.environ["CHAT_FAULTS_RABBIT_DIR"], os.environ["CHAT_FAULTS_RABBIT_PORT"]
        self.pg_dir, self.pg_port = os.environ["CHAT_FAULTS_PG_DIR"], os.environ["CHAT_FAULTS_PG_PORT"]
        base = f"ws://127.0.0.1:{self.stack.nginx_port}/ws/chat/"
        self.rooms = [f"fault-{i}-{os.getpid()}" for i in range(ROOMS)]
        self.clients = [LoadClient(f"{base}{room}/", room, f"{room}-c{j}") for room in self.rooms for j in range(PER_ROOM)]

    # Faults and their repairs

    def sockets_per_gateway(self):
        counts = []
        for port in self.stack.gateways:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                counts.append(float(next(l for l in text.splitlines() if l.startswith("chat_gateway_sockets_open")).split()[-1]))
            except (requests.RequestException, StopIteration):
                counts.append(0.0)
        return counts

    def kill_gateway(self, sig):
        # The gateway holding the most sockets (nginx spreads new connections at random, and a restarted gateway
        # starts empty).
        counts = self.sockets_per_gateway()
        index = counts.index(max(counts))
        key, port = f"gateway{index}", self.stack.gateways[index]
        self.stack.kill(key, sig)
        return lambda: self.respawn(key, "Gateway", {"CHAT_GATEWAY_PORT": str(port), "CHAT_GATEWAY_ID": f"{self.stack.name}-{key}-{time.time():.0f}"}, port)

    def kill_busiest_persistence(self):
        stats = self.stack.worker_stats()
        busiest = max(stats, key=lambda s: len(s["owned"]))
        index = int(busiest["worker"][1:])
        self.stack.kill(f"persistence{index}")
        return lambda: self.stack.restart_persistence(index)

    def kill_rooms(self):
        self.stack.kill("rooms0")
        port = self.stack.ports["rooms0"]
        return lambda: self.respawn("rooms0", "Rooms", {"CHAT_DATABASE_URL": self.stack.rooms_db, "CHAT_HEALTH_PORT": str(port),
                                                        "CHAT_ROOMS_INSTANCE_ID": "r0"}, port)

    def kill_rabbitmq(self):
        pid = int(Path(self.rabbit_dir, "rabbit.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        return lambda: self.bash(f'start_rabbitmq "{self.rabbit_dir}" {self.rabbit_port}')

    def restart_postgres(self):
        self.bash(f'stop_postgres "{self.pg_dir}"')
        return lambda: self.bash(f'start_postgres "{self.pg_dir}" {self.pg_port}')

    def respawn(self, key, binary, env, port):
        self.stack._spawn(key, binary, env)
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60)

    @staticmethod
    def bash(command):
        subprocess.run(["bash", "-c", f'source "{COMMON}" && {command}'], check=True, capture_output=True, timeout=120)

    # One fault under load

    async def under_load(self, name, inject):
        for client in self.clients:
            client.sending = True
        await asyncio.sleep(BEFORE)
        started = time.monotonic()
        repair = await asyncio.to_thread(inject)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(repair)
        await asyncio.sleep(AFTER)
        for client in self.clients:
            client.sending = False
        # Every unacked message is resent until acked (bounded).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(c.outbox or c.ws is None for c in self.clients):
            await asyncio.sleep(0.2)
        back = max((c.outages[-1] for c in self.clients if c.outages and c.down_since is None), default=0.0)
        # Then every member must have seen every acked message of its room.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.missing():
            await asyncio.sleep(0.2)
        return self.report(name, time.monotonic() - started, back)

    def missing(self):
        acked = self.acked_by_room()
        return sum(1 for c in self.clients for seq in acked[c.room] if seq not in c.seen)

    def acked_by_room(self):
        acked = {room: {} for room in self.rooms}
        for c in self.clients:
            for client_id, (message_id, seq) in c.acks.items():
                acked[c.room][seq] = message_id
        return acked

    def report(self, name, elapsed, back):
        rows = psql(self.stack.pg_url, "SELECT grp, seq, id, client_id FROM chat_messages WHERE grp LIKE 'named:fault-%'")
        stored_by_client_id = {}
        for grp, seq, message_id, client_id in rows:
            stored_by_client_id.setdefault(client_id, []).append((int(seq), message_id))
        sent = sum(c.counter - c.sent_before for c in self.clients)
        acked = sum(len(c.acks) for c in self.clients)
        lost_store = sum(1 for c in self.clients for client_id, ack in c.acks.items()
                         if [(ack[1], ack[0])] != stored_by_client_id.get(client_id))
        lost_delivery = self.missing()
        doubled = sum(c.doubled for c in self.clients) + sum(len(v) - 1 for v in stored_by_client_id.values() if len(v) > 1)
        conflicts = sum(c.ack_conflicts for c in self.clients)
        # Everyone in a room saw the same id at each seq.
        orders = {}
        order_breaks = 0
        for c in self.clients:
            for seq, message_id in c.seen.items():
                if orders.setdefault((c.room, seq), message_id) != message_id:
                    order_breaks += 1
        errors = sum(c.errors for c in self.clients)
        unacked = sum(len(c.outbox) for c in self.clients)
        row = dict(fault=name, sent=sent, acked=acked, lost=lost_store + lost_delivery, duplicated=doubled + conflicts,
                   order_breaks=order_breaks, unacked=unacked, error_frames=errors, back_s=round(back, 2), total_s=round(elapsed, 1),
                   close_codes=sorted(set(code for c in self.clients for code in c.close_codes)))
        RESULTS.append(row)
        print(f"\n[fault] {json.dumps(row)}", flush=True)
        for c in self.clients:  # the next fault starts from a clean count (client ids go on: each is used once)
            c.sent_before, c.acks, c.errors, c.close_codes, c.outages = c.counter, {}, 0, [], []
        return row

    def stop(self):
        self.stack.stop()


FAULTS = {
    "gateway SIGKILL": lambda f: f.kill_gateway(signal.SIGKILL),
    "gateway SIGTERM": lambda f: f.kill_gateway(signal.SIGTERM),
    "persistence SIGKILL (most partitions)": lambda f: f.kill_busiest_persistence(),
    "room service SIGKILL": lambda f: f.kill_rooms(),
    "RabbitMQ SIGKILL and start": lambda f: f.kill_rabbitmq(),
    "PostgreSQL restart (fast)": lambda f: f.restart_postgres(),
}


@pytest.fixture(scope="module")
def faults():
    f = Faults()
    yield f
    f.stop()
    print("\n\nfault | sent | acked | lost | duplicated | order breaks | unacked | error frames | clients back after (s) | close codes")
    print("---|---|---|---|---|---|---|---|---|---")
    for r in RESULTS:
        print(f"{r['fault']} | {r['sent']} | {r['acked']} | {r['lost']} | {r['duplicated']} | {r['order_breaks']} | {r['unacked']} | "
              f"{r['error_frames']} | {r['back_s']} | {r['close_codes']}")


def test_every_fault_in_turn_loses_and_doubles_nothing(faults):
    async def scenario():
        tasks = [asyncio.create_task(c.run()) for c in faults.clients]
        try:
            rows = [await faults.under_load(name, lambda: inject(faults)) for name, inject in FAULTS.items()]
        finally:
            for c in faults.clients:
                c.stop = True
            await asyncio.wait(tasks, timeout=10)
        return rows

    rows = asyncio.run(asyncio.wait_for(scenario(), 900))
    for row in rows:
        assert row["acked"] > 0, row
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["order_breaks"] == 0, row
        assert row["unacked"] == 0, row
    sigterm = next(r for r in rows if r["fault"] == "gateway SIGTERM")
    assert 1001 in sigterm["close_codes"], sigterm
