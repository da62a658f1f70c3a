"""The server API for back ends (issue 20): with and without its key, publish and its idempotency, presence,
history, and disconnect across two gateways behind nginx, on the real services, RabbitMQ and PostgreSQL."""
import asyncio
import json
import time

import pytest
import requests
import websockets

from conftest import QUICK_MEMBERSHIP, ScaledStack, Stack, unique_room
from consult import forge

KEY = "server-api-test-key-of-at-least-32-bytes!"
ORIGIN = {"Origin": "http://127.0.0.1"}


@pytest.fixture(scope="module")
def scaled():
    s = ScaledStack("server-api", gateways=2, persistence=2, rooms=1, env={**QUICK_MEMBERSHIP, "CHAT_SERVER_API_KEY": KEY}).start()
    yield s
    s.stop()


def call(stack, method, path, key=KEY, **kwargs):
    headers = {"X-Chat-Api-Key": key} if key else {}
    return requests.request(method, f"{stack.url}{path}", headers=headers, timeout=10, **kwargs)


async def read_until(ws, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if predicate(frame):
            return frame


def test_without_the_setting_the_routes_are_not_there():
    s = Stack("no-server-api").start()
    try:
        for method, path in [("POST", "/api/server/publish"), ("POST", "/api/server/disconnect"), ("GET", "/api/server/presence?room=x"),
                             ("GET", "/api/server/rooms/x/messages")]:
            r = call(s, method, path, json={"room": "x", "message": "hi"} if method == "POST" else None)
            assert r.status_code == 404, (path, r.status_code, r.text)
    finally:
        s.stop()


def test_a_wrong_or_missing_key_is_401(scaled):
    for key in [None, "wrong", KEY + "x"]:
        r = call(scaled, "POST", "/api/server/publish", key=key, json={"room": "lobby", "message": "hi"})
        assert r.status_code == 401, (key, r.text)
    assert call(scaled, "GET", "/api/server/presence?room=lobby", key="nope").status_code == 401
    assert not scaled.stored("lobby")


def test_publish_is_stored_broadcast_and_idempotent(scaled):
    room = unique_room("srv")

    async def main():
        listeners = [await websockets.connect(scaled.ws_url(room, gateway=g), additional_headers=ORIGIN) for g in (0, 1)]
        await asyncio.sleep(0.3)
        first = call(scaled, "POST", "/api/server/publish", json={"room": room, "message": "from the back end", "sender": "system",
                                                                   "idempotency_key": "order-42"})
        assert first.status_code == 200, first.text
        frames = [await read_until(ws, lambda f: f.get("message") == "from the back end") for ws in listeners]
        again = call(scaled, "POST", "/api/server/publish", json={"room": room, "message": "from the back end", "sender": "system",
                                                                   "idempotency_key": "order-42"})
        other = call(scaled, "POST", "/api/server/publish", json={"room": room, "message": "second"})
        for ws in listeners:
            await ws.close()
        return first.json(), frames, again, other

    first, frames, again, other = asyncio.run(main())
    assert first["seq"] == 1 and all(f["seq"] == 1 and f["id"] == first["id"] for f in frames), (first, frames)
    assert again.status_code == 200 and again.json() == first, again.text
    assert other.status_code == 200 and other.json()["seq"] == 2
    assert scaled.stored(room) == [(1, "from the back end"), (2, "second")]
    history = call(scaled, "GET", f"/api/server/rooms/{room}/messages")
    assert history.status_code == 200 and [m["message"] for m in history.json()["messages"]] == ["from the back end", "second"]


def test_publish_into_a_consultation_room_and_bad_requests(scaled):
    shop, visitor = f"shop-{unique_room('')}@example.com", f"visitor-{unique_room('')}@example.com"
    token = forge(shop, "shop")
    created = requests.post(f"{scaled.url}/api/rooms", json={"shop_user_email": shop, "visitor_user_email": visitor},
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    room_id = created.json()["id"]
    ok = call(scaled, "POST", "/api/server/publish", json={"room_id": room_id, "message": "your order shipped"})
    assert ok.status_code == 200, ok.text
    page = requests.get(f"{scaled.url}/api/rooms/{room_id}/messages", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert [m["message"] for m in page["messages"]] == ["your order shipped"]
    for body, status in [({"room": "a", "room_id": room_id, "message": "x"}, 422), ({"message": "x"}, 422),
                         ({"room_id": 999999999, "message": "x"}, 404), ({"room": "bad name!", "message": "x"}, 422),
                         ({"room": "a", "message": "  "}, 422), ({"room": "a", "message": "x", "idempotency_key": "k" * 65}, 422),
                         ({"room": "a", "message": "x", "sender": ""}, 422), ({"room": "a"}, 422)]:
        r = call(scaled, "POST", "/api/server/publish", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
    assert call(scaled, "POST", "/api/server/publish", data="{not json").status_code == 400
    assert not scaled.stored("a")


def test_presence_counts_sockets_on_every_gateway(scaled):
    room = unique_room("who")

    async def main():
        sockets = [await websockets.connect(scaled.ws_url(room, gateway=g), additional_headers=ORIGIN) for g in (0, 1, 1)]
        await asyncio.sleep(0.5)
        counts = [call(scaled, "GET", f"/api/server/presence?room={room}").json() for _ in range(4)]  # nginx: both gateways
        for ws in sockets:
            await ws.close()
        return counts

    counts = asyncio.run(main())
    assert all(c == {"room": room, "count": 3} for c in counts), counts
    assert call(scaled, "GET", "/api/server/presence").status_code == 422
    assert call(scaled, "GET", "/api/server/presence?room_id=999999999").status_code == 404


def test_disconnect_closes_the_users_sockets_on_every_gateway_within_2_s(scaled):
    user = f"kick-{unique_room('')}@example.com"
    token, bystander = forge(user, "visitor"), forge("stays@example.com", "visitor")
    room = unique_room("kick")

    async def closed(ws):
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        except websockets.ConnectionClosed as c:
            return c.rcvd.code if c.rcvd else None, frames, time.monotonic()

    async def main():
        mine = [await websockets.connect(scaled.ws_url(room, gateway=g) + f"?token={token}", additional_headers=ORIGIN) for g in (0, 1, 0)]
        other = await websockets.connect(scaled.ws_url(room, gateway=1) + f"?token={bystander}", additional_headers=ORIGIN)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        r = call(scaled, "POST", "/api/server/disconnect", json={"user": user, "reason": "account suspended"})
        assert r.status_code == 202, r.text
        results = await asyncio.gather(*(closed(ws) for ws in mine))
        await other.send(json.dumps({"message": "still here", "client_id": "s1"}))
        ack = await read_until(other, lambda f: f.get("type") == "ack")
        await other.close()
        return started, results, ack

    started, results, ack = asyncio.run(main())
    for code, frames, at in results:
        assert code == 4403 and {"error": "account suspended", "code": "disconnected"} in frames, (code, frames)
        assert at - started < 2, at - started
    assert ack["client_id"] == "s1"
    print("disconnect: 3 sockets on 2 gateways closed after", [f"{(at - started) * 1000:.0f} ms" for _, _, at in results])
