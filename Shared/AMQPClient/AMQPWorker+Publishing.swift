import CRabbitMQ
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Publishing on the control channel and matching the broker's confirms (and returns) to their callers.
extension AMQPWorker {
    // MARK: Publishing

    func publish(_ messages: [AMQPOutgoingMessage], batch: ConfirmBatch) throws(Failure) {
        for message in messages {
            let tag = confirms.register(batch)
            let status = withArena { arena -> Int32 in
                var properties = message.properties
                if message.mandatory {
                    properties.headers[Self.publishTagHeader] = .int(Int64(tag))
                }
                var props = arena.properties(properties)
                return message.body.withUnsafeReadableBytes { raw in
                    let body = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
                    return amqp_basic_publish(conn, Self.publishChannel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
                                              message.mandatory ? 1 : 0, 0, &props, body)
                }
            }
            if status != AMQP_STATUS_OK.rawValue {
                throw .connection("basic.publish: \(String(cString: amqp_error_string2(status)))")
            }
        }
        AMQPMetrics.publishes.increment(by: messages.count)
    }

    func failPendingConfirms(_ error: AMQPError) {
        let failed = confirms.failAll(error)
        if failed > 0 { logger.debug("failed pending confirms", metadata: ["batches": "\(failed)"]) }
    }
}

/// The caller waiting for the confirms of one `publish` call (a continuation, or a pipelined confirmation).
final class ConfirmBatch {
    var remaining: Int
    var failure: AMQPError?
    var returnedError: AMQPError?
    private var continuation: CheckedContinuation<Void, any Error>?
    private var confirmation: AMQPConfirmation?

    init(remaining: Int, continuation: CheckedContinuation<Void, any Error>) {
        self.remaining = remaining
        self.continuation = continuation
    }

    init(remaining: Int, confirmation: AMQPConfirmation) {
        self.remaining = remaining
        self.confirmation = confirmation
    }

    func finish() {
        let result: Result<Void, AMQPError> = failure.map { .failure($0) } ?? .success(())
        if let continuation {
            self.continuation = nil
            continuation.resume(with: result.mapError { $0 as any Error })
        }
        if let confirmation {
            self.confirmation = nil
            confirmation.complete(result)
        }
    }
}
