import Foundation
import NIOCore
import Synchronization

/// Request/reply over AMQP: publishes a request with `reply_to` = this process's queue and a fresh
/// correlation id, and resumes the caller when the reply with that id arrives (or after a timeout).
/// The owner of the reply queue hands every delivery with a correlation id to ``handleReply(_:)``.
public final class AMQPRequester: Sendable {
    let connection: AMQPConnection
    let replyQueue: String
    private let pending = Mutex<[String: CheckedContinuation<AMQPDelivery, any Error>]>([:])
    private let counter = Atomic<Int>(0)

    public init(connection: AMQPConnection, replyQueue: String) {
        self.connection = connection
        self.replyQueue = replyQueue
    }

    public func request(exchange: String = "", routingKey: String, body: ByteBuffer, timeout: Duration) async throws -> AMQPDelivery {
        let id = "\(replyQueue).\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
        let message = AMQPOutgoingMessage(
            exchange: exchange, routingKey: routingKey, body: body,
            properties: AMQPProperties(correlationID: id, replyTo: replyQueue, expiration: String(timeout.components.seconds * 1000)),
            mandatory: true)
        return try await withThrowingTaskGroup(of: AMQPDelivery.self) { group in
            group.addTask {
                try await withCheckedThrowingContinuation { continuation in
                    self.pending.withLock { $0[id] = continuation }
                    Task {
                        do { try await self.connection.publish(message) } catch { self.fail(id, error) }
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                self.fail(id, AMQPError.timeout)
                throw AMQPError.timeout
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    /// Sends a reply to a request delivery.
    public static func reply(to request: AMQPDelivery, body: ByteBuffer, headers: AMQPTable = [:]) -> AMQPOutgoingMessage? {
        guard let replyTo = request.properties.replyTo, let id = request.properties.correlationID else { return nil }
        return AMQPOutgoingMessage(exchange: "", routingKey: replyTo, body: body,
                                   properties: AMQPProperties(correlationID: id, headers: headers))
    }

    public func handleReply(_ delivery: AMQPDelivery) {
        guard let id = delivery.properties.correlationID else { return }
        pending.withLock { $0.removeValue(forKey: id) }?.resume(returning: delivery)
    }

    private func fail(_ id: String, _ error: any Error) {
        pending.withLock { $0.removeValue(forKey: id) }?.resume(throwing: error)
    }
}
