"""Turns the load generator's JSON reports into docs/benchmarks.md: per shape, each system's saturation
(highest offered rate with nothing lost, duplicated, misrouted or reordered and p99 under the limit), our
p99 at the reference's best rate, the ratios ours/reference and ours/peer, ours as a fraction of the bare
server; the fixed-rate runs (CPU per delivery, latency, whole-system RSS) and idle sockets of every system.
Usage: bench_table.py RESULTS [CURRENT_MD]; what follows HAND_WRITTEN in CURRENT_MD is kept at the end."""
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

results = sys.argv[1]
HAND_WRITTEN = "<!-- hand-written below: ./scripts/bench keeps everything after this line -->"
kept = ""
if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
    current = open(sys.argv[2]).read()
    if HAND_WRITTEN in current:
        kept = current.split(HAND_WRITTEN, 1)[1].strip("\n")
P99_LIMIT = 100.0
PEERS = ["nchan", "centrifuge"]
SHAPES = {
    "a": "(a) 10 rooms × 10 clients, all send",
    "b": "(b) 100 rooms × 10 clients, all send",
    "c": "(c) 1 room × 200 clients, 20 send",
    "e": "(e) consultation: 100 rooms × 2 clients, every message stored",
}


def load(system, shape):
    runs = []
    for path in sorted(glob.glob(f"{results}/{system}-{shape}-[0-9]*.json")):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def clean(r, limit=P99_LIMIT):
    return (r["lost"] == 0 and r["duplicated"] == 0 and r["misrouted"] == 0 and r["orderViolations"] == 0
            and r["connectionsFailed"] == 0 and r["latencyP99Ms"] <= limit)


def saturation(run, limit=P99_LIMIT):
    """The clean report with the highest rate in one sweep (None if no rate ran clean)."""
    good = [r for r in run if clean(r, limit)]
    return max(good, key=lambda r: r["ratePerSender"]) if good else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, unit=""):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}{unit}"


def at_rate(run, rate):
    for r in run:
        if r["ratePerSender"] == rate:
            return r
    return None


def run_counts():
    """How many runs of each sweep every system has (e.g. 'reference 3, ours 1, bare 1')."""
    counts = {}
    for system in ("reference", "ours", "nchan", "centrifuge", "bare"):
        n = [len(load(system, shape)) for shape in SHAPES]
        n = [x for x in n if x]
        if n:
            counts[system] = f"{min(n)}" if min(n) == max(n) else f"{min(n)}–{max(n)}"
    return ", ".join(f"{system} {n}" for system, n in counts.items())


