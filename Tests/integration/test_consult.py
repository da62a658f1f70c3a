"""The 1:1 consultation chat: shop owners and visitors, REST API, authentication and origin checks."""
import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websockets

from consult import Api, consult_socket, forge, message
from conftest import Client, psql, run


def emails():
    tag = uuid.uuid4().hex[:8]
    return f"shop-{tag}@example.com", f"visitor-{tag}@example.com", f"third-{tag}@example.com"


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack.url)


def stored_consult(stack, room_id):
    if stack.pg_url:
        from conftest import psql
        return [(int(q), None if s == "" else s, b) for q, s, b in psql(
            stack.pg_url, f"SELECT seq, COALESCE(sender, ''), body FROM chat_messages WHERE grp = 'consult:{room_id}' ORDER BY seq")]
    import sqlite3
    with sqlite3.connect(stack.dir / "messages.sqlite") as db:
        return list(db.execute("SELECT seq, sender, body FROM chat_messages WHERE grp = ? ORDER BY seq", (f"consult:{room_id}",)))


def test_the_seed_flow_both_ways_with_senders_stored(stack, api):
    shop, visitor, _ = emails()
    shop_token, visitor_token = api.token(shop, "shop"), api.token(visitor, "visitor")
    created = api.create_room(visitor_token, shop, visitor)
    assert created.status_code == 201
    room = created.json()
    assert room["shop_user_email"] == shop and room["visitor_user_email"] == visitor

    async def scenario():
        v = await consult_socket(stack, room["id"], visitor_token)
        s = await consult_socket(stack, room["id"], shop_token)
        await v.ws.send(message("Hello, is this in stock?", shop, visitor, sender=visitor))
        first = [await c.recv_messages(1) for c in (v, s)]
        await s.ws.send(message("Yes, it ships tomorrow.", shop.upper(), visitor))  # case-insensitive, sender filled in
        for c, earlier in zip((v, s), first):
            got = earlier + await c.recv_messages(1)
            assert [(f["sender_email"], f["message"]) for f in got] == [
                (visitor, "Hello, is this in stock?"), (shop, "Yes, it ships tomorrow.")]
            assert [f["seq"] for f in got] == [1, 2] and all("time" in f and "id" in f for f in got)
        await v.close()
        await s.close()

    run(scenario())
    assert stored_consult(stack, room["id"]) == [(1, visitor, "Hello, is this in stock?"), (2, shop, "Yes, it ships tomorrow.")]


def test_get_or_create_returns_the_same_room_and_lists_only_ones_own_rooms(stack, api):
    shop, visitor, third = emails()
    shop_token = api.token(shop, "shop")
    first = api.create_room(shop_token, shop, visitor)
    again = api.create_room(shop_token, shop.upper(), visitor)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = api.create_room(shop_token, shop, third).json()
    mine = api.call("GET", "/api/rooms", shop_token).json()["rooms"]
    assert {r["id"] for r in mine} == {first.json()["id"], other["id"]}
    theirs = api.call("GET", "/api/rooms", api.token(third, "visitor")).json()["rooms"]
    assert [r["id"] for r in theirs] == [other["id"]]
    # The same email may be a shop user and a visitor user: as a visitor, the shop owner has no rooms.
    assert api.call("GET", "/api/rooms", api.token(shop, "visitor")).json()["rooms"] == []


def test_fifty_clients_creating_the_same_room_at_once_get_one_room(stack, api):
    shop, visitor, _ = emails()
    token = api.token(visitor, "visitor")
    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(lambda _: api.create_room(token, shop, visitor), range(50)))
    assert all(r.status_code in (200, 201) for r in replies)
    assert len({r.json()["id"] for r in replies}) == 1
    assert sum(r.status_code == 201 for r in replies) == 1


