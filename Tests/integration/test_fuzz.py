"""Seeded fuzzing of both socket kinds (10,000 frames per stack: 5,000 a kind), on SQLite and on PostgreSQL:
random and mutated JSON, deep nesting, characters of every Unicode category and control characters, invalid
UTF-8 in text frames, binary and oversized frames. Every frame gets an error frame or is stored and broadcast
(at most once), nothing malformed is stored, no service restarts, and a normal message still round-trips."""
import asyncio
import json
import os
import random
import unicodedata

import websockets

from conftest import run, unique_room
from consult import Api

SEED = int(os.environ.get("CHAT_FUZZ_SEED", "20261201"))
CASES_PER_KIND = int(os.environ.get("CHAT_FUZZ_CASES", "5000"))
ORIGIN = {"Origin": "http://127.0.0.1"}
# One character of each general category (letters, marks, numbers, punctuation, symbols, separators, controls,
# format, private use, unassigned) and the edges of UTF-16 and the escapes JSON and HTML care about.
SAMPLES = ["a", "Z", "ǅ", "ʰ", "中", "\u0301", "\u0903", "\u20dd", "7", "Ⅻ", "½", "_", "-", "(", ")", "«", "»", "!", "+", "$",
           "^", "©", " ", "\u2028", "\u2029", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9f", "\u200b", "\ufeff", "\ue000",
           "\U000f0000", "\u0378", "😀", "\U0010ffff", "\t", "\n", "\r", '"', "\\", "<", ">", "&", "'", "/"]
MAX_FRAME = 65536


def random_text(rng, length):
    return "".join(rng.choice(SAMPLES) for _ in range(length))


def random_json(rng, depth=0):
    kind = rng.randrange(7 if depth < 6 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**63, 1.5, -0.0, 1e308])
    if kind in (2, 3):
        return random_text(rng, rng.randrange(0, 12))
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["message", "client_id", "type", "up_to_seq", "shop_user_email", "visitor_user_email", "sender_email", "x"]
    return {rng.choice(keys) if rng.random() < 0.8 else random_text(rng, 3): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def mutate(rng, data):
    """A few random byte edits (flips, drops, inserts) of an encoded frame."""
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del data[i]
        else:
            data.insert(i, rng.randrange(256))
    return bytes(data)


def cases(rng, base_frame):
    """(payload, as text) pairs: base_frame(text) is the kind's valid message frame."""
    out = []
    for n in range(CASES_PER_KIND):
        pick = rng.randrange(10)
        if pick == 0:
            out.append((json.dumps(random_json(rng)).encode(), True))
        elif pick == 1:
            out.append((mutate(rng, json.dumps(base_frame(random_text(rng, 8))).encode()), True))  # often invalid UTF-8
        elif pick == 2:
            out.append((("[" * 2000 + "]" * 2000).encode() if rng.random() < 0.5 else ('{"a":' * 600 + "1" + "}" * 600).encode(), True))
        elif pick == 3:
            out.append((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), rng.random() < 0.5))  # text or binary
        elif pick == 4:
            out.append((json.dumps(base_frame("x" * (MAX_FRAME + rng.randrange(1, 1000)))).encode(), True))  # over the limit
        elif pick == 5:
            frame = base_frame(random_text(rng, rng.randrange(1, 30)))
            frame["client_id"] = random_json(rng) if rng.random() < 0.5 else random_text(rng, rng.randrange(0, 80))
            out.append((json.dumps(frame).encode(), True))
        else:  # a message frame whose text is drawn from every category (valid unless it holds a control)
            out.append((json.dumps(base_frame(random_text(rng, rng.randrange(1, 30))), ensure_ascii=rng.random() < 0.5).encode(), True))
    return out


def allowed(text):
    """The store's rule (docs/protocol.md): no C0 control but tab, LF and CR, no DEL, no C1."""
    return not any((ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) <= 0x9F for c in text)


