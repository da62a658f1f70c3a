import Foundation
import NIOCore
import Synchronization

/// Request/reply over AMQP: publishes a request with `reply_to` = this process's queue and a fresh
/// correlation id, and resumes the caller when the reply with that id arrives (or after a timeout).
/// The owner of the reply queue hands every delivery with a correlation id to ``handleReply(_:)``.
package final class AMQPRequester: Sendable {
    let connection: AMQPConnection
    let replyQueue: String
    /// A request's slot: open from before its publish, waiting once its caller's continuation is there, failed
    /// when a timeout or a cancellation came first (the continuation is then resumed as soon as it arrives).
    private enum Slot {
        case open
        case waiting(CheckedContinuation<AMQPDelivery, any Error>)
        case failed(any Error)
    }
    private let pending = Mutex<[String: Slot]>([:])
    private let counter = Atomic<Int>(0)

    package init(connection: AMQPConnection, replyQueue: String) {
        self.connection = connection
        self.replyQueue = replyQueue
    }

    /// Publishes a request and waits for its reply; throws ``AMQPError/timeout`` after `timeout`, and
    /// `CancellationError` at once when the caller is cancelled.
    package func request(exchange: String = "", routingKey: String, body: ByteBuffer, timeout: Duration) async throws -> AMQPDelivery {
        let id = "\(replyQueue).\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
        let message = AMQPOutgoingMessage(
            exchange: exchange, routingKey: routingKey, body: body,
            properties: AMQPProperties(correlationID: id, replyTo: replyQueue, expiration: String(timeout.components.seconds * 1000)),
            mandatory: true)
        pending.withLock { $0[id] = .open }
        return try await withTaskCancellationHandler {
            try await withThrowingTaskGroup(of: AMQPDelivery.self) { group in
                group.addTask {
                    try await withCheckedThrowingContinuation { continuation in
                        self.wait(id, continuation)
                        Task {
                            do { try await self.connection.publish(message) } catch { self.fail(id, error) }
                        }
                    }
                }
                group.addTask {
                    // Cancelled (the reply came, or the caller was cancelled): the slot is settled either way.
                    try? await Task.sleep(for: timeout)
                    let error: any Error = Task.isCancelled ? CancellationError() : AMQPError.timeout
                    self.fail(id, error)
                    throw error
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } onCancel: {
            self.fail(id, CancellationError())
        }
    }

    private func wait(_ id: String, _ continuation: CheckedContinuation<AMQPDelivery, any Error>) {
        let failure = pending.withLock { slots -> (any Error)? in
            switch slots[id] {
            case .open: slots[id] = .waiting(continuation); return nil
            case .failed(let error): slots[id] = nil; return error
            case .waiting, .none: slots[id] = nil; return CancellationError()
            }
        }
        if let failure { continuation.resume(throwing: failure) }
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
        settle(id)?.resume(returning: delivery)
    }

    private func fail(_ id: String, _ error: any Error) {
        settle(id, failing: error)?.resume(throwing: error)
    }

    /// Takes a waiting request's continuation; marks an open one failed with `error` (when given).
    private func settle(_ id: String, failing error: (any Error)? = nil) -> CheckedContinuation<AMQPDelivery, any Error>? {
        pending.withLock { slots in
            switch slots[id] {
            case .waiting(let continuation): slots[id] = nil; return continuation
            case .open: if let error { slots[id] = .failed(error) }; return nil
            case .failed, .none: return nil
            }
        }
    }

    /// Requests not yet answered or failed (for tests).
    var pendingCount: Int { pending.withLock { $0.count } }
}
