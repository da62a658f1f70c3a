import Foundation

/// The figures of one run.
struct Report: Codable, Sendable {
    var label: String
    var mode: String
    var url: String
    var shape: String
    var ratePerSender: Double?
    var window: Int?
    var connectionsOpened = 0
    var connectionsFailed = 0
    var messagesSent = 0
    var deliveriesExpected = 0
    var deliveriesReceived = 0
    var lost = 0
    var duplicated = 0
    var misrouted = 0
    var orderViolations = 0
    var errorFrames = 0
    var latencyP50Ms = 0.0
    var latencyP90Ms = 0.0
    var latencyP99Ms = 0.0
    var latencyMaxMs = 0.0
    var deliveriesPerSecond = 0.0
    var offeredMessagesPerSecond = 0.0
    var sendSeconds = 0.0
    var serverCPUSeconds = 0.0
    var serverCPUPercent = 0.0
    /// The server CPU seconds of the run, process by process (the order of `--pids`).
    var serverCPUSecondsByProcess: [ProcessCPU] = []
    var serverPeakRSSMiB = 0.0
    /// The peak of the servers' summed PSS: their shared libraries counted once.
    var serverPeakPSSMiB = 0.0
    var generatorCPUPercent = 0.0
    var generatorThreads = 0
    var scheduleLagMaxMs = 0.0
    // Idle mode
    var idleConnectionsAnswering: Int?
    var connectionsReceiving = 0
    /// RSS of the first server PID when the load started (after connecting and settling).
    var firstServerRSSAtStartKiB = 0
    var serverRSSPerConnectionKiB: Double?
    /// RSS of the first server PID at the end of the run, every connection still open (idle mode: each has
    /// received its probe's echo by then).
    var firstServerRSSAtEndKiB = 0
    var serverRSSPerConnectionAfterMessageKiB: Double?

    var clean: Bool { lost == 0 && duplicated == 0 && misrouted == 0 && orderViolations == 0 && connectionsFailed == 0 }

    func printTable() {
        func row(_ k: String, _ v: String) { print("  " + k.padding(toLength: 34, withPad: " ", startingAt: 0) + v) }
        print("== \(label.isEmpty ? url : label) — \(shape) — \(mode)\(ratePerSender.map { " at \($0) msg/s per sender" } ?? "")\(window.map { " window \($0)" } ?? "")")
        row("connections opened / failed", "\(connectionsOpened) / \(connectionsFailed)")
        if let answering = idleConnectionsAnswering {
            row("connections answering", "\(answering)")
            row("server RSS per connection", String(format: "%.1f KiB", serverRSSPerConnectionKiB ?? 0))
            row("... after each received a message", String(format: "%.1f KiB", serverRSSPerConnectionAfterMessageKiB ?? 0))
        }
        row("messages sent", "\(messagesSent) (\(String(format: "%.0f", offeredMessagesPerSecond))/s offered)")
        row("deliveries expected / received", "\(deliveriesExpected) / \(deliveriesReceived)")
        row("lost / duplicated / misrouted", "\(lost) / \(duplicated) / \(misrouted)")
        row("order violations / error frames", "\(orderViolations) / \(errorFrames)")
        row("latency p50 / p90 / p99 / max", String(format: "%.1f / %.1f / %.1f / %.1f ms", latencyP50Ms, latencyP90Ms, latencyP99Ms, latencyMaxMs))
        row("delivered messages per second", String(format: "%.0f", deliveriesPerSecond))
        row("server CPU", String(format: "%.1f s (%.0f%% of one core)", serverCPUSeconds, serverCPUPercent))
        if serverCPUSecondsByProcess.count > 1 {
            row("  by process", serverCPUSecondsByProcess.map { String(format: "%@ %.2f s", $0.name, $0.seconds) }.joined(separator: ", "))
        }
        let switches = serverCPUSecondsByProcess.compactMap(\.contextSwitches)
        if !switches.isEmpty, messagesSent > 0 {
            let perMessage = serverCPUSecondsByProcess.map { String(format: "%@ %.2f", $0.name, Double($0.contextSwitches ?? 0) / Double(messagesSent)) }
            row("context switches per message", String(format: "%.2f (%@)", Double(switches.reduce(0, +)) / Double(messagesSent), perMessage.joined(separator: ", ")))
        }
        row("server peak RSS / PSS", String(format: "%.1f / %.1f MiB", serverPeakRSSMiB, serverPeakPSSMiB))
        row("generator CPU (threads)", String(format: "%.0f%% of one core (%d event loops); max schedule lag %.1f ms", generatorCPUPercent, generatorThreads, scheduleLagMaxMs))
    }
}

/// One server process's CPU seconds over a run.
struct ProcessCPU: Codable, Sendable {
    var pid: Int32
    var name: String
    var seconds: Double
    /// Context switches of all its threads over the run.
    var contextSwitches: Int? = nil
}

func percentile(_ sorted: [UInt32], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let index = min(sorted.count - 1, Int((p * Double(sorted.count - 1)).rounded()))
    return Double(sorted[index]) / 1000
}
