"""The soak (./scripts/faults --soak MINUTES; one minute of it in ./scripts/test): the fault suite's steady load
(acks, resends, several rooms, both gateways behind nginx, PostgreSQL) without faults, plus a client in turn
closing its socket and resuming (?since=) every few seconds. It prints, at the baseline (the end of the first
minute, or a third of a shorter soak) and at the end: RSS and open file descriptors of every process (RabbitMQ
and PostgreSQL included), queue depths and binding counts, and the delivery p99 of each minute. Memory and
descriptors must stay flat after the baseline, and nothing acked may be lost or doubled."""
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import RABBIT_NODE, rabbitmqctl  # noqa: E402
from test_faults import Faults  # noqa: E402

MINUTES = float(os.environ.get("CHAT_SOAK_MINUTES", "1"))
# "Flat" after the baseline: PSS may grow by at most this fraction plus this many KiB, descriptors by this many.
RSS_GROWTH, RSS_SLACK_KIB, FD_SLACK = 0.25, 16 * 1024, 16


def processes(faults):
    """name -> pid of every process of the stack."""
    out = {key: proc.pid for key, proc in faults.stack.procs.items() if proc.poll() is None}
    out["rabbitmq"] = int(Path(faults.rabbit_dir, "rabbit.pid").read_text().strip())
    postmaster = int(Path(faults.pg_dir, "data", "postmaster.pid").read_text().split()[0])
    out["postgres"] = postmaster
    return out


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def usage(pid, with_children=False):
    """(RSS KiB, PSS KiB, open descriptors) of a process and, for PostgreSQL, its backends (whose shared buffers
    RSS counts once per backend: PSS shares them out)."""
    pids = [pid] + (children(pid) if with_children else [])
    rss = pss = fds = 0
    for p in pids:
        try:
            rss += next(int(l.split()[1]) for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:"))
            pss += next(int(l.split()[1]) for l in open(f"/proc/{p}/smaps_rollup") if l.startswith("Pss:"))
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, StopIteration):
            pass
    return rss, pss, fds


def broker_state(vhost):
    queues = rabbitmqctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers").split("\n")
    depth = {}
    for line in queues:
        parts = line.split()
        if len(parts) == 2:
            depth[parts[0]] = int(parts[1])
    bindings = len([l for l in rabbitmqctl("list_bindings", "-p", vhost, "--no-table-headers").split("\n") if l.strip()])
    return depth, bindings


def snapshot(faults):
    pids = processes(faults)
    usage_by = {name: usage(pid, with_children=(name == "postgres")) for name, pid in pids.items()}
    depth, bindings = broker_state(faults.stack.vhost)
    return usage_by, depth, bindings


@pytest.fixture(scope="module")
def faults():
    f = Faults()
    yield f
    f.stop()


def test_steady_load_keeps_memory_and_descriptors_flat(faults):
    duration = MINUTES * 60
    baseline_at = min(60.0, duration / 3)

    async def scenario():
        tasks = [asyncio.create_task(c.run()) for c in faults.clients]
        started = time.time()
        baseline = None
        resumes = 0
        try:
            for c in faults.clients:
                c.sending = True
            while time.time() - started < duration:
                await asyncio.sleep(3)
                # One client drops its socket and resumes after the last seq it saw.
                victim = random.choice(faults.clients)
                if victim.ws is not None:
                    await victim.ws.close()
                    resumes += 1
                if baseline is None and time.time() - started >= baseline_at:
                    baseline = await asyncio.to_thread(snapshot, faults)
            for c in faults.clients:
                c.sending = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(c.outbox or c.ws is None for c in faults.clients):
                await asyncio.sleep(0.2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and faults.missing():
                await asyncio.sleep(0.2)
            end = await asyncio.to_thread(snapshot, faults)
            row = faults.report("soak", time.time() - started, 0.0)
        finally:
            for c in faults.clients:
                c.stop = True
            await asyncio.wait(tasks, timeout=10)
        return started, baseline, end, row, resumes

    started, baseline, end, row, resumes = asyncio.run(asyncio.wait_for(scenario(), duration + 300))

    print(f"\n\nsoak: {MINUTES:g} min, {len(faults.clients)} clients in {len(faults.rooms)} rooms through nginx on 2 gateways, "
          f"{resumes} resumes; sent {row['sent']}, acked {row['acked']}, lost {row['lost']}, duplicated {row['duplicated']}, "
          f"order breaks {row['order_breaks']}, unacked {row['unacked']}")
    print(f"\nprocess | RSS at {baseline_at:.0f} s (KiB) | RSS at end | PSS at {baseline_at:.0f} s (KiB) | PSS at end | "
          f"descriptors at {baseline_at:.0f} s | at end")
    print("---|---|---|---|---|---|---")
    for name in sorted(end[0]):
        b, e = baseline[0].get(name, (0, 0, 0)), end[0][name]
        print(f"{name} | {b[0]} | {e[0]} | {b[1]} | {e[1]} | {b[2]} | {e[2]}")
    print(f"\nqueue | messages at {baseline_at:.0f} s | at end")
    print("---|---|---")
    for name in sorted(set(baseline[1]) | set(end[1])):
        print(f"{name} | {baseline[1].get(name, '—')} | {end[1].get(name, '—')}")
    print(f"bindings: {baseline[2]} at {baseline_at:.0f} s, {end[2]} at end")
    print("\nminute | deliveries | p50 (ms) | p99 (ms)")
    print("---|---|---|---")
    samples = sorted((when, latency) for c in faults.clients for when, latency in c.latencies)
    for minute in range(int((samples[-1][0] - started) // 60) + 1 if samples else 0):
        lat = sorted(l for w, l in samples if minute * 60 <= w - started < (minute + 1) * 60)
        if lat:
            print(f"{minute + 1} | {len(lat)} | {lat[len(lat) // 2] * 1000:.1f} | {lat[max(0, int(len(lat) * 0.99) - 1)] * 1000:.1f}")

    assert row["acked"] > 0 and row["lost"] == 0 and row["duplicated"] == 0 and row["order_breaks"] == 0 and row["unacked"] == 0, row
    for name, (_, pss, fds) in end[0].items():
        if name not in baseline[0]:
            continue
        _, b_pss, b_fds = baseline[0][name]
        # PostgreSQL's PSS grows as its shared buffers (128 MiB) are touched for the first time: that is its cache
        # filling, not a leak, so only its descriptors are held flat.
        if name != "postgres":
            assert pss <= b_pss * (1 + RSS_GROWTH) + RSS_SLACK_KIB, (name, b_pss, pss)
        assert fds <= b_fds + FD_SLACK, (name, b_fds, fds)
    assert end[2] <= baseline[2] + 4, (baseline[2], end[2])
    assert all(depth < 100 for depth in end[1].values()), end[1]
