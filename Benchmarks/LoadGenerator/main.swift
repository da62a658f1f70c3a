import Foundation
import NIOPosix
import Synchronization

/// The load generator (see Options.help). Everything it connects to is given on the command line; the
/// benchmark script points it at 127.0.0.1 only.
let options = Options.parse(Array(CommandLine.arguments.dropFirst()))
let group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads)

func shapeName(_ o: Options) -> String {
    "\(o.protocolKind) \(o.rooms) rooms × \(o.clientsPerRoom) clients, \(o.senders) senders per room"
}

/// One load run at one rate (or window).
func runLoad(_ o: Options, rate: Double?) async throws -> Report {
    let setup = try await Setup.make(o, clients: o.clientsPerRoom)
    let start = Gate(), stop = Gate(), progress = Progress()
    let runners = setup.plans.map {
        ClientRunner(plan: $0, options: o, runID: setup.runID, start: start, stop: stop, progress: progress, group: group,
                     rate: rate)
    }
    let results = Mutex<[ClientResult]>([])
    let allDone = Task {
        await withTaskGroup(of: ClientResult.self) { tasks in
            // Connect with bounded concurrency, then hold every connection until the run stops.
            var next = 0
            for _ in 0..<min(o.connectConcurrency, runners.count) {
                let r = runners[next]; next += 1
                tasks.addTask { await r.run() }
            }
            let connectStart = ContinuousClock.now
            while next < runners.count {
                if let rate = o.connectRate {
                    let due = connectStart + .nanoseconds(Int64(Double(next) / rate * 1e9))
                    if due > .now { try? await Task.sleep(until: due) }
                }
                while progress.connected.load(ordering: .relaxed) + progress.failed.load(ordering: .relaxed) < next - o.connectConcurrency / 2 {
                    try? await Task.sleep(for: .milliseconds(5))
                }
                let r = runners[next]; next += 1
                tasks.addTask { await r.run() }
            }
            for await result in tasks { results.withLock { $0.append(result) } }
        }
    }
    // Wait for every connection (or its failure), let joins settle, then start.
    let connectDeadline = ContinuousClock.now + .seconds(60 + Int(Double(runners.count) / (o.connectRate ?? .infinity)))
    while progress.connected.load(ordering: .relaxed) + progress.failed.load(ordering: .relaxed) < runners.count, ContinuousClock.now < connectDeadline {
        try await Task.sleep(for: .milliseconds(20))
    }
    try await Task.sleep(for: .milliseconds(Int(o.settle * 1000)))

    let rssAtStart = o.pids.first.map(ProcessStats.rssKiB) ?? 0
    let sampler = RSSSampler(pids: o.pids)
    sampler.start()
    let cpuBeforeByPID = o.pids.map(ProcessStats.cpuSeconds)
    let switchesBeforeByPID = o.pids.map(ProcessStats.contextSwitches)
    let cpuBefore = cpuBeforeByPID.reduce(0, +)
    let selfBefore = ProcessStats.cpuSeconds(getpid())
    let wallStart = ContinuousClock.now
    start.open()
    try await Task.sleep(for: .milliseconds(Int(o.duration * 1000)))
    // Drain: wait until deliveries stop growing (or everything expected is in), bounded by --drain.
    let drainDeadline = ContinuousClock.now + .milliseconds(Int(o.drain * 1000))
    var lastSeen = -1, stableFor = 0
    while ContinuousClock.now < drainDeadline {
        try await Task.sleep(for: .milliseconds(100))
        let seen = progress.received.load(ordering: .relaxed)
        stableFor = seen == lastSeen ? stableFor + 1 : 0
        lastSeen = seen
        if stableFor >= 10 { break }  // a full second without a new delivery
    }
    let wall = ContinuousClock.now - wallStart
    let wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
    let cpuAfterByPID = o.pids.map(ProcessStats.cpuSeconds)
    let switchesAfterByPID = o.pids.map(ProcessStats.contextSwitches)
    let cpuAfter = cpuAfterByPID.reduce(0, +)
    let selfAfter = ProcessStats.cpuSeconds(getpid())
    let (peakKiB, peakPSSKiB) = sampler.stop()
    let rssAtEnd = o.pids.first.map(ProcessStats.rssKiB) ?? 0
    stop.open()
    await allDone.value

    let all = results.withLock { $0 }
    var report = Report(label: o.label, mode: o.window != nil ? "closed loop" : "open loop", url: o.url, shape: shapeName(o),
                        ratePerSender: rate, window: o.window)
    report.connectionsOpened = all.filter(\.connected).count
    report.connectionsFailed = runners.count - report.connectionsOpened
    report.connectionsReceiving = all.filter { $0.received > 0 }.count
    report.firstServerRSSAtStartKiB = rssAtStart
    report.firstServerRSSAtEndKiB = rssAtEnd
    report.messagesSent = all.reduce(0) { $0 + $1.sent }
    // Every room has `membersPerRoom` members, and each message is expected by all of them (its sender too).
    report.deliveriesExpected = report.messagesSent * setup.membersPerRoom
    report.deliveriesReceived = all.reduce(0) { $0 + $1.received }
    report.lost = max(0, report.deliveriesExpected - report.deliveriesReceived)
    report.duplicated = all.reduce(0) { $0 + $1.duplicates }
    report.misrouted = all.reduce(0) { $0 + $1.misrouted }
    report.orderViolations = all.reduce(0) { $0 + $1.orderViolations }
    report.errorFrames = all.reduce(0) { $0 + $1.errors }
    var latencies = all.flatMap(\.latenciesMicros)
    latencies.sort()
    report.latencyP50Ms = percentile(latencies, 0.50)
    report.latencyP90Ms = percentile(latencies, 0.90)
    report.latencyP99Ms = percentile(latencies, 0.99)
    report.latencyMaxMs = Double(latencies.last ?? 0) / 1000
    report.sendSeconds = o.duration
    report.deliveriesPerSecond = Double(report.deliveriesReceived) / max(o.duration, wallSeconds - 1.0)
    report.offeredMessagesPerSecond = Double(report.messagesSent) / o.duration
    report.serverCPUSeconds = cpuAfter - cpuBefore
    report.serverCPUPercent = 100 * report.serverCPUSeconds / wallSeconds
    report.serverCPUSecondsByProcess = o.pids.indices.map { i in
        ProcessCPU(pid: o.pids[i], name: ProcessStats.name(o.pids[i]), seconds: cpuAfterByPID[i] - cpuBeforeByPID[i],
                   contextSwitches: switchesAfterByPID[i] - switchesBeforeByPID[i])
    }
    report.serverPeakRSSMiB = Double(peakKiB) / 1024
    report.serverPeakPSSMiB = Double(peakPSSKiB) / 1024
    report.generatorCPUPercent = 100 * (selfAfter - selfBefore) / wallSeconds
    report.generatorThreads = o.threads
    report.scheduleLagMaxMs = all.map(\.scheduleLagMaxMs).max() ?? 0
    ErrorSamples.report()
    return report
}

