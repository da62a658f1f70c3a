"""The stack as containers on podman, as ./scripts/containers deploys it: 2 gateways, 2 persistence workers
and 2 room services behind nginx, with RabbitMQ, PostgreSQL and Prometheus, all built from compose/.
The tests run in file order: up, smoke, kill and restart, Prometheus, down."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import websockets

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "swift-chat"
SECRET = "container-test-secret-of-at-least-32-bytes"
# The load in these tests (400 messages from one user, 24 sockets of one user) is over the production limits.
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "compose" / "containers.conf"), CHAT_JWT_SECRET=SECRET,
           CHAT_RATE_PER_SECOND="0", CHAT_CONNECT_RATE_PER_SECOND="0", CHAT_MAX_SOCKETS_PER_USER="0")
SCALE = {"gateway": 2, "persistence": 2, "rooms": 2}
TIMINGS = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"
WS = f"ws://127.0.0.1:{PORT}"
ORIGIN = {"Origin": "http://127.0.0.1"}


def podman(*args, check=True):
    return subprocess.run(["podman", *args], env=ENV, check=check, capture_output=True, text=True).stdout


def containers_script(*args, timeout):
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "scripts" / "containers"), *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    print(result.stdout, result.stderr[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    return time.monotonic() - started, result.stdout


def ours(kind="container"):
    """Names (or for volumes/networks, names) of the project's podman objects."""
    if kind == "container":
        return podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "{{.Names}}").split()
    if kind == "volume":
        return [v for v in podman("volume", "ls", "--format", "{{.Name}}").split() if v.startswith(f"{PROJECT}_")]
    return [n for n in podman("network", "ls", "--format", "{{.Name}}").split() if n.startswith(f"{PROJECT}_")]


def replicas(service):
    return sorted(podman("ps", "--filter", f"label=io.podman.compose.project={PROJECT}",
                         "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").split())


def address(container):
    """The container's address on the project network (reachable from this machine)."""
    networks = json.loads(podman("inspect", container, "--format", "{{json .NetworkSettings.Networks}}"))
    return next(iter(networks.values()))["IPAddress"]