def test_pagination_walks_the_whole_history_without_gap_or_duplicate(stack, api):
    shop, visitor, _ = emails()
    token = api.token(shop, "shop")
    room = api.create_room(token, shop, visitor).json()

    async def fill():
        s = await consult_socket(stack, room["id"], token)
        for i in range(137):
            await s.ws.send(message(f"m{i}", shop, visitor))
        await s.recv_messages(137)
        await s.close()

    run(fill())
    seen, before = [], None
    while True:
        params = {"limit": 25} | ({"before": before} if before else {})
        page = api.call("GET", f"/api/rooms/{room['id']}/messages", token, params=params).json()
        seqs = [m["seq"] for m in page["messages"]]
        assert seqs == sorted(seqs)  # oldest first within a page
        seen = page["messages"] + seen
        before = page["next_before"]
        if before is None:
            break
    assert [m["seq"] for m in seen] == list(range(1, 138))
    assert [m["message"] for m in seen] == [f"m{i}" for i in range(137)]
    capped = api.call("GET", f"/api/rooms/{room['id']}/messages", token, params={"limit": 1000}).json()
    assert len(capped["messages"]) == 137  # under the cap of 200
    default = api.call("GET", f"/api/rooms/{room['id']}/messages", token).json()
    assert [m["seq"] for m in default["messages"]] == list(range(88, 138))


def test_read_receipts_reach_the_other_side_and_unread_counts_follow(stack, api):
    shop, visitor, _ = emails()
    shop_token, visitor_token = api.token(shop, "shop"), api.token(visitor, "visitor")
    room = api.create_room(visitor_token, shop, visitor).json()

    async def scenario():
        v = await consult_socket(stack, room["id"], visitor_token)
        s = await consult_socket(stack, room["id"], shop_token)
        for i in range(3):
            await v.ws.send(message(f"q{i}", shop, visitor))
        await s.recv_messages(3)
        await v.recv_messages(3)
        unread = {r["id"]: r for r in api.call("GET", "/api/rooms", shop_token).json()["rooms"]}[room["id"]]
        assert unread["unread_count"] == 3 and unread["last_message"]["message"] == "q2"
        assert {r["id"]: r for r in api.call("GET", "/api/rooms", visitor_token).json()["rooms"]}[room["id"]]["unread_count"] == 0
        await s.ws.send(json.dumps({"type": "read", "up_to_seq": 2}))
        receipt = await v.recv()
        assert receipt == {"type": "read", "reader_email": shop, "up_to_seq": 2}
        assert (await s.recv()) == receipt
        assert {r["id"]: r for r in api.call("GET", "/api/rooms", shop_token).json()["rooms"]}[room["id"]]["unread_count"] == 1
        await s.ws.send(json.dumps({"type": "read", "up_to_seq": 1}))  # never moves backwards
        assert (await v.recv())["up_to_seq"] == 2
        await v.close()
        await s.close()

    run(scenario())


def test_rooms_are_listed_newest_activity_first(stack, api):
    shop, a, b = emails()
    token = api.token(shop, "shop")
    room_a = api.create_room(token, shop, a).json()
    room_b = api.create_room(token, shop, b).json()

    async def talk(room, visitor):
        s = await consult_socket(stack, room["id"], token)
        await s.ws.send(message("ping", shop, visitor))
        await s.recv_messages(1)
        await s.close()

    run(talk(room_a, a))  # a is now the most recently active, though b was created later
    assert [r["id"] for r in api.call("GET", "/api/rooms", token).json()["rooms"]] == [room_a["id"], room_b["id"]]


# --- negative cases: each gets its error and stores nothing ---------------------------------------------

def socket_refused(stack, room_id, token, code, origin="http://127.0.0.1", raw_id=None):
    async def scenario():
        c = await consult_socket(stack, room_id, token, origin=origin, raw_id=raw_id)
        frame = await c.recv()
        assert "error" in frame
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.rcvd.code == code, frame
        return frame["error"]

    return run(scenario())


