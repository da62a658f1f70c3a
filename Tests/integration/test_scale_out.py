"""Every service as several instances on one RabbitMQ and one PostgreSQL behind nginx: started together,
sharing the load, surviving the SIGKILL of any one instance, refusing text the store cannot hold, and telling
clients who is there."""
import asyncio
import json
import struct
import time
import uuid

import pika
import pytest
import requests

from conftest import QUICK_MEMBERSHIP, Client, ScaledStack, psql, run, unique_room, wait_http

PARTITIONS = 2  # the services' default (ChatTopology.defaultPartitions)


@pytest.fixture(scope="module")
def scaled():
    s = ScaledStack("scale", env=QUICK_MEMBERSHIP).start()
    yield s
    s.stop()


def wait_until(predicate, timeout=20, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def owned(stack):
    return {s["worker"]: s["owned"] for s in stack.worker_stats()}


def partition_batch(messages):
    """A `chat.messages` body as gateways write it (Shared/ChatWire): version 1, a count, then per message its id,
    group, sender?, text, receivedAt, clientID?, replyTo?, socket? (strings as a 32-bit length and UTF-8,
    integers big-endian 64-bit, an optional as a presence byte)."""
    def string(value):
        data = value.encode()
        return struct.pack(">I", len(data)) + data

    def optional(value, encode):
        return b"\x00" if value is None else b"\x01" + encode(value)

    out = struct.pack(">BI", 1, len(messages))
    for m in messages:
        out += string(m["id"]) + string(m["group"]) + optional(m.get("sender"), string) + string(m["text"])
        out += struct.pack(">q", m["receivedAt"]) + optional(m.get("clientID"), string) + optional(m.get("replyTo"), string)
        out += optional(m.get("socket"), lambda v: struct.pack(">q", v))
    return out


def test_everything_started_at_once_is_ready_with_one_schema_and_split_partitions(scaled):
    assert psql(scaled.pg_url, "SELECT component, MAX(version) FROM chat_schema GROUP BY component ORDER BY component") == [
        ["messages", "3"], ["rooms", "5"]]
    # The workers have found each other and split the partitions evenly, each partition to exactly one.
    assert wait_until(lambda: sorted(len(p) for p in owned(scaled).values()) == [PARTITIONS // 2, PARTITIONS // 2], timeout=15)
    shares = owned(scaled).values()
    assert sorted(p for share in shares for p in share) == list(range(PARTITIONS))
    for port in [scaled.ports[k] for k in ("persistence0", "persistence1", "rooms0", "rooms1")] + scaled.gateways[:2]:
        assert requests.get(f"http://127.0.0.1:{port}/health/ready").json()["ready"] is True


async def room_load(stack, rooms, per_room, messages, pace=0.005, urls=None, during=None):
    """`rooms` rooms of `per_room` clients each, every client sending `messages`; returns (rooms, clients per
    room, texts sent per room). `urls(room, i)` picks each client's URL (default: through nginx)."""
    names = [unique_room("load") for _ in range(rooms)]
    clients = {}
    for name in names:
        clients[name] = [await Client.connect(urls(name, i) if urls else stack.ws_url(name)) for i in range(per_room)]
    sent = {name: [] for name in names}

    async def sender(name, index, client):
        for n in range(messages):
            text = f"{name}|{index}|{n}"
            try:
                await client.send(text)
            except Exception:
                return  # its gateway died
            sent[name].append(text)
            await asyncio.sleep(pace)

    tasks = [asyncio.create_task(sender(name, i, c)) for name in names for i, c in enumerate(clients[name])]
    if during:
        await during()
    await asyncio.gather(*tasks)
    return names, clients, sent


async def drain(client, expected, timeout=60, quiet=3):
    """Chat frames until `expected` have come, the deadline passes, or the socket is quiet for `quiet` s."""
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < expected and time.monotonic() < deadline:
        try:
            frame = await client.recv(timeout=max(0.5, min(quiet, deadline - time.monotonic())))
        except Exception:
            break
        assert "error" not in frame, frame
        frames.append(frame)
    return frames


def check_room(stack, name, receivers, sent_by_live):
    """Every live receiver has every stored message of the room exactly once, seqs 1..N without gap; every
    message a live client sent is stored; nothing is stored twice."""
    stored = stack.stored(name)
    assert [s for s, _ in stored] == list(range(1, len(stored) + 1)), f"{name}: seqs not contiguous"
    texts = [t for _, t in stored]
    assert len(set(texts)) == len(texts), f"{name}: a message stored twice"
    assert set(sent_by_live) <= set(texts), f"{name}: {len(set(sent_by_live) - set(texts))} acknowledged messages lost"
    for frames in receivers:
        assert [f["seq"] for f in frames] == list(range(1, len(stored) + 1)), f"{name}: a receiver missed or doubled"
        assert [f["message"] for f in frames] == texts


def test_fifty_rooms_of_six_over_both_gateways_every_message_once_in_order_on_both_workers(scaled):
    before = {s["worker"]: s["stored"] for s in scaled.worker_stats()}

    async def scenario():
        stats_during = {}

        async def look():
            await asyncio.sleep(1.5)  # joins are on the fanout by now
            stats_during["rooms"] = await asyncio.to_thread(scaled.room_stats)

        names, clients, sent = await room_load(scaled, rooms=50, per_room=6, messages=5, pace=0.02, during=look)
        received = await asyncio.gather(*[asyncio.gather(*[drain(c, len(sent[name])) for c in clients[name]]) for name in names])
        for name, receivers in zip(names, received):
            check_room(scaled, name, receivers, sent[name])
            assert len(sent[name]) == 30
        for name in names:
            for c in clients[name]:
                await c.close()
        return names, stats_during

    names, stats_during = run(scenario())
    rows = int(psql(scaled.pg_url, "SELECT COUNT(*) FROM chat_messages WHERE grp LIKE 'named:load-%'")[0][0])
    assert rows >= 50 * 30
    after = {s["worker"]: s["stored"] for s in scaled.worker_stats()}
    shares = {w: after[w] - before.get(w, 0) for w in after}
    print(f"\nmessages stored per worker: {shares}")
    assert len(shares) == 2 and all(n > 0 for n in shares.values()), shares
    for stats in stats_during["rooms"]:
        counts = [stats["rooms"].get("named:" + name) for name in names]
        assert counts == [6] * 50, counts


def test_text_the_store_cannot_hold_gets_an_error_frame_mid_stream_and_nothing_else_is_lost(scaled):
    room = unique_room("nul")

    async def scenario():
        a = await Client.connect(scaled.ws_url(room))
        b = await Client.connect(scaled.ws_url(room))
        for i in range(10):
            await a.send(f"before {i}")
        await a.ws.send(json.dumps({"message": "zero\u0000byte"}))
        await a.ws.send(json.dumps({"message": "escape \u001b[31m red"}))
        for i in range(10):
            await a.send(f"after {i}")
        frames = await a.recv_messages_and_errors(22)
        errors = [f["error"] for f in frames if "error" in f]
        assert errors == ["'message' must not contain the control character U+0000",
                          "'message' must not contain the control character U+001B"]
        got = await b.recv_messages(20)
        assert [f["message"] for f in got] == [f"before {i}" for i in range(10)] + [f"after {i}" for i in range(10)]
        await a.close()
        await b.close()

    run(scenario())
    assert [s for s, _ in scaled.stored(room)] == list(range(1, 21))


def test_a_message_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored_in_order(scaled):
    """Published straight onto the room's partition (as a gateway of another build might): PostgreSQL refuses
    U+0000. The batch is split, the message goes to chat.dead with the reason, and the pipeline goes on."""
    room = unique_room("poison")
    group = "named:" + room
    partition = partition_of(group, PARTITIONS)
    batch = [{"id": str(uuid.uuid4()), "group": group, "text": text, "receivedAt": int(time.time() * 1000)}
             for text in ["first", "bad\u0000text", "third", "fourth"]]

    async def scenario():
        watcher = await Client.connect(scaled.ws_url(room))
        await asyncio.sleep(0.5)
        params = pika.URLParameters(scaled.amqp_url.replace("/" + scaled.vhost, "/" + scaled.vhost.replace("/", "%2F")))
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("chat.inbound", f"p{partition}", partition_batch(batch),
                              pika.BasicProperties(type="chat.messages"), mandatory=True)
        got = await watcher.recv_messages(3, timeout=30)
        assert [f["message"] for f in got] == ["first", "third", "fourth"]
        assert [f["seq"] for f in got] == [1, 2, 3]
        await watcher.ws.send(json.dumps({"message": "still flowing"}))
        assert (await watcher.recv_messages(1))[0]["seq"] == 4
        method, properties, body = None, None, None
        for _ in range(50):
            method, properties, body = channel.basic_get("chat.dead", auto_ack=True)
            if method:
                break
            time.sleep(0.1)
        connection.close()
        assert method is not None, "nothing on chat.dead"
        dead = json.loads(body)
        assert dead["id"] == batch[1]["id"] and dead["text"] == "bad\u0000text"
        reason = properties.headers["x-reason"]
        reason = reason.decode() if isinstance(reason, bytes) else reason
        assert "0x00" in reason or "22021" in reason or "invalid byte sequence" in reason, reason
        await watcher.close()

    run(scenario())
    assert scaled.stored(room) == [(1, "first"), (2, "third"), (3, "fourth"), (4, "still flowing")]
    assert sum(s["dead_letters"] for s in scaled.worker_stats()) >= 1


def partition_of(group, count):
    h = 0xcbf29ce484222325
    for byte in group.encode():
        h ^= byte
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % count


def test_named_room_presence_follows_joins_leaves_and_a_dead_gateway(scaled):
    room = unique_room("presence")
    extra = scaled.start_gateway()  # a third gateway, to kill
    key = f"gateway{len(scaled.gateways) - 1}"

    async def scenario():
        from urllib.parse import quote
        joined = time.monotonic()
        a = await Client.connect(scaled.ws_url(room, gateway=0))
        assert (await a.presence_until(lambda f: True))["count"] == 1
        b = await Client.connect(scaled.ws_url(room, gateway=1))
        assert (await b.presence_until(lambda f: True)) == {"type": "presence", "room": room, "count": 2}
        await asyncio.sleep(1.5)  # past the notifier's next pass: what it sends b says nothing new, so b gets nothing
        await b.expect_silence(0.1)
        assert len(b.presence) == 1, b.presence
        await a.presence_until(lambda f: f["count"] == 2, timeout=5)
        c = [await Client.connect(f"ws://127.0.0.1:{extra}/ws/chat/{quote(room)}/") for _ in range(3)]
        await a.presence_until(lambda f: f["count"] == 5, timeout=5)
        await b.presence_until(lambda f: f["count"] == 5, timeout=5)
        await b.close()
        await a.presence_until(lambda f: f["count"] == 4, timeout=5)
        seen = len(a.presence)
        started = time.monotonic()
        scaled.kill(key)  # SIGKILL: no leave; the others forget it after CHAT_GATEWAY_EXPIRY_SECONDS (3 s here)
        a.presence.clear()  # only what comes after the kill counts
        await a.presence_until(lambda f: f["count"] == 1, timeout=10)
        print(f"\npresence after a gateway SIGKILL exact in {time.monotonic() - started:.1f} s")
        # Coalesced: at most one presence frame per second per room (since the socket joined: 1 + one a second).
        assert seen <= 1 + int(time.monotonic() - joined) + 1, (seen, a.presence)
        await a.close()

    run(scenario())
    assert wait_until(lambda: all(s["rooms"].get("named:" + room, 0) == 0 for s in scaled.room_stats()), timeout=10)


def test_consultation_presence_lists_who_is_online(scaled):
    from consult import Api, consult_socket
    api = Api(scaled.url)
    shop, visitor = f"shop-{uuid.uuid4().hex[:6]}@example.com", f"visitor-{uuid.uuid4().hex[:6]}@example.com"
    shop_token, visitor_token = api.token(shop, "shop"), api.token(visitor, "visitor")
    room = api.create_room(visitor_token, shop, visitor).json()

    async def scenario():
        v = await consult_socket(scaled, room["id"], visitor_token)
        assert (await v.presence_until(lambda f: True))["online"] == [visitor]
        s = await consult_socket(scaled, room["id"], shop_token)
        await s.presence_until(lambda f: f["online"] == sorted([shop, visitor]), timeout=5)
        await v.presence_until(lambda f: f["online"] == sorted([shop, visitor]), timeout=5)
        await v.close()
        await s.presence_until(lambda f: f["online"] == [shop], timeout=5)
        await s.close()

    run(scenario())


# MARK: one SIGKILL at a time, mid-stream, under load


def kill_mid_stream(target, stack, check_after=None):
    """10 rooms of 6 clients, 3 on each gateway, each sending 40 messages; `target` is SIGKILLed a third of
    the way through. Returns the seconds until the system had recovered (per `check_after`)."""
    recovered = {}

    async def scenario():
        def urls(name, i):
            return stack.ws_url(name, gateway=i % 2)

        async def during():
            await asyncio.sleep(0.6)
            started = time.monotonic()
            stack.kill(target)
            if check_after:
                ok = await asyncio.to_thread(wait_until, check_after, 20)
                assert ok, f"no recovery after killing {target}"
            recovered["seconds"] = time.monotonic() - started

        names, clients, sent = await room_load(stack, rooms=10, per_room=6, messages=40, pace=0.03, urls=urls, during=during)
        # The dead gateway's clients' last messages may or may not have reached the broker: expect what is stored
        # once the rows stop growing, and every message the live clients sent.
        if target.startswith("gateway"):
            await asyncio.sleep(3)
        else:
            assert await asyncio.to_thread(wait_until, lambda: all(len(stack.stored(n)) >= len(sent[n]) for n in names), 30, 0.5)
        expected = {name: len(stack.stored(name)) for name in names}
        live = {name: clients[name] if not target.startswith("gateway") else clients[name][1::2] for name in names}
        received = await asyncio.gather(*[asyncio.gather(*[drain(c, expected[name]) for c in live[name]]) for name in names])
        for name, receivers in zip(names, received):
            sent_by_live = [t for t in sent[name] if not target.startswith("gateway") or int(t.split("|")[1]) % 2 == 1]
            check_room(stack, name, receivers, sent_by_live)
        for name in names:
            for c in clients[name]:
                try:
                    await c.close()
                except Exception:
                    pass

    run(scenario())
    return recovered["seconds"]


def test_sigkill_of_a_persistence_worker_mid_stream_moves_its_partitions_and_loses_nothing():
    stack = ScaledStack("killworker", env=QUICK_MEMBERSHIP).start()
    try:
        assert wait_until(lambda: sorted(len(p) for p in owned(stack).values()) == [PARTITIONS // 2, PARTITIONS // 2], timeout=15)
        seconds = kill_mid_stream("persistence0", stack, check_after=lambda: owned(stack).get("w1") == list(range(PARTITIONS)))
        print(f"\npartitions moved to the surviving worker {seconds:.1f} s after the SIGKILL")
        assert seconds <= 10
        stack.restart_persistence(0)
        assert wait_until(lambda: sorted(len(p) for p in owned(stack).values()) == [PARTITIONS // 2, PARTITIONS // 2], timeout=15)
    finally:
        stack.stop()


def test_sigkill_of_a_room_service_mid_stream_loses_no_room_and_no_member():
    stack = ScaledStack("killrooms", env=QUICK_MEMBERSHIP).start()
    try:
        room = unique_room("kept")
        members = {}

        async def hold():
            clients = [await Client.connect(stack.ws_url(room, gateway=i % 2)) for i in range(4)]
            await asyncio.sleep(1.5)
            return clients

        async def scenario():
            clients = await hold()
            started = time.monotonic()
            stack.kill("rooms0")
            # New sockets still join (the survivor answers), and it knows every member.
            late = await Client.connect(stack.ws_url(unique_room("after-kill")))
            members["joined_after"] = time.monotonic() - started
            await late.close()
            members["count"] = stack.room_stats()[0]["rooms"].get("named:" + room)
            for c in clients:
                await c.close()

        run(scenario())
        print(f"\na new socket joined {members['joined_after']:.2f} s after the room service's SIGKILL")
        assert members["count"] == 4
        kill_mid_stream("rooms1", stack)
    finally:
        stack.stop()


def test_sigkill_of_a_gateway_mid_stream_leaves_the_other_gateways_clients_whole():
    stack = ScaledStack("killgw", env=QUICK_MEMBERSHIP).start()
    try:
        seconds = kill_mid_stream("gateway0", stack, check_after=lambda: all(
            s["gateways"] == 1 for s in stack.room_stats()))
        print(f"\nthe dead gateway's members left the counts {seconds:.1f} s after its SIGKILL")
        # nginx sends new sockets to the survivor.
        async def after():
            c = await Client.connect(stack.ws_url(unique_room("via-nginx")))
            await c.send("after the kill")
            assert (await c.recv_messages(1))[0]["message"] == "after the kill"
            await c.close()
        run(after())
    finally:
        stack.stop()


def test_a_service_started_before_its_database_exists_waits_and_is_ready_once_it_does():
    from conftest import BIN, PG_URL, STATE, free_port
    import os
    import subprocess
    name = f"late_{uuid.uuid4().hex[:6]}"
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    stack = ScaledStack("latedb", gateways=1, persistence=1, rooms=1)
    procs = []
    try:
        ports = {}
        for binary in ["Persistence", "Rooms"]:
            ports[binary] = free_port()
            env = dict(stack.env, CHAT_DATABASE_URL=url, CHAT_HEALTH_PORT=str(ports[binary]))
            procs.append(subprocess.Popen([str(BIN / binary)], env=env, stdout=open(stack.dir / f"{binary}.log", "ab"),
                                          stderr=subprocess.STDOUT, cwd=stack.dir))
        for binary, port in ports.items():
            assert wait_until(lambda: _get(port, "/health") is not None, 20), binary
            ready = requests.get(f"http://127.0.0.1:{port}/health/ready")
            assert ready.status_code == 503, binary
            assert "database" in ready.json()["waiting"], ready.json()
        time.sleep(6)  # past one attempt's 5 s: the service logs that it retries
        assert all(p.poll() is None for p in procs), "a service gave up instead of waiting"
        assert "no answer within" in requests.get(f"http://127.0.0.1:{ports['Persistence']}/health/ready").json()["waiting"]["database"]
        psql(PG_URL, f"CREATE DATABASE {name}")
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30)
        logs = (stack.dir / "Persistence.log").read_text()
        assert "database not ready, retrying" in logs
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=15)
        stack.stop()


def test_on_sqlite_a_second_persistence_process_stands_by_and_takes_over_when_the_first_dies():
    from conftest import Stack
    stack = Stack("standby", env=QUICK_MEMBERSHIP).start()
    try:
        port = free_port_for(stack, "standby")
        stack._spawn("standby", "Persistence", {"CHAT_DATABASE_URL": stack.messages_db, "CHAT_HEALTH_PORT": str(port)})
        assert wait_until(lambda: _get(port, "/health/ready") is not None, 20)
        standby = requests.get(f"http://127.0.0.1:{port}/health/ready").json()
        assert standby["ready"] is False and standby["waiting"]["writer"].startswith("standby"), standby
        room = unique_room("standby")

        async def scenario():
            c = await Client.connect(stack.ws_url(room))
            await c.send("one")
            assert (await c.recv_messages(1))[0]["seq"] == 1
            stack.kill("persistence")
            await c.send("two")  # queued on its partition until the standby takes the file
            got = await c.recv_messages(1, timeout=30)
            assert got[0]["message"] == "two" and got[0]["seq"] == 2
            await c.close()

        run(scenario())
        assert requests.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        assert stack.stored(room) == [(1, "one"), (2, "two")]
    finally:
        stack.stop()


def free_port_for(stack, key):
    from conftest import free_port
    return stack.ports.setdefault(key, free_port())


def _get(port, path):
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=1)
    except requests.RequestException:
        return None


def test_a_postgresql_outage_mid_stream_is_waited_out_with_order_kept():
    """PostgreSQL stopped (fast) under load for 2 s and started again: the workers retry their batches with
    backoff, nothing moves past a batch that is not stored, and every message comes out once, in order."""
    import subprocess
    from conftest import PG_URL, STATE
    port = PG_URL.rsplit(":", 1)[1].split("/")[0]
    pg_dir = STATE / "postgres"
    bin_dir = "/usr/lib/postgresql/15/bin"
    runas = ["runuser", "-u", "postgres", "--"]
    stack = ScaledStack("pgdown", gateways=2, persistence=2, rooms=1, env=QUICK_MEMBERSHIP)
    stack.start()
    try:
        async def scenario():
            async def outage():
                await asyncio.sleep(0.5)
                await asyncio.to_thread(subprocess.run, runas + [f"{bin_dir}/pg_ctl", "-D", str(pg_dir / "data"), "-m", "fast", "-w", "stop"],
                                        check=True, capture_output=True)
                await asyncio.sleep(2)
                await asyncio.to_thread(subprocess.run, runas + [
                    f"{bin_dir}/pg_ctl", "-D", str(pg_dir / "data"), "-l", str(pg_dir / "postgres.log"), "-w", "-t", "60",
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {pg_dir} -c fsync=off -c max_connections=200", "start"],
                    check=True, capture_output=True)

            names, clients, sent = await room_load(stack, rooms=4, per_room=4, messages=50, pace=0.03,
                                                   urls=lambda name, i: stack.ws_url(name, gateway=i % 2), during=outage)
            started = time.monotonic()
            received = await asyncio.gather(*[asyncio.gather(*[drain(c, len(sent[n]), timeout=90, quiet=60) for c in clients[n]])
                                              for n in names])
            print(f"\nevery message delivered {time.monotonic() - started:.1f} s after the last was sent (PostgreSQL down 2 s)")
            for name, receivers in zip(names, received):
                assert len(sent[name]) == 200
                check_room(stack, name, receivers, sent[name])
            for name in names:
                for c in clients[name]:
                    await c.close()

        run(scenario())
        logs = "".join((stack.dir / f"persistence{i}.log").read_text() for i in range(2))
        # The outage was seen: a batch retried, or one waiting in the pool while it reconnected.
        assert any(line in logs for line in ["database unavailable; retrying the batch", "Connection creation failed",
                                             "the database did not answer a batch in time"])
    finally:
        stack.stop()
