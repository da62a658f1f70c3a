import AMQPClient
import Logging
import NIOCore
import ServiceLifecycle

/// How the services answer requests on a queue: up to `maxConcurrent` at once (a burst of joins must not queue
/// behind one another past the gateways' timeout), each acked once answered, until graceful shutdown.
package func answerConcurrently(_ consumer: AMQPConsumer, maxConcurrent: Int,
                                _ answer: @escaping @Sendable (AMQPDelivery) async -> Void) async {
    await withTaskGroup(of: Void.self) { group in
        var running = 0
        for await delivery in consumer.cancelOnGracefulShutdown() {
            if running >= maxConcurrent {
                await group.next()
                running -= 1
            }
            group.addTask {
                await answer(delivery)
                delivery.ack()
            }
            running += 1
        }
    }
}

extension AMQPConnection {
    /// Publishes a reply without waiting for its confirm: a lost reply is the requester's timeout, and waiting
    /// would hold the next request.
    package func sendReply(_ reply: AMQPOutgoingMessage?, logger: Logger) {
        guard let reply else { return }
        publishPipelined([reply]).onFailure { error in
            logger.warning("reply not confirmed", metadata: ["error": "\(error)"])
        }
    }
}
