"""Harness for the integration tests: the real services as processes, on the real RabbitMQ (and
PostgreSQL) that scripts/test started. Each stack gets its own RabbitMQ vhost, so stacks never share queues."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import websockets

BIN = Path(os.environ["CHAT_TEST_BIN"])
AMQP_URL = os.environ["CHAT_TEST_AMQP_URL"]
RABBIT_NODE = os.environ["CHAT_TEST_RABBIT_NODE"]
RABBITMQCTL = os.environ.get("RABBITMQCTL", "/usr/lib/rabbitmq/bin/rabbitmqctl")
PG_URL = os.environ["CHAT_TEST_PG_URL"]
STATE = Path(os.environ["CHAT_TEST_STATE"])
JWT_SECRET = "integration-test-secret-of-at-least-32-bytes"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rabbitmqctl(*args):
    return subprocess.run([RABBITMQCTL, "-n", RABBIT_NODE, "-q", *args], check=True, capture_output=True, text=True).stdout


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def psql(url, sql):
    # Fields apart by the unit separator: chat texts may hold '|'.
    out = subprocess.run(["psql", url, "-At", "-F", "\x1f", "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("\x1f") for line in out.strip().splitlines() if line]


class Stack:
    """Persistence, rooms and any number of gateways, on a vhost of their own."""

    def __init__(self, name, database="sqlite", env=None):
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.dir = STATE / self.name
        self.dir.mkdir(parents=True)
        self.vhost = self.name
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.amqp_url = AMQP_URL.rsplit("/", 1)[0] + "/" + self.vhost
        if database == "postgres":
            dbname = "chat_" + self.name.replace("-", "_")
            psql(PG_URL, f"CREATE DATABASE {dbname}")
            self.pg_url = PG_URL.rsplit("/", 1)[0] + "/" + dbname
            self.messages_db = self.rooms_db = self.pg_url
        else:
            self.pg_url = None
            self.messages_db = f"sqlite:{self.dir}/messages.sqlite"
            self.rooms_db = f"sqlite:{self.dir}/rooms.sqlite"
        self.env = dict(os.environ, CHAT_AMQP_URL=self.amqp_url, CHAT_LOG_LEVEL="info", CHAT_ALLOW_ANONYMOUS="1",
                        CHAT_DEV_TOKENS="1", CHAT_JWT_SECRET=JWT_SECRET)
        # The abuse limits are off in the shared stacks (their tests send in bursts); test_limits.py sets them.
        self.env.update(LIMITS_OFF)
        self.env.update(env or {})
        self.procs = {}
        self.gateways = []
        self.ports = {}

    def _spawn(self, key, binary, env):
        log = open(self.dir / f"{key}.log", "ab")
        proc = subprocess.Popen([str(BIN / binary)], env=dict(self.env, **env), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs[key] = proc
        return proc

    def start_persistence(self):
        port = self.ports.setdefault("persistence", free_port())
        self._spawn("persistence", "Persistence", {"CHAT_DATABASE_URL": self.messages_db, "CHAT_HEALTH_PORT": str(port)})
        wait_http(f"http://127.0.0.1:{port}/health/ready")

    def start_rooms(self):
        port = self.ports.setdefault("rooms", free_port())
        self._spawn("rooms", "Rooms", {"CHAT_DATABASE_URL": self.rooms_db, "CHAT_HEALTH_PORT": str(port)})
        wait_http(f"http://127.0.0.1:{port}/health/ready")

    def start_gateway(self, **env):
        port = free_port()
        key = f"gateway{len(self.gateways)}"
        self._spawn(key, "Gateway", {"CHAT_GATEWAY_PORT": str(port), "CHAT_GATEWAY_ID": f"{self.name}-{key}", **env})
        wait_http(f"http://127.0.0.1:{port}/health/ready")
        self.gateways.append(port)
        return port

    def start(self):
        self.start_persistence()
        self.start_rooms()
        self.start_gateway()
        return self

    def kill(self, key, sig=signal.SIGKILL):
        proc = self.procs.pop(key)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        return proc.returncode

    def stop(self):
        for key in list(self.procs):
            proc = self.procs.pop(key)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        try:
            rabbitmqctl("delete_vhost", self.vhost)
        except subprocess.CalledProcessError:
            pass

    @property
    def url(self):
        return f"http://127.0.0.1:{self.gateways[0]}"

    @property
    def ws_base(self):
        return f"ws://127.0.0.1:{self.gateways[0]}"

    def ws_url(self, room, gateway=0):
        from urllib.parse import quote
        return f"ws://127.0.0.1:{self.gateways[gateway]}/ws/chat/{quote(room, safe='')}/"

    def stored(self, room):
        """(seq, text) of every stored message of a named room, by seq."""
        group = "named:" + room
        if self.pg_url:
            # The body hex-encoded: texts may hold newlines and the field separator.
            rows = psql(self.pg_url, f"SELECT seq, encode(convert_to(body, 'UTF8'), 'hex') FROM chat_messages "
                                     f"WHERE grp = '{group}' ORDER BY seq")
            return [(int(s), bytes.fromhex(b).decode()) for s, b in rows]
        import sqlite3
        with sqlite3.connect(self.dir / "messages.sqlite") as db:
            return [(s, b) for s, b in db.execute("SELECT seq, body FROM chat_messages WHERE grp = ? ORDER BY seq", (group,))]


LIMITS_OFF = {"CHAT_RATE_PER_SECOND": "0", "CHAT_CONNECT_RATE_PER_SECOND": "0", "CHAT_MAX_SOCKETS_PER_USER": "0",
              "CHAT_TRUSTED_PROXIES": "127.0.0.1"}

NGINX = "/usr/sbin/nginx"


def write_nginx_conf(directory, listen_port, gateway_ports):
    """nginx in front of the gateways, configured as ./scripts/run does it (scripts/lib/common.sh)."""
    common = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "common.sh"
    subprocess.run(["bash", "-c", f'source "{common}" && write_nginx_conf "$@"', "_", str(directory), "127.0.0.1",
                    str(listen_port), *map(str, gateway_ports)], check=True)
    return Path(directory) / "nginx.conf"


class ScaledStack(Stack):
    """Gateways, persistence workers and room services, several of each, all started at the same instant on
    one PostgreSQL, behind nginx: the deployment the services are sold as."""

    def __init__(self, name, gateways=2, persistence=2, rooms=2, env=None):
        super().__init__(name, database="postgres", env=env)
        self.counts = {"gateway": gateways, "persistence": persistence, "rooms": rooms}
        self.nginx_port = None

    def start(self):
        waits = []
        for i in range(self.counts["persistence"]):
            waits.append(self._spawn_persistence(i))
        for i in range(self.counts["rooms"]):
            port = self.ports.setdefault(f"rooms{i}", free_port())
            self._spawn(f"rooms{i}", "Rooms", {"CHAT_DATABASE_URL": self.rooms_db, "CHAT_HEALTH_PORT": str(port),
                                              "CHAT_ROOMS_INSTANCE_ID": f"r{i}"})
            waits.append(port)
        for i in range(self.counts["gateway"]):
            port = free_port()
            key = f"gateway{i}"
            self._spawn(key, "Gateway", {"CHAT_GATEWAY_PORT": str(port), "CHAT_GATEWAY_ID": f"{self.name}-{key}"})
            self.gateways.append(port)
            waits.append(port)
        for port in waits:
            wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60)
        # The single-instance names the shared tests use point at the first instance of each.
        self.ports["persistence"], self.ports["rooms"] = self.ports["persistence0"], self.ports["rooms0"]
        self.start_nginx()
        return self

    def start_nginx(self):
        self.nginx_port = self.nginx_port or free_port()
        conf = write_nginx_conf(self.dir / "nginx", self.nginx_port, self.gateways[: self.counts["gateway"]])
        self.procs["nginx"] = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.dir / "nginx"), "-g", "daemon off;"],
                                               stdout=open(self.dir / "nginx.log", "ab"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.nginx_port}/health", timeout=20)

    def _spawn_persistence(self, i):
        port = self.ports.setdefault(f"persistence{i}", free_port())
        self._spawn(f"persistence{i}", "Persistence", {"CHAT_DATABASE_URL": self.messages_db, "CHAT_HEALTH_PORT": str(port),
                                                      "CHAT_PERSIST_WORKER_ID": f"w{i}"})
        return port

    def restart_persistence(self, i):
        wait_http(f"http://127.0.0.1:{self._spawn_persistence(i)}/health/ready", timeout=60)

    def start_persistence(self):
        self.restart_persistence(0)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def ws_base(self):
        return f"ws://127.0.0.1:{self.nginx_port}"

    def ws_url(self, room, gateway=None):
        from urllib.parse import quote
        port = self.nginx_port if gateway is None else self.gateways[gateway]
        return f"ws://127.0.0.1:{port}/ws/chat/{quote(room, safe='')}/"

    def worker_stats(self):
        return [requests.get(f"http://127.0.0.1:{self.ports[f'persistence{i}']}/stats", timeout=5).json()
                for i in range(self.counts["persistence"]) if f"persistence{i}" in self.procs]

    def room_stats(self):
        return [requests.get(f"http://127.0.0.1:{self.ports[f'rooms{i}']}/stats", timeout=5).json()
                for i in range(self.counts["rooms"]) if f"rooms{i}" in self.procs]


QUICK_MEMBERSHIP = {"CHAT_GATEWAY_EXPIRY_SECONDS": "3", "CHAT_HEARTBEAT_SECONDS": "1"}


@pytest.fixture(scope="module", params=["single", "scaled"])
def stack(request):
    """Every test that takes `stack` runs on one instance of each service on SQLite, and again on 2 gateways,
    2 persistence workers and 2 room services on PostgreSQL behind nginx."""
    if request.param == "single":
        s = Stack("sqlite", env=QUICK_MEMBERSHIP).start()
    else:
        s = ScaledStack("scaled", env=QUICK_MEMBERSHIP).start()
    yield s
    s.stop()


def unique_room(prefix="room"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """A WebSocket client that records every frame it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.frames = []
        self.presence = []  # presence frames, kept apart from the chat frames
        self._pending = []  # chat frames read while waiting for presence, not yet returned by recv

    @classmethod
    async def connect(cls, url, origin="http://127.0.0.1"):
        return cls(await websockets.connect(url, additional_headers={"Origin": origin}, max_size=None))

    async def send(self, text):
        await self.ws.send(json.dumps({"message": text}))

    async def _read(self, until, timeout):
        """Reads frames, presence frames into `self.presence` and chat frames into `self._pending`, until
        `until()` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            (self.presence if frame.get("type") == "presence" else self._pending).append(frame)

    async def recv(self, timeout=10):
        """The next frame that is not a presence frame (those go to `self.presence`)."""
        await self._read(lambda: self._pending, timeout)
        frame = self._pending.pop(0)
        self.frames.append(frame)
        return frame

    async def presence_until(self, predicate, timeout=10):
        """Reads frames until a presence frame satisfies `predicate`; returns it (chat frames are kept)."""
        found = lambda: next((f for f in self.presence if predicate(f)), None)
        await self._read(found, timeout)
        return found()

    async def recv_messages(self, count, timeout=20):
        """Receives `count` chat messages (error frames are kept apart and fail the caller)."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            frame = await self.recv(timeout=max(0.1, deadline - time.monotonic()))
            assert "error" not in frame, frame
            out.append(frame)
        return out

    async def recv_messages_and_errors(self, count, timeout=20):
        """Receives `count` frames, chat messages and error frames alike, in order."""
        deadline = time.monotonic() + timeout
        return [await self.recv(timeout=max(0.1, deadline - time.monotonic())) for _ in range(count)]

    async def expect_silence(self, seconds=1.0):
        try:
            frame = await self.recv(timeout=seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def close(self):
        await self.ws.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))
