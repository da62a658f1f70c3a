"""A tiny run of the benchmark tools, so they keep working: exact counts, nothing lost. Speed is measured by
./scripts/bench, never asserted here."""
import json
import os
import subprocess
from pathlib import Path

from conftest import BIN, free_port, run


def load(args, tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([str(BIN / "LoadGenerator"), *args, "--json", str(out), "--duration", "1", "--drain", "5", "--settle", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def exact(report, sent_per_sender_at_least=1):
    assert report["connectionsFailed"] == 0
    assert report["messagesSent"] >= sent_per_sender_at_least
    assert report["deliveriesReceived"] == report["deliveriesExpected"]
    assert (report["lost"], report["duplicated"], report["misrouted"], report["orderViolations"]) == (0, 0, 0, 0)
    assert 0 < report["latencyP50Ms"] <= report["latencyP99Ms"] <= report["latencyMaxMs"]


def test_named_rooms_on_our_stack(stack, tmp_path):
    [report] = load(["--url", stack.url, "--rooms", "3", "--clients", "4", "--rate", "10",
                     "--pids", str(stack.procs["gateway0"].pid)], tmp_path)
    exact(report)
    assert report["deliveriesExpected"] == report["messagesSent"] * 4
    assert report["serverPeakRSSMiB"] > 0


def test_consultation_rooms_on_our_stack_closed_loop(stack, tmp_path):
    [report] = load(["--url", stack.url, "--protocol", "consult", "--rooms", "3", "--window", "4"], tmp_path)
    exact(report)
    assert report["deliveriesExpected"] == report["messagesSent"] * 2


def test_a_sweep_and_the_bare_broadcast_server(tmp_path):
    port = free_port()
    server = subprocess.Popen([str(BIN / "BroadcastServer"), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time
        time.sleep(1)
        reports = load(["--url", f"http://127.0.0.1:{port}", "--rooms", "2", "--clients", "3", "--sweep", "5,10"], tmp_path)
        assert [r["ratePerSender"] for r in reports] == [5, 10]
        for r in reports:
            exact(r)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_idle_mode_checks_every_connection_answers(stack, tmp_path):
    [report] = load(["--url", stack.url, "--idle", "30", "--hold", "1", "--pids", str(stack.procs["gateway0"].pid)], tmp_path)
    assert report["connectionsOpened"] == 30 and report["idleConnectionsAnswering"] == 30
    assert report["serverRSSPerConnectionKiB"] is not None


def peers_dir():
    """The peers as the team provides them (../shared/anchor/peers), else the copy kept in Benchmarks/Peers."""
    root = Path(__file__).resolve().parents[2]
    shared = root.parent / "shared" / "anchor" / "peers"
    return shared if (shared / "centrifuge" / "run.sh").exists() else root / "Benchmarks" / "Peers"


def test_the_centrifuge_protocol_against_the_centrifuge_peer(tmp_path):
    """The generator's centrifuge protocol (connect + subscribe, publish commands, several pushes per frame)
    against the real Centrifuge chat server: every publication reaches every subscriber of its channel, in order,
    with no error frame; twice, so that a server which has already served a run serves the next one too."""
    port = free_port()
    env = dict(os.environ, CENTRIFUGE_STATE=str(tmp_path / "centrifuge"))
    script = peers_dir() / "centrifuge" / "run.sh"
    started = subprocess.run(["bash", str(script), "start", str(port), "50"], env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        pid = (tmp_path / "centrifuge" / "pid").read_text().strip()
        for _ in range(2):
            [report] = load(["--url", f"http://127.0.0.1:{port}", "--protocol", "centrifuge", "--rooms", "3", "--clients", "4",
                             "--rate", "20", "--pids", pid], tmp_path)
            exact(report, sent_per_sender_at_least=12)
            assert report["deliveriesExpected"] == report["messagesSent"] * 4
            assert report["errorFrames"] == 0 and report["serverCPUSeconds"] >= 0
    finally:
        subprocess.run(["bash", str(script), "stop", str(port)], env=env, capture_output=True, timeout=60)
