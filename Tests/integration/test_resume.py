"""Client acks, idempotent resends and resume (docs/protocol.md, "Acks, resends and resume"), on both stacks:
one instance of each service on SQLite, and 2 × 2 × 2 on PostgreSQL behind nginx."""
import json

import pytest
import requests
import websockets

from conftest import Client, Stack, QUICK_MEMBERSHIP, run, unique_room
from consult import Api, consult_socket, message


async def frames_until(client, predicate, timeout=10):
    """Frames (not presence) up to and including the first that satisfies `predicate`."""
    out = []
    while not out or not predicate(out[-1]):
        out.append(await client.recv(timeout=timeout))
    return out


def is_ack(frame):
    return frame.get("type") == "ack"


def other_gateway(stack):
    return 1 if len(stack.gateways) > 1 else 0


def test_a_message_with_a_client_id_is_acked_and_its_resend_elsewhere_stores_nothing_new(stack):
    room = unique_room("ack")

    async def scenario():
        first = await Client.connect(stack.ws_url(room, gateway=0))
        await first.ws.send(json.dumps({"message": "hello", "client_id": "c-1"}))
        got = await frames_until(first, is_ack)
        echo = next(f for f in got if f.get("message") == "hello")
        ack = got[-1]
        assert ack == {"type": "ack", "client_id": "c-1", "id": echo["id"], "seq": echo["seq"]}
        await first.close()
        # The client reconnects, to another gateway when there is one, and resends what it had not seen acked.
        again = await Client.connect(stack.ws_url(room, gateway=other_gateway(stack)))
        history = await again.recv()
        assert history["id"] == echo["id"]
        await again.ws.send(json.dumps({"message": "hello", "client_id": "c-1"}))
        await again.ws.send(json.dumps({"message": "next", "client_id": "c-2"}))
        got = await frames_until(again, lambda f: is_ack(f) and f["client_id"] == "c-2")
        acks = [f for f in got if is_ack(f)]
        assert acks[0] == ack  # the original id and seq
        assert acks[1]["seq"] == echo["seq"] + 1
        assert [f["message"] for f in got if "message" in f] == ["next"]  # the resend is not broadcast again
        await again.close()

    run(scenario())
    assert stack.stored(room) == [(1, "hello"), (2, "next")]


def test_resume_sends_what_was_missed_then_live_without_gap_or_duplicate(stack):
    room = unique_room("resume")

    async def scenario():
        writer = await Client.connect(stack.ws_url(room, gateway=0))
        for i in range(10):
            await writer.send(f"m{i}")
        await writer.recv_messages(10)
        resumed = await Client.connect(stack.ws_url(room, gateway=other_gateway(stack)) + "?since=4")
        missed = await resumed.recv_messages(6)
        assert [f["seq"] for f in missed] == list(range(5, 11))
        await writer.send("live")
        live = await resumed.recv_messages(1)
        assert live[0]["seq"] == 11 and live[0]["message"] == "live"
        up_to_date = await Client.connect(stack.ws_url(room) + "?since=11")
        await writer.send("after")
        assert [f["seq"] for f in await up_to_date.recv_messages(1)] == [12]
        for c in (writer, resumed, up_to_date):
            await c.close()

    run(scenario())


def test_a_consultation_socket_is_acked_and_resumes_too(stack):
    api = Api(stack.url)
    tag = unique_room("c")
    shop, visitor = f"shop-{tag}@example.com", f"visitor-{tag}@example.com"
    shop_token, visitor_token = api.token(shop, "shop"), api.token(visitor, "visitor")
    room_id = api.create_room(shop_token, shop, visitor).json()["id"]

    async def scenario():
        ws = await consult_socket(stack, room_id, visitor_token)
        frame = json.loads(message("one", shop, visitor))
        await ws.ws.send(json.dumps({**frame, "client_id": "v-1"}))
        got = await frames_until(ws, is_ack)
        assert got[-1]["client_id"] == "v-1" and got[-1]["seq"] == 1
        await ws.ws.send(json.dumps({**frame, "message": "two"}))
        await frames_until(ws, lambda f: f.get("message") == "two")
        await ws.close()
        resumed = Client(await websockets.connect(f"{stack.ws_base}/ws/room/{room_id}/messages?token={visitor_token}&since=1",
                                                  additional_headers={"Origin": "http://127.0.0.1"}))
        assert [f["message"] for f in await resumed.recv_messages(1)] == ["two"]
        await resumed.close()

    run(scenario())


def test_bad_since_and_client_ids_are_refused_and_store_nothing(stack):
    room = unique_room("bad-resume")

    async def scenario():
        bad = await Client.connect(stack.ws_url(room) + "?since=abc")
        assert "since" in (await bad.recv())["error"]
        await bad.ws.wait_closed()
        assert bad.ws.close_code == 4400
        ws = await Client.connect(stack.ws_url(room))
        for client_id in ["", "x" * 65, 7, "tab\there"]:
            await ws.ws.send(json.dumps({"message": "no", "client_id": client_id}))
            assert "client_id" in (await ws.recv())["error"]
        await ws.send("still works")
        assert (await ws.recv_messages(1))[0]["message"] == "still works"
        await ws.close()

    run(scenario())
    assert stack.stored(room) == [(1, "still works")]


@pytest.fixture(scope="module")
def small_resume():
    s = Stack("resume-cap", env={**QUICK_MEMBERSHIP, "CHAT_RESUME_LIMIT": "5"}).start()
    yield s
    s.stop()


def test_a_client_that_missed_more_than_the_cap_or_knows_seqs_the_room_lacks_gets_a_reset(small_resume):
    stack = small_resume
    room = unique_room("reset")

    async def scenario():
        writer = await Client.connect(stack.ws_url(room))
        for i in range(10):
            await writer.send(f"m{i}")
        await writer.recv_messages(10)
        behind = await Client.connect(stack.ws_url(room) + "?since=2")   # missed 8, the cap is 5
        assert await behind.recv() == {"type": "reset", "last_seq": 10}
        ahead = await Client.connect(stack.ws_url(room) + "?since=99")   # the room has no seq 99
        assert await ahead.recv() == {"type": "reset", "last_seq": 10}
        within = await Client.connect(stack.ws_url(room) + "?since=5")   # missed 5: all of them
        assert [f["seq"] for f in await within.recv_messages(5)] == [6, 7, 8, 9, 10]
        await writer.send("live")
        for c in (behind, ahead, within):
            assert [f["seq"] for f in await c.recv_messages(1)] == [11]
        for c in (writer, behind, ahead, within):
            await c.close()

    run(scenario())
    # After a reset the client pages back through REST.
    page = requests.get(f"{stack.url}/api/chat/{room}/messages?before=11&limit=4", timeout=10).json()
    assert [m["seq"] for m in page["messages"]] == [7, 8, 9, 10] and page["next_before"] == 7
    assert page["room"] == room
