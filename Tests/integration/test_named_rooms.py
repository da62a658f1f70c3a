"""The tutorial chat end to end: browsers' sockets → gateway → RabbitMQ → persistence → database →
RabbitMQ → every gateway with members in the room → sockets."""
import asyncio

import requests

from conftest import Client, run, unique_room


def test_room_messages_reach_both_members_in_order_and_never_another_room(stack):
    async def scenario():
        room_a, room_b = unique_room("a"), unique_room("b")
        a1 = await Client.connect(stack.ws_url(room_a))
        a2 = await Client.connect(stack.ws_url(room_a))
        b1 = await Client.connect(stack.ws_url(room_b))
        for i in range(20):
            await a1.send(f"from a1 #{i}")
            await a2.send(f"from a2 #{i}")
        got1 = await a1.recv_messages(40)
        got2 = await a2.recv_messages(40)
        assert [f["seq"] for f in got1] == list(range(1, 41))
        assert got1 == got2  # same frames, same order, on both sockets
        for sender in ("a1", "a2"):
            mine = [f["message"] for f in got1 if f["message"].startswith(f"from {sender}")]
            assert mine == [f"from {sender} #{i}" for i in range(20)]
        assert all(f["room"] == room_a for f in got1)
        await b1.expect_silence(1.0)
        for c in (a1, a2, b1):
            await c.close()
        return room_a

    room = run(scenario())
    stored = stack.stored(room)
    assert [s for s, _ in stored] == list(range(1, 41))
    assert sorted(t for _, t in stored) == sorted([f"from a1 #{i}" for i in range(20)] + [f"from a2 #{i}" for i in range(20)])


def test_two_gateway_processes_share_a_room(stack):
    if len(stack.gateways) < 2:
        stack.start_gateway()

    async def scenario():
        room = unique_room("two")
        left = await Client.connect(stack.ws_url(room, gateway=0))
        right = await Client.connect(stack.ws_url(room, gateway=1))
        await left.send("hello from the left gateway")
        await right.send("hello from the right gateway")
        got_left = await left.recv_messages(2)
        got_right = await right.recv_messages(2)
        assert got_left == got_right
        assert {f["message"] for f in got_left} == {"hello from the left gateway", "hello from the right gateway"}
        await left.close()
        await right.close()

    run(scenario())


def test_late_joiner_gets_the_last_50_then_live_messages_without_gap_or_duplicate(stack):
    async def scenario():
        room = unique_room("history")
        writer = await Client.connect(stack.ws_url(room))
        for i in range(60):
            await writer.send(f"early {i}")
        await writer.recv_messages(60)

        # Keep writing while the late joiner connects: history and live messages meet mid-stream.
        async def keep_writing():
            for i in range(100):
                await writer.send(f"live {i}")
                await asyncio.sleep(0.005)

        task = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.05)
        late = await Client.connect(stack.ws_url(room))
        await task
        # The joiner sees the last 50 stored before it joined, then everything after: a contiguous run of
        # seqs ending at 160, beginning wherever history began, with no seq twice.
        frames = []
        while not frames or frames[-1]["seq"] < 160:
            frames += await late.recv_messages(1)
        seqs = [f["seq"] for f in frames]
        assert seqs == list(range(seqs[0], 161)), seqs
        assert seqs[0] >= 11 and len(seqs) >= 100
        texts = [f["message"] for f in frames]
        assert texts[-100:] == [f"live {i}" for i in range(100)]
        await late.expect_silence(0.5)
        await writer.recv_messages(100)
        await writer.close()
        await late.close()

    run(scenario())


def test_history_is_the_last_50_in_order(stack):
    async def scenario():
        room = unique_room("last50")
        writer = await Client.connect(stack.ws_url(room))
        for i in range(70):
            await writer.send(f"m{i}")
        await writer.recv_messages(70)
        late = await Client.connect(stack.ws_url(room))
        frames = await late.recv_messages(50)
        assert [f["message"] for f in frames] == [f"m{i}" for i in range(20, 70)]
        assert [f["seq"] for f in frames] == list(range(21, 71))
        await late.expect_silence(0.5)
        await writer.close()
        await late.close()

    run(scenario())


def test_unicode_room_names_work(stack):
    async def scenario():
        room = "상담실-" + unique_room("")[1:]
        c = await Client.connect(stack.ws_url(room))
        await c.send("안녕하세요")
        frame = (await c.recv_messages(1))[0]
        assert frame["message"] == "안녕하세요" and frame["room"] == room
        await c.close()
        return room

    room = run(scenario())
    assert stack.stored(room) == [(1, "안녕하세요")]
    assert requests.get(f"{stack.url}/chat/{room}/").status_code == 200


def test_health_and_readiness_of_every_service(stack):
    for port in [stack.ports["persistence"], stack.ports["rooms"], stack.gateways[0]]:
        assert requests.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
        ready = requests.get(f"http://127.0.0.1:{port}/health/ready")
        assert ready.status_code == 200 and ready.json()["amqp"] is True


def test_room_service_counts_members_and_forgets_a_dead_gateway(stack):
    room = unique_room("members")
    port = stack.start_gateway()
    key = f"gateway{len(stack.gateways) - 1}"
    stats = lambda: requests.get(f"http://127.0.0.1:{stack.ports['rooms']}/stats").json()["rooms"].get("named:" + room, 0)

    async def settles_at(expected):
        # The handshake completes before the join request reaches the room service: wait for it.
        for _ in range(100):
            if stats() == expected:
                return True
            await asyncio.sleep(0.1)
        return stats() == expected

    async def scenario():
        from urllib.parse import quote
        clients = [await Client.connect(f"ws://127.0.0.1:{port}/ws/chat/{quote(room)}/") for _ in range(3)]
        assert await settles_at(3)
        await clients[0].close()
        assert await settles_at(2)
        stack.kill(key)  # SIGKILL: no leave is ever sent; expiry (3 s here) forgets its members
        assert await settles_at(0)

    run(scenario())