@pytest.fixture(scope="module")
def pair(stack, api):
    shop, visitor, third = emails()
    tokens = {"shop": api.token(shop, "shop"), "visitor": api.token(visitor, "visitor"), "third": api.token(third, "visitor")}
    room = api.create_room(tokens["shop"], shop, visitor).json()
    return {"shop": shop, "visitor": visitor, "third": third, "room": room, "tokens": tokens}


def test_a_room_that_does_not_exist(stack, pair):
    assert "does not exist" in socket_refused(stack, 99_999_999, pair["tokens"]["shop"], 4404)


def test_a_room_id_that_is_not_an_integer(stack, pair):
    assert "integer" in socket_refused(stack, None, pair["tokens"]["shop"], 4400, raw_id="abc")


@pytest.mark.parametrize("token,reason", [
    (None, "authentication required"),
    ("garbage", "malformed"),
    ("BAD_SIGNATURE", "bad signature"),
    ("EXPIRED", "expired"),
])
def test_tokens_that_are_missing_or_bad(stack, pair, token, reason):
    if token == "BAD_SIGNATURE":
        token = forge(pair["shop"], "shop", secret="another-secret-that-is-also-32-bytes-long")
    elif token == "EXPIRED":
        token = forge(pair["shop"], "shop", exp_in=-60)
    assert reason in socket_refused(stack, pair["room"]["id"], token, 4401)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{stack.url}/api/rooms", headers=headers)
    assert r.status_code == 401 and reason in r.json()["error"] and r.json()["status"] == 401


def test_a_third_user_can_neither_connect_nor_read_history(stack, api, pair):
    assert "not a participant" in socket_refused(stack, pair["room"]["id"], pair["tokens"]["third"], 4403)
    # Right email, wrong role: the shop owner's email as a visitor is someone else.
    assert "not a participant" in socket_refused(stack, pair["room"]["id"], api.token(pair["shop"], "visitor"), 4403)
    r = api.call("GET", f"/api/rooms/{pair['room']['id']}/messages", pair["tokens"]["third"])
    assert r.status_code == 403 and r.json()["status"] == 403
    assert api.call("GET", "/api/rooms/99999999/messages", pair["tokens"]["shop"]).status_code == 404
    assert api.call("GET", "/api/rooms/abc/messages", pair["tokens"]["shop"]).status_code == 400


def test_a_foreign_origin_gets_403(stack, pair):
    for origin in ("http://evil.example", "null"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            run(consult_socket(stack, pair["room"]["id"], pair["tokens"]["shop"], origin=origin))
        assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as refused:
        run(websockets.connect(f"ws://127.0.0.1:{stack.gateways[0]}/ws/chat/lobby/", additional_headers={"Origin": "https://evil.example"}))
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus):  # no Origin at all, like Django's validator
        run(websockets.connect(f"ws://127.0.0.1:{stack.gateways[0]}/ws/chat/lobby/"))


def test_bad_frames_mismatched_pairs_and_forged_senders_store_nothing(stack, api, pair):
    shop, visitor, third = pair["shop"], pair["visitor"], pair["third"]
    room_id = pair["room"]["id"]
    cases = [
        (json.dumps({"shop_user_email": shop, "visitor_user_email": visitor}), "missing field 'message'"),
        (json.dumps({"message": "", "shop_user_email": shop, "visitor_user_email": visitor}), "'message' must not be empty"),
        (json.dumps({"message": "x", "visitor_user_email": visitor}), "missing field 'shop_user_email'"),
        (json.dumps({"message": "x", "shop_user_email": shop}), "missing field 'visitor_user_email'"),
        (json.dumps({"message": "x", "shop_user_email": "", "visitor_user_email": visitor}), "'shop_user_email' must not be empty"),
        (json.dumps({"message": "x", "shop_user_email": "not-an-email", "visitor_user_email": visitor}), "not a valid email"),
        (message("x", shop, third), "do not match room"),
        (message("x", third, visitor), "do not match room"),
        (message("x", shop, visitor, sender=visitor), "sender_email must be your own email"),
        (json.dumps({"type": "read", "up_to_seq": "3"}), "'up_to_seq' must be a non-negative integer"),
        (json.dumps({"type": "nope"}), "unknown frame type"),
        ("{", "frame is not valid JSON"),
    ]

    async def scenario():
        s = await consult_socket(stack, room_id, pair["tokens"]["shop"])
        for raw, error in cases:
            await s.ws.send(raw)
            frame = await s.recv()
            assert "error" in frame and error in frame["error"], (raw, frame)
        await s.ws.send(message("the only real one", shop, visitor))
        assert (await s.recv_messages(1))[0]["message"] == "the only real one"
        await s.close()

    run(scenario())
    assert [body for _, _, body in stored_consult(stack, room_id)] == ["the only real one"]


