import Foundation
import NIOCore
import Synchronization

/// Request/reply over AMQP: publishes a request with `reply_to` = this process's queue and a fresh
/// correlation id, and resumes the caller when the reply with that id arrives (or after a timeout).
/// The owner of the reply queue hands every delivery with a correlation id to ``handleReply(_:)``.
///
/// A request costs its slot and its caller's continuation: no task group, child task or timer per request
/// (they were most of a gateway's memory while 10,000 sockets opened at once, docs/benchmarks.md, "Issue 19",
/// memory). Timeouts are found by one sweeper task that runs only while requests are pending.
package final class AMQPRequester: Sendable {
    let connection: AMQPConnection
    let replyQueue: String
    /// A request's slot: open from before its publish, replied when the reply came before its caller waited,
    /// waiting once its caller's continuation is there, failed when a timeout or a cancellation came first
    /// (the caller then throws as soon as it waits).
    private enum Slot {
        case open
        case replied(AMQPDelivery)
        case waiting(CheckedContinuation<AMQPDelivery, any Error>)
        case failed(any Error)
    }
    private struct Entry {
        var slot: Slot
        let deadline: ContinuousClock.Instant
    }
    private struct State {
        var entries: [String: Entry] = [:]
        var sweeping = false
    }
    private let state = Mutex(State())
    private let counter = Atomic<Int>(0)
    /// How often the sweeper looks for requests past their deadline: a timeout ends up to this much late.
    static let sweepInterval = Duration.milliseconds(20)

    package init(connection: AMQPConnection, replyQueue: String) {
        self.connection = connection
        self.replyQueue = replyQueue
    }

    /// The request's AMQP `expiration`: its timeout in whole milliseconds, at least 1 (a reply after the
    /// timeout is useless, so the broker may drop the request then).
    static func expiration(_ timeout: Duration) -> String {
        let (seconds, attoseconds) = timeout.components
        return String(max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    /// Publishes a request and waits for its reply; throws ``AMQPError/timeout`` after `timeout`, and
    /// `CancellationError` at once when the caller is cancelled.
    package func request(exchange: String = "", routingKey: String, body: ByteBuffer, timeout: Duration) async throws -> AMQPDelivery {
        let id = "\(replyQueue).\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
        let message = AMQPOutgoingMessage(
            exchange: exchange, routingKey: routingKey, body: body,
            properties: AMQPProperties(correlationID: id, replyTo: replyQueue, expiration: Self.expiration(timeout)),
            mandatory: true)
        let startSweeper = state.withLock { state -> Bool in
            state.entries[id] = Entry(slot: .open, deadline: .now + timeout)
            defer { state.sweeping = true }
            return !state.sweeping
        }
        if startSweeper { Task { await self.sweep() } }
        return try await withTaskCancellationHandler {
            if !Task.isCancelled {
                do {
                    try await connection.publish(message)
                } catch {
                    _ = state.withLock { $0.entries.removeValue(forKey: id) }
                    throw error
                }
            }
            return try await withCheckedThrowingContinuation { continuation in
                self.wait(id, continuation)
            }
        } onCancel: {
            self.fail(id, CancellationError())
        }
    }

    private func wait(_ id: String, _ continuation: CheckedContinuation<AMQPDelivery, any Error>) {
        let outcome = state.withLock { state -> Result<AMQPDelivery, any Error>? in
            switch state.entries[id]?.slot {
            case .open: state.entries[id]!.slot = .waiting(continuation); return nil
            case .replied(let delivery): state.entries[id] = nil; return .success(delivery)
            case .failed(let error): state.entries[id] = nil; return .failure(error)
            case .waiting, .none: state.entries[id] = nil; return .failure(CancellationError())
            }
        }
        if let outcome { continuation.resume(with: outcome) }
    }

    /// Fails every request past its deadline, while any is pending; ends when none is.
    private func sweep() async {
        while true {
            // The sweeper is never cancelled; it ends when no request is pending.
            try? await Task.sleep(for: Self.sweepInterval)
            let now = ContinuousClock.now
            let expired = state.withLock { state -> [CheckedContinuation<AMQPDelivery, any Error>]? in
                if state.entries.isEmpty {
                    state.sweeping = false
                    return nil
                }
                var expired: [CheckedContinuation<AMQPDelivery, any Error>] = []
                for (id, entry) in state.entries where entry.deadline <= now {
                    switch entry.slot {
                    case .waiting(let continuation): state.entries[id] = nil; expired.append(continuation)
                    case .open: state.entries[id]!.slot = .failed(AMQPError.timeout)
                    case .replied, .failed: break
                    }
                }
                return expired
            }
            guard let expired else { return }
            for continuation in expired { continuation.resume(throwing: AMQPError.timeout) }
        }
    }

    /// The AMQP `type` of every reply: what tells it apart on the requester's queue.
    package static let replyType = "chat.reply"

    /// Sends a reply to a request delivery.
    package static func reply(to request: AMQPDelivery, body: ByteBuffer, headers: AMQPTable = [:]) -> AMQPOutgoingMessage? {
        guard let replyTo = request.properties.replyTo, let id = request.properties.correlationID else { return nil }
        return AMQPOutgoingMessage(exchange: "", routingKey: replyTo, body: body,
                                   properties: AMQPProperties(correlationID: id, type: replyType, headers: headers))
    }

    /// Resumes the request this reply answers (a reply to no pending request, a late one, is dropped).
    package func handleReply(_ delivery: AMQPDelivery) {
        guard let id = delivery.properties.correlationID else { return }
        let continuation = state.withLock { state -> CheckedContinuation<AMQPDelivery, any Error>? in
            switch state.entries[id]?.slot {
            case .waiting(let continuation): state.entries[id] = nil; return continuation
            case .open: state.entries[id]!.slot = .replied(delivery); return nil
            case .replied, .failed, .none: return nil
            }
        }
        continuation?.resume(returning: delivery)
    }

    private func fail(_ id: String, _ error: any Error) {
        let continuation = state.withLock { state -> CheckedContinuation<AMQPDelivery, any Error>? in
            switch state.entries[id]?.slot {
            case .waiting(let continuation): state.entries[id] = nil; return continuation
            case .open, .replied: state.entries[id]!.slot = .failed(error); return nil
            case .failed, .none: return nil
            }
        }
        continuation?.resume(throwing: error)
    }

    /// Requests not yet answered or failed (for tests).
    var pendingCount: Int { state.withLock { $0.entries.count } }
}