def token(sub, role):
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "role": role, "exp": int(time.time()) + 3600}).encode())
    signature = b64(hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


async def connect(path):
    return await websockets.connect(f"{WS}{path}", additional_headers=ORIGIN, max_size=None, open_timeout=10)


async def chat_frames(ws, count, timeout=20):
    """The next `count` frames that are not presence frames."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if frame.get("type") != "presence":
            out.append(frame)
    return out


def gateway_sockets():
    """Open sockets per gateway replica, read from each one's /metrics."""
    counts = {}
    for name in replicas("gateway"):
        text = requests.get(f"http://{address(name)}:8000/metrics", timeout=5).text
        line = next(l for l in text.splitlines() if l.startswith("chat_gateway_sockets_open"))
        counts[name] = float(line.split()[-1])
    return counts


def smoke():
    """Named rooms across both gateways, history, one consultation with tokens, and a bad frame; through nginx."""
    room = f"smoke-{uuid.uuid4().hex[:8]}"
    alice = token("alice@example.com", "visitor")

    async def scenario():
        # nginx starts each connection at a random one of the gateways' addresses, so six sockets all land on one
        # gateway once in 32 runs: open more, up to 24 (then once in 8 million), until both gateways hold some.
        sockets = [await connect(f"/ws/chat/{room}/?token={alice}") for _ in range(6)]
        per_gateway = gateway_sockets()
        while len(sockets) < 24 and not all(n >= 1 for n in per_gateway.values()):
            sockets.append(await connect(f"/ws/chat/{room}/?token={alice}"))
            per_gateway = gateway_sockets()
        assert len(per_gateway) == 2 and all(n >= 1 for n in per_gateway.values()), per_gateway
        for i in range(20):
            await sockets[i % len(sockets)].send(json.dumps({"message": f"m{i}"}))
        for ws in sockets:
            frames = await chat_frames(ws, 20)
            assert sorted(f["seq"] for f in frames) == list(range(1, 21))
        # A bad frame: an error on that socket, which keeps working, and nothing stored.
        await sockets[0].send("{not json")
        assert "error" in (await chat_frames(sockets[0], 1))[0]
        await sockets[0].send(json.dumps({"message": "after the bad frame"}))
        for ws in sockets:
            assert (await chat_frames(ws, 1))[0]["message"] == "after the bad frame"
        # History: a late joiner (on either gateway) gets all 21 stored messages in order.
        late = await connect(f"/ws/chat/{room}/?token={alice}")
        history = await chat_frames(late, 21)
        assert [f["seq"] for f in history] == list(range(1, 22))
        for ws in sockets + [late]:
            await ws.close()

        # A consultation: the shop creates the room over REST, both chat, the messages are stored.
        shop, visitor = f"shop-{room}@example.com", f"visitor-{room}@example.com"
        shop_token, visitor_token = token(shop, "shop"), token(visitor, "visitor")
        created = requests.post(f"{BASE}/api/rooms", json={"shop_user_email": shop, "visitor_user_email": visitor},
                                headers={"Authorization": f"Bearer {shop_token}", **ORIGIN}, timeout=10)
        assert created.status_code in (200, 201), created.text
        room_id = created.json()["id"]
        shop_ws = await connect(f"/ws/room/{room_id}/messages?token={shop_token}")
        visitor_ws = await connect(f"/ws/room/{room_id}/messages?token={visitor_token}")
        frame = {"shop_user_email": shop, "visitor_user_email": visitor}
        await visitor_ws.send(json.dumps({"message": "hello shop", **frame}))
        await shop_ws.send(json.dumps({"message": "hello visitor", **frame}))
        for ws in (shop_ws, visitor_ws):
            assert {f["message"] for f in await chat_frames(ws, 2)} == {"hello shop", "hello visitor"}
        await shop_ws.close()
        await visitor_ws.close()
        stored = requests.get(f"{BASE}/api/rooms/{room_id}/messages", headers={"Authorization": f"Bearer {visitor_token}"}, timeout=10)
        assert stored.status_code == 200, stored.text
        assert sorted(m["message"] for m in stored.json()["messages"]) == ["hello shop", "hello visitor"]

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def stack():
    args = ["up", "--port", str(PORT)] + [a for s, n in SCALE.items() for a in ("--scale", f"{s}={n}")]
    try:
        TIMINGS["up (build included)"], _ = containers_script(*args, timeout=40 * 60)
        yield
    finally:
        if ours():
            containers_script("down", timeout=300)
        print("timings:", {k: f"{v:.0f} s" for k, v in TIMINGS.items()})


def test_every_replica_runs_and_is_healthy(stack):
    print(podman("ps", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "{{.Names}}\t{{.Image}}\t{{.Status}}"))
    for service, count in {**SCALE, "rabbitmq": 1, "postgres": 1, "nginx": 1, "prometheus": 1}.items():
        names = replicas(service)
        assert len(names) == count, (service, names)
        for name in names:
            podman("healthcheck", "run", name)
    # nginx is the only published port, and on loopback.
    published = [l for l in podman("ps", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "{{.Names}} {{.Ports}}").splitlines()
                 if "->" in l]
    assert len(published) == 1 and "nginx" in published[0] and f"127.0.0.1:{PORT}->8080" in published[0], published
    # Services run as a non-root user.
    for service in ("gateway", "persistence", "rooms"):
        assert podman("exec", replicas(service)[0], "id", "-u").strip() != "0"


def test_smoke_through_nginx(stack):
    started = time.monotonic()
    smoke()
    TIMINGS["smoke"] = time.monotonic() - started


def test_two_browser_pages_chat_in_a_named_room_at_the_printed_url(stack):
    """The URL `./scripts/containers up` prints works in a browser as it is deployed: anonymous named rooms are on
    by default (CHAT_ALLOW_ANONYMOUS=0 turns them off), through the containers' nginx."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(arg)
        return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)

    room = f"deployed-{uuid.uuid4().hex[:8]}"
    pages = [make(), make()]
    try:
        for page in pages:
            page.get(f"{BASE}/chat/")
            box = WebDriverWait(page, 15).until(EC.presence_of_element_located((By.ID, "room-name-input")))
            box.send_keys(room, Keys.ENTER)
            WebDriverWait(page, 15).until(lambda d: d.current_url.rstrip("/").endswith(room))
        time.sleep(1)  # both sockets open
        log = lambda d: d.find_element(By.ID, "chat-log").get_attribute("value")
        pages[0].find_element(By.ID, "chat-message-input").send_keys("hello from a deployed page", Keys.ENTER)
        WebDriverWait(pages[1], 15).until(lambda d: "hello from a deployed page" in log(d))
        pages[1].find_element(By.ID, "chat-message-input").send_keys("and back", Keys.ENTER)
        WebDriverWait(pages[0], 15).until(lambda d: "and back" in log(d))
        assert log(pages[0]).splitlines() == ["hello from a deployed page", "and back"]
    finally:
        for page in pages:
            page.quit()


def test_services_log_json_lines_with_their_context(stack):
    gateway = replicas("gateway")[0]
    reply = requests.get(f"http://{address(gateway)}:8000/api/rooms", headers={"X-Request-ID": "container-test-1"}, timeout=5)
    assert reply.headers["X-Request-ID"] == "container-test-1"
    logs = subprocess.run(["podman", "logs", gateway], env=ENV, capture_output=True, text=True).stderr.splitlines()
    lines = [json.loads(line) for line in logs if line.startswith("{")]
    ours_lines = [l for l in logs if l.strip() and not l.startswith("time=")]  # time=…: podman's own complaints
    assert lines and len(lines) == len(ours_lines), ours_lines[:5]
    assert all(l.get("chat.gateway") for l in lines), [l for l in lines if not l.get("chat.gateway")][:3]
    assert any(l.get("request.id") == "container-test-1" and l["http.path"] == "/api/rooms" for l in lines)
    assert any("amqp.queue" in l for l in lines)
    persistence = subprocess.run(["podman", "logs", replicas("persistence")[0]], env=ENV, capture_output=True, text=True).stderr
    assert any(json.loads(l).get("amqp.queue") for l in persistence.splitlines() if l.startswith("{"))


def wait_restarted(name, restarts_before, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = int(podman("inspect", name, "--format", "{{.RestartCount}}").strip())
        if count > restarts_before and subprocess.run(["podman", "healthcheck", "run", name], env=ENV, capture_output=True).returncode == 0:
            return time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"{name} was not restarted and healthy within {timeout} s")


def stored(room):
    """(seq, text) of every stored message of a named room, read in the PostgreSQL container."""
    out = podman("exec", replicas("postgres")[0], "psql", "-U", "chat", "-d", "chat", "-At", "-F", "\x1f", "-c",
                 f"SELECT seq, body FROM chat_messages WHERE grp = 'named:{room}' ORDER BY seq")
    return [(int(seq), body) for seq, body in (line.split("\x1f") for line in out.splitlines() if line)]


def test_a_killed_gateway_and_persistence_worker_come_back(stack):
    # SIGKILL to the container's process, as a crash or the OOM killer would: podman 4.3's `podman kill` marks
    # a container stopped by its user, and then no restart policy applies (checked on this machine).
    victims = [replicas("gateway")[0], replicas("persistence")[0]]
    survivor = replicas("gateway")[1]
    before = {name: int(podman("inspect", name, "--format", "{{.RestartCount}}").strip()) for name in victims}
    room = f"kill-{uuid.uuid4().hex[:8]}"
    total = 400
    alice = token("alice@example.com", "visitor")

    async def under_load():
        # Writer and reader on the gateway that stays, so that every message sent is one the system took.
        url = f"ws://{address(survivor)}:8000/ws/chat/{room}/?token={alice}"
        writer = await websockets.connect(url, additional_headers=ORIGIN, max_size=None)
        reader = await websockets.connect(url, additional_headers=ORIGIN, max_size=None)
        await asyncio.sleep(0.3)
        started = None
        for i in range(total):
            await writer.send(json.dumps({"message": f"k{i}"}))
            if i == total // 4:
                started = time.monotonic()
                for name in victims:
                    os.kill(int(podman("inspect", name, "--format", "{{.State.Pid}}").strip()), 9)
            await asyncio.sleep(0.005)
        frames = await chat_frames(reader, total, timeout=90)
        await writer.close()
        await reader.close()
        return started, frames

    started, frames = asyncio.run(under_load())
    assert all("error" not in f for f in frames), [f for f in frames if "error" in f][:3]
    assert [f["seq"] for f in frames] == list(range(1, total + 1))
    assert [f["message"] for f in frames] == [f"k{i}" for i in range(total)]
    assert stored(room) == [(i + 1, f"k{i}") for i in range(total)]
    for name in victims:
        back = wait_restarted(name, before[name])
        TIMINGS[f"restart of {name.split('_')[1]}"] = back - started
    # nginx follows the restarted gateway (re-resolved by name every 2 s).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if len(gateway_sockets()) == 2:
                break
        except (requests.RequestException, StopIteration):
            pass
        time.sleep(1)
    smoke()


def test_prometheus_scrapes_every_service(stack):
    prometheus = f"http://{address(replicas('prometheus')[0])}:9090"
    deadline = time.monotonic() + 60
    wanted = {"gateway": "chat_gateway_messages_in_total", "persistence": "chat_persistence_messages_stored_total",
              "rooms": "chat_rooms_requests_total", "rabbitmq": "rabbitmq_queues"}
    missing = dict(wanted)
    while missing and time.monotonic() < deadline:
        for job, metric in list(missing.items()):
            result = requests.get(f"{prometheus}/api/v1/query", params={"query": f'{metric}{{job="{job}"}}'}, timeout=5).json()
            if result["status"] == "success" and result["data"]["result"]:
                missing.pop(job)
        time.sleep(2)
    assert not missing, f"no series in Prometheus for {missing}"
    up = requests.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=5).json()["data"]["result"]
    targets = {}
    for series in up:
        targets.setdefault(series["metric"]["job"], []).append(series["value"][1])
    for service, count in SCALE.items():
        assert targets.get(service, []).count("1") >= count, targets
    stored = requests.get(f"{prometheus}/api/v1/query", params={"query": "sum(chat_persistence_messages_stored_total)"}, timeout=5).json()
    print("Prometheus: targets", targets, "stored", stored["data"]["result"])


def test_down_leaves_no_container_network_or_volume(stack):
    TIMINGS["down"], _ = containers_script("down", timeout=300)
    assert ours("container") == []
    assert ours("network") == []
    assert ours("volume") == []
