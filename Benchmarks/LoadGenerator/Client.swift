import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import Synchronization

/// Runs one client: connect, wait for the start, send on schedule (if a sender), record every frame, and
/// close when the run stops.
struct ClientRunner: Sendable {
    let plan: ClientPlan
    let options: Options
    let runID: String
    let start: Gate
    let stop: Gate
    let progress: Progress
    let group: any EventLoopGroup
    let rate: Double?

    func run() async -> ClientResult {
        var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20)
        // swift-websocket's client always sends `Origin: ws://<host>`; a second Origin header would make the
        // request ambiguous (the reference refuses it), so that one is the Origin this generator sends.
        configuration.autoPing = .disabled
        let result = ResultBox()
        var logger = Logger(label: "client")
        logger.logLevel = .critical
        do {
            try await WebSocketClient.connect(url: plan.url, configuration: configuration, eventLoopGroup: group, logger: logger) {
                inbound, outbound, _ in
                result.withLock { $0.connected = true }
                progress.connected.add(1, ordering: .relaxed)
                let (echoStream, echoContinuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .unbounded)
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask {
                        await stop.wait()
                        try? await outbound.close(.normalClosure, reason: nil)
                    }
                    if let sender = plan.sender {
                        tasks.addTask {
                            await start.wait()
                            let (sent, lag) = await sendLoop(sender: sender, outbound: outbound, echoes: echoStream)
                            result.withLock {
                                $0.sent = sent
                                $0.scheduleLagMaxMs = lag
                            }
                        }
                    }
                    // The receive loop runs here, until the server or the stop watcher closes the socket.
                    var local = ClientResult()
                    var seen: [Int: [UInt8]] = [:]
                    var last: [Int: Int] = [:]
                    do {
                        for try await message in inbound.messages(maxSize: 1 << 20) {
                            guard case .text(let text) = message else { continue }
                            guard let d = parseDelivery(text), d.runID == runID else {
                                if text.contains("\"error\"") {
                                    if local.errors == 0 { ErrorSamples.record(text) }
                                    local.errors += 1
                                }
                                continue
                            }
                            let now = nowNanos()
                            if d.room != plan.room { local.misrouted += 1; continue }
                            var counts = seen[d.sender, default: []]
                            if counts.count <= d.n { counts.append(contentsOf: repeatElement(0, count: d.n - counts.count + 16)) }
                            counts[d.n] &+= 1
                            seen[d.sender] = counts
                            if counts[d.n] > 1 { local.duplicates += 1; continue }
                            if let l = last[d.sender], d.n < l { local.orderViolations += 1 }
                            last[d.sender] = max(last[d.sender] ?? -1, d.n)
                            local.received += 1
                            local.latenciesMicros.append(UInt32(min((now &- d.sentAt) / 1000, UInt64(UInt32.max))))
                            progress.received.add(1, ordering: .relaxed)
                            if d.sender == plan.sender { echoContinuation.yield() }
                        }
                    } catch {}
                    echoContinuation.finish()
                    let final = local
                    result.withLock { r in
                        r.received = final.received
                        r.duplicates = final.duplicates
                        r.misrouted = final.misrouted
                        r.orderViolations = final.orderViolations
                        r.errors = final.errors
                        r.latenciesMicros = final.latenciesMicros
                    }
                    if !stop.isOpen {
                        // The server closed the socket before the run ended: keep the sender's count, stop it.
                        try? await Task.sleep(for: .milliseconds(1))
                    }
                    await stop.wait()
                    tasks.cancelAll()
                }
            }
        } catch {
            if !result.withLock({ $0.connected }) {
                if progress.failed.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
                    FileHandle.standardError.write(Data("LoadGenerator: first failed connection (\(plan.url)): \(error)\n".utf8))
                }
            }
        }
        return result.withLock { $0 }
    }

    func frame(_ n: Int, sender: Int) -> String {
        let text = "\(runID)|\(plan.room)|\(sender)|\(n)|\(nowNanos())"
        if options.protocolKind == "consult" {
            return "{\"message\":\"\(text)\",\"sender_email\":\"\(plan.consultEmail!)\",\"shop_user_email\":\"\(plan.shopEmail!)\",\"visitor_user_email\":\"\(plan.visitorEmail!)\"}"
        }
        return "{\"message\":\"\(text)\"}"
    }

    /// Open loop: message i goes at start + offset + i/rate whatever came back. Closed loop: at most
    /// `window` of this sender's messages unechoed. Both stop at the end of the duration, or when the run
    /// stops them (cancelled) or the socket closes, and return how many were sent either way.
    func sendLoop(sender: Int, outbound: WebSocketOutboundWriter, echoes: AsyncStream<Void>) async -> (Int, Double) {
        var n = 0
        var lagMax = 0.0
        do {
            try await sendLoop(sender: sender, outbound: outbound, echoes: echoes, sent: &n, lagMax: &lagMax)
        } catch {}
        return (n, lagMax)
    }

    private func sendLoop(sender: Int, outbound: WebSocketOutboundWriter, echoes: AsyncStream<Void>,
                          sent n: inout Int, lagMax: inout Double) async throws {
        let clock = ContinuousClock()
        let begin = start.instant ?? clock.now
        let end = begin + .milliseconds(Int(options.duration * 1000))
        if let rate {
            let interval = Duration.nanoseconds(Int64(1e9 / rate))
            let offset = Duration.nanoseconds(Int64(Double.random(in: 0..<1) * 1e9 / rate))
            while true {
                let due = begin + offset + interval * n
                if due >= end { break }
                if due > clock.now { try await Task.sleep(until: due, clock: clock) }
                let lag = clock.now - due
                lagMax = max(lagMax, Double(lag.components.attoseconds) / 1e15 + Double(lag.components.seconds) * 1000)
                try await outbound.write(.text(frame(n, sender: sender)))
                n += 1
            }
        } else if let window = options.window {
            // Echoes arrive through a buffered stream; a window with no echo for `echoTimeout` is written off
            // (the loss shows in the counts) and the sender goes on.
            let echoCount = Atomic<Int>(0)
            let counter = Task {
                for await _ in echoes { echoCount.add(1, ordering: .relaxed) }
            }
            defer { counter.cancel() }
            var credited = 0
            if options.stopAfterFirstEcho {
                // Idle probes are staggered (socket i starts at i / probe rate): a check that every socket answers
                // must not turn into a burst of thousands of messages at once.
                let due = begin + .nanoseconds(Int64(Double(plan.index) / options.probeRate * 1e9))
                if due > clock.now { try await Task.sleep(until: due, clock: clock) }
            }
            var waitingSince = clock.now
            while clock.now < end {
                if options.stopAfterFirstEcho && echoCount.load(ordering: .relaxed) > 0 { break }
                let outstanding = n - credited - echoCount.load(ordering: .relaxed)
                if outstanding < window {
                    try await outbound.write(.text(frame(n, sender: sender)))
                    n += 1
                    waitingSince = clock.now
                } else if clock.now - waitingSince > .milliseconds(Int(options.echoTimeout * 1000)) {
                    credited += outstanding
                    waitingSince = clock.now
                } else {
                    // Idle probes sleep out the whole timeout: thousands of sockets polling every millisecond
                    // would starve the generator itself.
                    try await Task.sleep(for: options.stopAfterFirstEcho ? .milliseconds(Int(options.echoTimeout * 1000)) : .milliseconds(1))
                }
            }
        }
    }
}

/// One client's result, written by its receive and send tasks.
final class ResultBox: Sendable {
    private let value = Mutex(ClientResult())
    func withLock<T>(_ body: (inout ClientResult) -> T) -> T { value.withLock { body(&$0) } }
}

/// The first few distinct error frames of a run, printed to stderr at its end (what the errors were).
enum ErrorSamples {
    private static let samples = Mutex<[String: Int]>([:])

    static func record(_ text: String) {
        samples.withLock { s in
            if s[text] != nil || s.count < 5 { s[text, default: 0] += 1 }
        }
    }

    static func report() {
        let all = samples.withLock { s in defer { s = [:] }; return s }
        for (text, count) in all.sorted(by: { $0.value > $1.value }) {
            FileHandle.standardError.write(Data("LoadGenerator: error frame (first of a socket, \(count)×): \(text.prefix(200))\n".utf8))
        }
    }
}
