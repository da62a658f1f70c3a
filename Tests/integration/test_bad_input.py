"""Bad input gets a clear error, the socket and the service stay up, and nothing is stored."""
import asyncio
import json

import pytest
import requests
import websockets

from conftest import Client, run, unique_room

BAD_FRAMES = [
    ("not json at all", "frame is not valid JSON"),
    ("[1, 2, 3]", "frame must be a JSON object"),
    (json.dumps({"text": "hi"}), "missing field 'message'"),
    (json.dumps({"message": 42}), "'message' must be a string"),
    (json.dumps({"message": None}), "'message' must be a string"),
    (json.dumps({"message": True}), "'message' must be a string"),
    (json.dumps({"message": ""}), "'message' must not be empty"),
    (json.dumps({"message": "   "}), "'message' must not be empty"),
    (json.dumps({"message": "x" * 70_000}), "frame is larger than the limit of 65536 bytes"),
]


def test_each_bad_frame_gets_an_error_frame_and_the_socket_stays_up(stack):
    async def scenario():
        room = unique_room("bad")
        sender = await Client.connect(stack.ws_url(room))
        bystander = await Client.connect(stack.ws_url(room))
        for raw, error in BAD_FRAMES:
            await sender.ws.send(raw)
            frame = await sender.recv()
            assert frame == {"error": error}, raw[:40]
        await sender.ws.send(b"\x00\x01binary")
        assert "binary" in (await sender.recv())["error"]
        # Still up: a good message goes through, and it is the only one anybody saw.
        await sender.send("still here")
        assert (await sender.recv_messages(1))[0]["message"] == "still here"
        got = await bystander.recv_messages(1)
        assert got[0]["message"] == "still here" and got[0]["seq"] == 1
        await bystander.expect_silence(0.5)
        await sender.close()
        await bystander.close()
        return room

    room = run(scenario())
    assert stack.stored(room) == [(1, "still here")]


def test_a_frame_over_the_hard_limit_closes_only_that_socket_with_1009(stack):
    async def scenario():
        room = unique_room("huge")
        huge = await Client.connect(stack.ws_url(room))
        other = await Client.connect(stack.ws_url(room))
        # The server closes as soon as the frame passes the limit, possibly while the client is still sending it.
        try:
            await huge.ws.send(json.dumps({"message": "y" * (2 * 1024 * 1024)}))
            await huge.recv()
            raise AssertionError("the socket stayed open")
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is None or closed.rcvd.code == 1009
        except ConnectionResetError:
            pass
        assert huge.ws.close_code in (1009, 1006)
        await other.send("after the huge one")
        assert (await other.recv_messages(1))[0]["message"] == "after the huge one"
        await other.close()
        return room

    room = run(scenario())
    assert stack.stored(room) == [(1, "after the huge one")]


@pytest.mark.parametrize("room", ["</script><script>alert(1)</script>", "';alert(1);'", "a b", "x" * 101, "semi;colon", "a%2Fb"])
def test_invalid_room_names_get_an_error_frame_and_close_4400(stack, room):
    async def scenario():
        c = await Client.connect(stack.ws_url(room))
        frame = await c.recv()
        assert "error" in frame and "room name" in frame["error"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.rcvd.code == 4400

    run(scenario())
    page = requests.get(f"{stack.url}/chat/{requests.utils.quote(room, safe='')}/")
    assert page.status_code == 400
    assert "<script>alert" not in page.text and "';alert" not in page.text


def test_a_100_character_name_is_fine_and_an_empty_one_is_refused(stack):
    async def scenario():
        c = await Client.connect(stack.ws_url("상" * 100))
        await c.send("ok")
        assert (await c.recv_messages(1))[0]["message"] == "ok"
        await c.close()
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"ws://127.0.0.1:{stack.gateways[0]}/ws/chat//")

    run(scenario())


def test_the_service_is_up_after_all_of_that(stack):
    assert requests.get(f"{stack.url}/health/ready").status_code == 200
    assert requests.get(f"{stack.url}/chat/").status_code == 200
