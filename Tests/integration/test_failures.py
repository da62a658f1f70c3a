"""Failures: the persistence service killed mid-stream loses and doubles nothing."""
import asyncio
import time

import requests

from conftest import Client, Stack, run, unique_room


def test_killing_persistence_mid_stream_loses_nothing_and_duplicates_nothing():
    stack = Stack("kill", env={"CHAT_PERSIST_PREFETCH": "200"}).start()
    try:
        room = unique_room("kill")
        total = 400

        async def scenario():
            sender = await Client.connect(stack.ws_url(room))
            receivers = [await Client.connect(stack.ws_url(room)) for _ in range(2)]

            async def send_all():
                for i in range(total):
                    await sender.send(f"msg {i}")
                    if i == 100:
                        stack.kill("persistence")  # SIGKILL, mid-stream, with a batch likely in flight
                    if i == 250:
                        stack.start_persistence()
                    await asyncio.sleep(0.003)

            await send_all()
            for r in receivers + [sender]:
                frames = await r.recv_messages(total, timeout=60)
                assert [f["seq"] for f in frames] == list(range(1, total + 1))
                assert [f["message"] for f in frames] == [f"msg {i}" for i in range(total)]
                await r.expect_silence(1.0)
            for c in receivers + [sender]:
                await c.close()

        run(scenario())
        stored = stack.stored(room)
        assert [s for s, _ in stored] == list(range(1, total + 1))
        assert [t for _, t in stored] == [f"msg {i}" for i in range(total)]
    finally:
        stack.stop()


def test_graceful_shutdown_on_sigterm_exits_cleanly():
    import signal
    stack = Stack("term").start()
    try:
        for key in ["gateway0", "rooms", "persistence"]:
            assert stack.kill(key, signal.SIGTERM) == 0, key
    finally:
        stack.stop()


def test_a_gateway_whose_broker_is_unreachable_still_stops_on_sigterm():
    import os
    import signal
    import subprocess
    from conftest import BIN, free_port
    env = dict(os.environ, CHAT_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", CHAT_GATEWAY_PORT=str(free_port()))
    proc = subprocess.Popen([str(BIN / "Gateway")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=25)  # bounded: graceful shutdown gives up after 10 s and cancels


def test_past_its_connection_cap_the_gateway_answers_503_and_keeps_serving_its_sockets(stack):
    import pytest
    import websockets
    from conftest import Client, unique_room
    port = stack.start_gateway(CHAT_MAX_CONNECTIONS="3")
    room = unique_room("cap")
    url = f"ws://127.0.0.1:{port}/ws/chat/{room}/"

    async def scenario():
        held = [await Client.connect(url) for _ in range(3)]
        await asyncio.sleep(0.3)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url)
        assert refused.value.response.status_code == 503
        await held[0].send("still served")
        for c in held:
            assert (await c.recv_messages(1))[0]["message"] == "still served"
        await held[2].close()
        await asyncio.sleep(0.3)
        again = await Client.connect(url)  # room again once one left
        await again.close()
        for c in held[:2]:
            await c.close()

    run(scenario())