lines = []
load_avg = " ".join(open("/proc/loadavg").read().split()[:3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
lines += [
    "# Benchmarks: ours side by side with the Django Channels reference and the fast peers (nchan, Centrifuge)",
    "",
    f"Table written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} (from the runs listed under Commands, run on this day) on {os.cpu_count()} cores ({cpu}), "
    f"{int(mem) // 1024 // 1024} GiB, load average before the table was written: {load_avg}. "
    f"Every figure is the median of the runs of its sweep (runs per sweep: {run_counts()}). All servers, RabbitMQ, Redis, the databases "
    "and the load generator share this one machine (the generator's own CPU use is in the raw reports).",
    "",
    "- **reference**: `../shared/anchor/run_anchor.sh --layer redis` (Django 5.2, Channels 4.3, channels_redis, one uvicorn worker, SQLite).",
    "- **ours**: `./scripts/bench` starts a private RabbitMQ and the gateway, persistence and room services (release build, SQLite); every message is stored before it is broadcast.",
    "- **nchan**: `../shared/anchor/peers/nchan/run.sh` (nginx 1.22 + nchan 1.3.6, C, in memory, 1 worker, last 50 messages per channel); speaks our named-room protocol.",
    "- **centrifuge**: `../shared/anchor/peers/centrifuge/run.sh` (the Centrifuge Go library, memory broker, history of 50 per channel); the generator speaks its JSON protocol (`--protocol centrifuge`).",
    "- **bare**: `BroadcastServer`, an in-process WebSocket broadcast server with no broker and no database: the ceiling on this machine.",
    "",
    f"Saturation = the highest offered rate (messages/s per sender, open loop) with 0 lost, 0 duplicated, 0 misrouted, 0 out of order and p99 ≤ {P99_LIMIT:.0f} ms; the figure is the deliveries/s measured at that rate.",
    "",
    "The reference's own README uses p99 < 200 ms; where it has no rate with p99 ≤ 100 ms, its column shows its "
    "≤ 200 ms saturation, marked †, and the ratio uses that (so it flatters the reference).",
    "",
    "| shape | reference deliveries/s (p99) | ours deliveries/s (p99) | ours / reference | nchan (p99) | ours / nchan | centrifuge (p99) | ours / centrifuge | bare | ours / bare | ours p99 at the reference's best rate |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def sat_figures(system, key, limit=P99_LIMIT):
    """Median saturation deliveries/s and p99 of a system's sweeps, the median best rate, and whether some
    rate of every sweep failed (the knee was found: the figure is not just the top of the grid)."""
    runs = load(system, key)
    sats = [saturation(r, limit) for r in runs]
    knee = bool(runs) and all(any(not clean(x, limit) for x in r) for r in runs)
    return (median([x["deliveriesPerSecond"] if x else None for x in sats]),
            median([x["latencyP99Ms"] if x else None for x in sats]),
            median([x["ratePerSender"] if x else None for x in sats]), knee, bool(runs))


def sat_cell(fig):
    value, p99, _, knee, present = fig
    if not present:
        return "—"
    return f"{'' if knee or value is None else '≥ '}{fmt(value)} ({fmt(p99, 1, ' ms')})"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


figures = {}  # per shape, what the targets below are checked against
for key, title in SHAPES.items():
    our_runs = load("ours", key)
    ref_fig = sat_figures("reference", key)
    dagger = ""
    if ref_fig[2] is None and ref_fig[4]:
        ref_fig = sat_figures("reference", key, 200.0)
        dagger = " †" if ref_fig[0] else ""
    our_fig = sat_figures("ours", key)
    peer_figs = {p: sat_figures(p, key) for p in PEERS}
    bare_fig = sat_figures("bare", key)
    ref, ref_p99, best_rate = ref_fig[0], ref_fig[1], ref_fig[2]
    ours, bare = our_fig[0], bare_fig[0]
    ours_at_ref = median([(at_rate(r, best_rate) or {}).get("latencyP99Ms") for r in our_runs]) if best_rate else None
    figures[key] = dict(ref=ref, ours=ours, bare=bare, ref_p99=ref_p99, ours_at_ref=ours_at_ref,
                        **{p: peer_figs[p][0] for p in PEERS}, knees={s: f[3] for s, f in [("ours", our_fig)] + list(peer_figs.items())})
    frac = f"{100 * ours / bare:.0f}%" if ours and bare else "—"
    p99_cmp = f"{fmt(ours_at_ref, 1, ' ms')} vs {fmt(ref_p99, 1, ' ms')}" if best_rate else "—"
    na = key == "e"
    cells = [title, sat_cell(ref_fig) + dagger, sat_cell(our_fig), ratio(ours, ref)]
    for p in PEERS:
        cells += ["n/a", "n/a"] if na else [sat_cell(peer_figs[p]), ratio(ours, peer_figs[p][0])]
    cells += ["n/a", "n/a"] if na else [sat_cell(bare_fig), frac]
    cells.append(p99_cmp)
    lines.append("| " + " | ".join(cells) + " |")
lines += ["", "A figure marked ≥ is the top of its grid (no rate failed): the knee was not found."]

# Fixed rates: what each system spends to carry the same load.
FIXED = [("f-a20k", "(a) at 20,000 deliveries/s"), ("f-b20k", "(b) at 20,000 deliveries/s"),
         ("f-a60k", "(a) at 60,000 deliveries/s"), ("f-c100k", "(c) at 100,000 deliveries/s")]
SYSTEMS_ALL = ["reference", "ours", "nchan", "centrifuge", "bare"]


def switches_per_message(r):
    """Context switches of all the system's processes over the run per chat message sent (None when the report
    has no contextSwitches: written by an older load generator)."""
    procs = r.get("serverCPUSecondsByProcess") or []
    counts = [p.get("contextSwitches") for p in procs]
    if not r.get("messagesSent") or all(c is None for c in counts):
        return None
    return sum(c or 0 for c in counts) / r["messagesSent"]


def switches_by_process(reports):
    """Per process (in the order of --pids, the same in every repeat): its name and the median over repeats of
    its context switches per chat message; None when no report has the field."""
    rows = []
    for r in reports:
        if not r.get("messagesSent"):
            continue
        for i, p in enumerate(r.get("serverCPUSecondsByProcess") or []):
            if len(rows) <= i:
                rows.append((p.get("name") or str(p.get("pid")), []))
            if p.get("contextSwitches") is not None:
                rows[i][1].append(p["contextSwitches"] / r["messagesSent"])
    if not any(values for _, values in rows):
        return None
    return [(name, median(values)) for name, values in rows]


def fixed(system, shape):
    """Median over repeats of: CPU µs per delivery, p50, p99, peak whole-system RSS MiB, deliveries/s, clean,
    context switches per chat message (in all and process by process)."""
    reports = [x for run in load(system, shape) for x in run]
    if not reports:
        return None
    return dict(cpu=median([1e6 * r["serverCPUSeconds"] / r["deliveriesReceived"] if r["deliveriesReceived"] else None for r in reports]),
                p50=median([r["latencyP50Ms"] for r in reports]), p99=median([r["latencyP99Ms"] for r in reports]),
                rss=median([r["serverPeakRSSMiB"] for r in reports]), pss=median([r.get("serverPeakPSSMiB") for r in reports]), rate=median([r["deliveriesPerSecond"] for r in reports]),
                clean=all(clean(r, 1e9) for r in reports), cpu_s=median([r["serverCPUSeconds"] for r in reports]),
                cs=median([switches_per_message(r) for r in reports]), cs_by=switches_by_process(reports))


fixed_figures = {shape: {s: fixed(s, shape) for s in SYSTEMS_ALL} for shape, _ in FIXED}
if any(v for f in fixed_figures.values() for v in f.values()):
    lines += ["", "## Fixed rates: CPU per delivery, latency and memory at the same load", "",
              "Each system at the same offered rate for 10 s. CPU per delivery = the CPU seconds of all of the system's "
              "processes over the run (ours: gateway, persistence, room service and RabbitMQ; the reference: uvicorn, "
              "its workers and Redis; nchan: its master and worker) divided by the deliveries received. RSS = the peak of "
              "the sum of those processes' resident memory during the run; PSS the same with each shared page divided among "
              "the processes mapping it (our three services map the same Swift and Foundation libraries, counted three times "
              "in the RSS sum, once in the PSS sum). Context switches per chat message = the context switches of all "
              "the threads of all those processes over the run divided by the messages sent (— where the reports "
              "predate the count). A run that lost or reordered anything is "
              "marked ✗ (its figures are what it did, not what the load asked).", "",
              "| load | figure | " + " | ".join(SYSTEMS_ALL) + " | ours / nchan | ours / centrifuge |",
              "|---|---|" + "---|" * len(SYSTEMS_ALL) + "---|---|"]
    for shape, title in FIXED:
        f = fixed_figures[shape]
        for name, k, digits, unit in [("CPU per delivery", "cpu", 1, " µs"), ("p50 / p99", None, 1, " ms"),
                                      ("whole-system RSS", "rss", 0, " MiB"), ("whole-system PSS", "pss", 0, " MiB"),
                                      ("deliveries/s", "rate", 0, ""), ("context switches per chat message", "cs", 1, "")]:
            cells = [title if name == "CPU per delivery" else "", name]
            for s in SYSTEMS_ALL:
                v = f.get(s)
                if not v:
                    cells.append("—")
                elif k is None:
                    cells.append(f"{v['p50']:.1f} / {v['p99']:.1f}{unit}" + ("" if v["clean"] else " ✗"))
                else:
                    cells.append(fmt(v[k], digits, unit))
            for p in PEERS:
                o, q = f.get("ours"), f.get(p)
                if k is None:
                    cells.append(ratio(o and o["p99"], q and q["p99"]) + " (p99)")
                else:
                    cells.append(ratio(o and o[k], q and q[k]))
            lines.append("| " + " | ".join(cells) + " |")
    by_process = [(title, s, fixed_figures[shape][s]["cs_by"]) for shape, title in FIXED for s in SYSTEMS_ALL
                  if fixed_figures[shape].get(s) and fixed_figures[shape][s]["cs_by"]]
    if by_process:
        lines += ["", "### Context switches per chat message, process by process", "",
                  "Each process's context switches (all its threads) over the run divided by the messages sent, "
                  "the median over the repeats of each fixed-rate run; the processes in the order they were measured.", "",
                  "| load | system | per process |", "|---|---|---|"]
        last = None
        for title, s, rows in by_process:
            per = ", ".join(f"{name}: {fmt(v, 2)}" for name, v in rows)
            lines.append(f"| {title if title != last else ''} | {s} | {per} |")
            last = title

# (b) on PostgreSQL with one and with two persistence workers: the write load shared.
def worker_shares(system):
    """Per worker: messages stored and CPU seconds over the whole sweep (from /stats and /proc, before and after)."""
    try:
        before = [l.rsplit(" ", 1) for l in open(f"{results}/{system}-workers-before.txt") if l.strip()]
        after = [l.rsplit(" ", 1) for l in open(f"{results}/{system}-workers-after.txt") if l.strip()]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for (b, bt), (a, at) in zip(before, after):
        b, a = json.loads(b), json.loads(a)
        out.append((a["worker"], a["stored"] - b["stored"], (int(at) - int(bt)) / ticks, a["owned"]))
    return out


scaled_rows = []
for system, label in [("ours1w", "1 worker"), ("ours2w", "2 workers")]:
    runs = load(system, "b")
    if not runs:
        continue
    sat = [saturation(r) for r in runs]
    shares = worker_shares(system) or []
    total = sum(n for _, n, _, _ in shares) or 1
    share_text = "; ".join(f"{w}: {100 * n / total:.0f}% of the messages, {cpu:.1f} CPU-s, partitions {owned}" for w, n, cpu, owned in shares)
    scaled_rows.append(f"| {label} | {fmt(median([s['deliveriesPerSecond'] if s else None for s in sat]))} "
                       f"({fmt(median([s['latencyP99Ms'] if s else None for s in sat]), 1, ' ms')}) | "
                       f"{fmt(median([s['serverCPUPercent'] if s else None for s in sat]), 0, '%')} | {share_text or '—'} |")
if scaled_rows:
    lines += ["", "## (b) with one and with two persistence workers (PostgreSQL)", "",
              "Ours on a private PostgreSQL 15 (fsync off, on this machine's disk), one gateway, one room service and "
              "one or two persistence workers sharing the 8 partitions; the same sweep as (b). Server CPU includes "
              "RabbitMQ and PostgreSQL (its backends as they were when the run started). Each worker's share is of the "
              "messages it stored over the whole sweep, with its own CPU seconds. On 2 shared cores a second worker "
              "is not expected to be faster: the point is that the load is shared and nothing is lost or reordered.", "",
              "| persistence | saturation deliveries/s (p99) | server CPU at saturation | each worker's share |", "|---|---|---|---|"]
    lines += scaled_rows

lines += ["", "## Idle sockets", "",
          "Each connection is opened at 1,000 per second (after its handshake it joins its room: room service, "
          "broker binding, history), all are held, and then each sends one probe (the first probes staggered at 400 "
          "per second, a probe re-sent only after 30 s without its echo). 'Answering' counts the sockets whose probe "
          "came back; RSS per connection is the serving process's growth from before the first connection to after the "
          "last one settled (the serving process: the gateway for ours, uvicorn for the reference, nchan's worker, "
          "the Centrifuge server). Ours runs each idle shape on a freshly started gateway (CHAT_MAX_CONNECTIONS defaults to "
          "the open-files limit, 20,000 here, less 512).",
          "", "| system | connections held | answering | serving process RSS per connection |", "|---|---|---|---|"]
for system, shape in [("reference", "d"), ("ours", "d"), ("ours", "d-max"), ("nchan", "d"), ("centrifuge", "d")]:
    for r in [x for run in load(system, shape) for x in run]:
        lines.append(f"| {system} | {r['connectionsOpened']} (failed {r['connectionsFailed']}) | {r.get('idleConnectionsAnswering')} | "
                     f"{fmt(r.get('serverRSSPerConnectionKiB'), 1, ' KiB')} |")

# The targets, checked against the figures above.
def verdict(ok):
    return "—" if ok is None else ("met" if ok else "**not met**")


def ratio_at_least(key, factor):
    f = figures.get(key, {})
    return (f["ours"] / f["ref"] >= factor) if f.get("ours") and f.get("ref") else None


lines += ["", "## Against the targets", "", "| target | figure | verdict |", "|---|---|---|"]
for key, factor in [("a", 20), ("b", 20), ("c", 20), ("e", 50)]:
    f = figures.get(key, {})
    shown = f"{f['ours'] / f['ref']:.1f}×" if f.get("ours") and f.get("ref") else "—"
    lines.append(f"| saturation ≥ {factor}× the reference on ({key}) | {shown} | {verdict(ratio_at_least(key, factor))} |")
for key in ["a", "b", "c", "e"]:
    f = figures.get(key, {})
    ok = f["ours_at_ref"] <= f["ref_p99"] / 5 if f.get("ours_at_ref") is not None and f.get("ref_p99") else None
    shown = f"{fmt(f.get('ours_at_ref'), 1, ' ms')} vs {fmt(f.get('ref_p99'), 1, ' ms')}"
    lines.append(f"| ({key}): p99 at the reference's best rate ≤ 1/5 of the reference's | {shown} | {verdict(ok)} |")
for key in ["a", "c"]:
    f = figures.get(key, {})
    ok = f["ours"] / f["bare"] >= 0.5 if f.get("ours") and f.get("bare") else None
    shown = f"{100 * f['ours'] / f['bare']:.0f}%" if f.get("ours") and f.get("bare") else "—"
    lines.append(f"| ({key}): ≥ 50% of the bare broadcast server | {shown} | {verdict(ok)} |")
idle = [x for run in load("ours", "d-max") for x in run]
if idle:
    r = idle[-1]
    per = r.get("serverRSSPerConnectionKiB")
    ok = (r["connectionsOpened"] >= 19000 and r.get("idleConnectionsAnswering") == r["connectionsOpened"]
          and per is not None and per * 1.024 <= 15)
    lines.append(f"| (d): 19,000 idle sockets on one gateway, all answering, ≤ 15 KB of gateway RSS each | "
                 f"{r['connectionsOpened']} held, {r.get('idleConnectionsAnswering')} answering, {fmt(per, 1, ' KiB')} each | {verdict(ok)} |")

# Issue 14's targets: against the peers, in the same run.
a20 = fixed_figures.get("f-a20k", {})
o20, c20 = a20.get("ours"), a20.get("centrifuge")
ok = o20["cpu"] <= 2 * c20["cpu"] if o20 and c20 and o20["cpu"] and c20["cpu"] else None
lines.append(f"| (a) at 20,000/s: CPU per delivery ≤ 2× Centrifuge's | {fmt(o20 and o20['cpu'], 1, ' µs')} vs "
             f"{fmt(c20 and c20['cpu'], 1, ' µs')} ({ratio(o20 and o20['cpu'], c20 and c20['cpu'])}) | {verdict(ok)} |")
ok = (o20["p99"] <= 5 and o20["clean"]) if o20 else None
lines.append(f"| (a) at 20,000/s: p99 ≤ 5 ms | {fmt(o20 and o20['p99'], 1, ' ms')} | {verdict(ok)} |")
ok = o20["rss"] <= 128 * 1000 * 1000 / 1024 / 1024 if o20 else None
lines.append(f"| (a) at 20,000/s: whole-system RSS ≤ 128 MB | {fmt(o20 and o20['rss'], 0, ' MiB')} (PSS {fmt(o20 and o20.get('pss'), 0, ' MiB')}) | {verdict(ok)} |")
for key in ["a", "b", "c"]:
    f = figures.get(key, {})
    ok = f["ours"] >= f["nchan"] if f.get("ours") and f.get("nchan") else None
    lines.append(f"| ({key}): saturation ≥ nchan's | {fmt(f.get('ours'))} vs {fmt(f.get('nchan'))} ({ratio(f.get('ours'), f.get('nchan'))}) | {verdict(ok)} |")

# Issue 19's targets: against the peers at the same load, and what a chat message costs in context switches.
b20 = fixed_figures.get("f-b20k", {})
ob20, cb20 = b20.get("ours"), b20.get("centrifuge")
for label, o, c in [("(a)", o20, c20), ("(b)", ob20, cb20)]:
    ok = o["cpu"] <= c["cpu"] if o and c and o["cpu"] and c["cpu"] else None
    lines.append(f"| issue 19: {label} at 20,000/s: CPU per delivery ≤ 1.0× Centrifuge's | {fmt(o and o['cpu'], 1, ' µs')} vs "
                 f"{fmt(c and c['cpu'], 1, ' µs')} ({ratio(o and o['cpu'], c and c['cpu'])}) | {verdict(ok)} |")
    if label == "(a)":
        target = "p99 ≤ Centrifuge's p99 (or ≤ 5 ms)"
        if not o:
            ok = None
        elif not o["clean"]:
            ok = False
        elif o["p99"] <= 5:
            ok = True
        else:
            ok = o["p99"] <= c["p99"] if c else None
    else:
        target = "p99 ≤ 2× Centrifuge's"
        ok = (o["clean"] and o["p99"] <= 2 * c["p99"]) if o and c else None
    lines.append(f"| issue 19: {label} at 20,000/s: {target} | {fmt(o and o['p99'], 1, ' ms')} vs "
                 f"{fmt(c and c['p99'], 1, ' ms')} ({ratio(o and o['p99'], c and c['p99'])}) | {verdict(ok)} |")
for peer, factor in [("centrifuge", 1.0), ("nchan", 0.5)]:
    for key in ["a", "b", "c"]:
        f = figures.get(key, {})
        ok = f["ours"] >= factor * f[peer] if f.get("ours") and f.get(peer) else None
        what = "Centrifuge's" if peer == "centrifuge" else f"{factor}× nchan's"
        lines.append(f"| issue 19: ({key}): saturation ≥ {what} | {fmt(f.get('ours'))} vs {fmt(f.get(peer))} "
                     f"({ratio(f.get('ours'), f.get(peer))}) | {verdict(ok)} |")
pss = o20.get("pss") if o20 else None
ok = pss <= 128 if pss is not None else None
lines.append(f"| issue 19: (a) at 20,000/s: whole-system PSS ≤ 128 MiB | {fmt(pss, 0, ' MiB')} | {verdict(ok)} |")
cs = o20.get("cs") if o20 else None
ok = cs <= 4 if cs is not None else None
lines.append(f"| issue 19: (a) at 20,000/s: ≤ 4 context switches per chat message (all our processes, RabbitMQ included) | "
             f"{fmt(cs, 1)} | {verdict(ok)} |")

lines += ["", "## Every run", "",
          "Server CPU is the CPU time of every process of the system under test over the run's wall time, as a "
          "percentage of one core (the machine has two): for the reference its uvicorn server and Redis, for ours "
          "the gateway, persistence and room services and RabbitMQ, for nchan its master and worker, for bare and "
          "Centrifuge the one process. Generator CPU is the "
          "load generator's own.", "",
          "| system | shape | rate/sender | sent | expected | received | lost | dup | order | p50 | p99 | deliveries/s | server CPU | generator CPU |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for path in sorted(glob.glob(f"{results}/*.json")):
    system, shape = os.path.basename(path).split("-")[0], os.path.basename(path).split("-", 1)[1].rsplit("-", 1)[0]
    for r in json.load(open(path)):
        lines.append(f"| {system} | {shape} | {r.get('ratePerSender') or '—'} | {r['messagesSent']} | {r['deliveriesExpected']} | "
                     f"{r['deliveriesReceived']} | {r['lost']} | {r['duplicated']} | {r['orderViolations']} | {r['latencyP50Ms']:.1f} | "
                     f"{r['latencyP99Ms']:.1f} | {r['deliveriesPerSecond']:.0f} | {r['serverCPUPercent']:.0f}% | {r['generatorCPUPercent']:.0f}% |")

commands = [l.rstrip() for path in sorted(glob.glob(f"{results}/*.cmd")) for l in open(path)]
lines += ["", "## Commands", "", "```"] + commands + ["```", "", HAND_WRITTEN, ""]
if kept:
    lines += [kept, ""]
print("\n".join(lines))