def test_rest_errors_have_a_stable_shape_and_status(stack, api, pair):
    token = pair["tokens"]["shop"]
    checks = [
        (api.call("POST", "/api/rooms", token, data="{", headers={"Content-Type": "application/json"}), 400),
        (api.call("POST", "/api/rooms", token, json={"shop_user_email": pair["shop"]}), 422),
        (api.call("POST", "/api/rooms", token, json={"shop_user_email": pair["shop"], "visitor_user_email": "nope"}), 422),
        (api.call("POST", "/api/rooms", token, json={"shop_user_email": "other@example.com", "visitor_user_email": pair["visitor"]}), 403),
        (api.call("POST", "/api/rooms", token, data="x" * 20000), 413),
        (api.call("POST", "/api/rooms", None, json={}), 401),
        (api.call("GET", "/api/rooms/1/messages", token, params={"limit": "zero"}), 400),
        (api.call("POST", "/api/dev/token", None, json={"email": "a@b.co", "role": "admin"}), 422),
    ]
    for response, status in checks:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error", "status"} and body["status"] == status and body["error"]


def test_dev_tokens_answer_404_unless_enabled(stack):
    from conftest import Stack
    locked = Stack("nodev", env={"CHAT_DEV_TOKENS": "0", "CHAT_ALLOW_ANONYMOUS": "0"})
    try:
        locked.start()
        r = requests.post(f"{locked.url}/api/dev/token", json={"email": "a@b.co", "role": "shop"})
        assert r.status_code == 404
        # Anonymous access to the named rooms is off too: a tokenless socket is refused with 4401 ...
        async def anonymous():
            c = await Client.connect(locked.ws_url("lobby"))
            assert "authentication required" in (await c.recv())["error"]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.rcvd.code == 4401
        run(anonymous())
        # ... and one with a token gets in, its messages stored with its email as sender.
        async def signed():
            token = forge("named@example.com", "visitor")
            c = Client(await websockets.connect(locked.ws_url("lobby") + f"?token={token}", additional_headers={"Origin": "http://127.0.0.1"}))
            await c.send("signed in")
            frame = (await c.recv_messages(1))[0]
            assert frame["sender_email"] == "named@example.com"
            await c.close()
        run(signed())
    finally:
        locked.stop()


def test_a_token_in_the_chat_token_cookie_works_for_rest_and_sockets(stack, api, pair):
    token = pair["tokens"]["visitor"]
    r = requests.get(f"{stack.url}/api/rooms", cookies={"chat_token": token})
    assert r.status_code == 200 and [room["id"] for room in r.json()["rooms"]] == [pair["room"]["id"]]

    async def scenario():
        ws = await websockets.connect(f"ws://127.0.0.1:{stack.gateways[0]}/ws/room/{pair['room']['id']}/messages",
                                      additional_headers={"Origin": "http://127.0.0.1", "Cookie": f"chat_token={token}"})
        c = Client(ws)
        await c.ws.send(json.dumps({"type": "read", "up_to_seq": 0}))
        frame = await c.recv()
        while frame.get("type") != "read":  # the room's history comes first
            frame = await c.recv()
        assert frame["reader_email"] == pair["visitor"]
        await c.close()

    run(scenario())
