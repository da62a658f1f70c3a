"""Helpers for the consultation tests: tokens (minted by the dev endpoint, or forged here), REST calls,
and consultation sockets."""
import base64
import hashlib
import hmac
import json
import time

import requests
import websockets

from conftest import JWT_SECRET, Client


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(sub, role, exp_in=3600, secret=JWT_SECRET):
    """An HS256 token made here, to test expired and badly signed tokens."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "role": role, "exp": int(time.time()) + exp_in}).encode())
    signature = b64(hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


class Api:
    def __init__(self, base):
        self.base = base

    def token(self, email, role):
        r = requests.post(f"{self.base}/api/dev/token", json={"email": email, "role": role})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def call(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=10, **kwargs)

    def create_room(self, token, shop, visitor):
        return self.call("POST", "/api/rooms", token, json={"shop_user_email": shop, "visitor_user_email": visitor})


async def consult_socket(stack, room_id, token=None, origin="http://127.0.0.1", raw_id=None):
    path = f"/ws/room/{raw_id if raw_id is not None else room_id}/messages"
    if token:
        path += f"?token={token}"
    return Client(await websockets.connect(f"{stack.ws_base}{path}", additional_headers={"Origin": origin}, max_size=None))


def message(text, shop, visitor, sender=None):
    frame = {"message": text, "shop_user_email": shop, "visitor_user_email": visitor}
    if sender is not None:
        frame["sender_email"] = sender
    return json.dumps(frame)