/// Idle mode: open N connections (paced at `--connect-rate`), each alone in its own room, hold them, then
/// check that each still answers: every socket sends a probe (the first ones staggered at `--probe-rate`,
/// again after 30 s without an echo) until its own echo comes back. Reports the first server PID's RSS growth
/// per connection, read once every socket has connected and settled, just before the probes, and again at the end
/// (every socket open, each having received its echo).
func runIdle(_ o: Options, count: Int) async throws -> Report {
    var idle = o
    idle.rooms = count
    idle.clientsPerRoom = 1
    idle.sendersPerRoom = 1
    idle.window = 1
    idle.stopAfterFirstEcho = true
    // A probe is re-sent only after 30 s without its echo: under a slow server, quicker retries only pile on load.
    idle.echoTimeout = max(o.echoTimeout, 30)
    idle.rate = nil
    // The probes are staggered over count / probe rate seconds; each socket then has 15 s to answer.
    idle.duration = max(o.duration, Double(count) / o.probeRate + 15)
    // Connections are paced (each joins its room after its handshake); the last joins get `--hold` to land.
    idle.connectRate = o.connectRate ?? 1000
    idle.settle = o.hold
    let before = o.pids.first.map(ProcessStats.rssKiB) ?? 0
    var report = try await runLoad(idle, rate: nil)
    report.mode = "idle"
    report.shape = "idle \(count) connections, one per room, opened at \(Int(idle.connectRate ?? 0))/s, held \(Int(idle.settle)) s"
    report.idleConnectionsAnswering = report.connectionsReceiving
    if report.connectionsOpened > 0, o.pids.first != nil {
        report.serverRSSPerConnectionKiB = Double(report.firstServerRSSAtStartKiB - before) / Double(report.connectionsOpened)
        report.serverRSSPerConnectionAfterMessageKiB = Double(report.firstServerRSSAtEndKiB - before) / Double(report.connectionsOpened)
    }
    return report
}

var reports: [Report] = []
do {
    if let count = options.idle {
        reports.append(try await runIdle(options, count: count))
    } else if !options.sweep.isEmpty {
        var saturation: Report? = nil
        for rate in options.sweep {
            let report = try await runLoad(options, rate: rate)
            report.printTable()
            reports.append(report)
            if report.clean && report.latencyP99Ms <= options.p99LimitMs { saturation = report } else { break }
        }
        if let s = saturation {
            print(String(format: "SATURATION %@: %.0f deliveries/s at %.1f msg/s per sender (p99 %.1f ms, 0 lost)",
                         shapeName(options), s.deliveriesPerSecond, s.ratePerSender ?? 0, s.latencyP99Ms))
        } else {
            print("SATURATION \(shapeName(options)): none of the rates ran clean")
        }
    } else {
        reports.append(try await runLoad(options, rate: options.window == nil ? options.rate : nil))
    }
} catch {
    fail("\(error)")
}
if options.sweep.isEmpty { reports.forEach { $0.printTable() } }
if let path = options.json {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(reports).write(to: URL(fileURLWithPath: path))
}
try? await group.shutdownGracefully()