async def fuzz(url, frames, own_texts):
    """Sends every case on a socket (opening a new one when a case closes it); returns (answers, echoes seen,
    sockets closed by the server). An answer is an error frame or the echo of one of this socket's messages."""
    answers, echoes, closed, sent = 0, 0, 0, 0
    ws = await websockets.connect(url, additional_headers=ORIGIN, max_size=None)
    pending_reader = None

    async def read_all(ws):
        nonlocal answers, echoes
        async for raw in ws:
            data = json.loads(raw)
            if "error" in data:
                answers += 1
            elif data.get("type") is None and "message" in data and data["id"] not in own_texts:
                echoes += 1  # by id: a reconnected socket gets the room's history again
                own_texts[data["id"]] = data["message"]

    pending_reader = asyncio.create_task(read_all(ws))
    for payload, as_text in frames:
        try:
            await ws.send(payload, text=as_text)
            sent += 1
        except websockets.exceptions.ConnectionClosed:
            closed += 1
            await asyncio.gather(pending_reader, return_exceptions=True)
            ws = await websockets.connect(url, additional_headers=ORIGIN, max_size=None)
            pending_reader = asyncio.create_task(read_all(ws))
    # Every frame is answered: an error frame now, or its echo once stored.
    for _ in range(600):
        if answers + echoes >= sent - closed * 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await ws.close()
    await asyncio.gather(pending_reader, return_exceptions=True)
    return sent, answers, echoes, closed


def pids(stack):
    return {key: proc.pid for key, proc in stack.procs.items() if proc.poll() is None}


def test_ten_thousand_fuzzed_frames_on_both_socket_kinds_store_nothing_malformed(stack):
    rng = random.Random(SEED)
    before = pids(stack)
    room = unique_room("fuzz")
    api = Api(stack.url)
    tag = unique_room("fz")
    shop, visitor = f"shop-{tag}@example.com", f"visitor-{tag}@example.com"
    token = api.token(visitor, "visitor")
    room_id = api.create_room(api.token(shop, "shop"), shop, visitor).json()["id"]
    named = cases(rng, lambda text: {"message": text})
    consult = cases(rng, lambda text: {"message": text, "shop_user_email": shop, "visitor_user_email": visitor})
    named_texts, consult_texts = {}, {}

    async def scenario():
        a = await fuzz(stack.ws_url(room), named, named_texts)
        b = await fuzz(f"{stack.ws_base}/ws/room/{room_id}/messages?token={token}", consult, consult_texts)
        return a, b

    (n_sent, n_answers, n_echoes, n_closed), (c_sent, c_answers, c_echoes, c_closed) = run(scenario())
    print(f"\nfuzz seed {SEED}: named {n_sent} sent, {n_answers} errors, {n_echoes} stored, {n_closed} closed; "
          f"consultation {c_sent} sent, {c_answers} errors, {c_echoes} stored, {c_closed} closed")
    assert n_sent + c_sent >= 10_000 - n_closed - c_closed
    # Nothing unanswered, nothing answered twice (a closing case may go unanswered: the socket is gone).
    assert n_sent - 2 * n_closed <= n_answers + n_echoes <= n_sent
    assert c_sent - 2 * c_closed <= c_answers + c_echoes <= c_sent
    # Stored: exactly what was echoed, and every text passes the rule.
    stored = [text for _, text in stack.stored(room)]
    assert sorted(stored) == sorted(named_texts.values())
    assert all(allowed(t) and t.strip() for t in stored), [t for t in stored if not allowed(t)][:3]
    page = api.call("GET", f"/api/rooms/{room_id}/messages?limit=200", token).json()["messages"]
    assert all(allowed(m["message"]) for m in page)
    # No service restarted, and a normal message still round-trips on both kinds.
    assert pids(stack) == before

    async def after():
        ws = await websockets.connect(stack.ws_url(room), additional_headers=ORIGIN)
        await ws.send(json.dumps({"message": "after the fuzz"}))
        while True:
            data = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if data.get("message") == "after the fuzz":
                break
        await ws.close()

    run(after())
