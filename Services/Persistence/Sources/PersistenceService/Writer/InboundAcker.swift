import AMQPClient
import Logging
import Synchronization

/// The writer's last stage: acknowledges each handled batch's inbound deliveries, in batch order.
///
/// The store has a batch (synced) before it gets here, so the broker need not keep it any more: a batch without
/// dead letters is acknowledged at once, in the same pass as its broadcast, without waiting for that confirm
/// (a broadcast lost now is a client ack lost with it, and the client's resend broadcasts the stored row again).
/// Dead letters are the broker's to keep: a batch with some waits for their confirm, and every batch after it
/// waits behind it, since a multiple ack covers the earlier deliveries of its consumer.
final class InboundAcker: Sendable {
    struct Pending: Sendable {
        let confirmation: AMQPConfirmation
        let deliveries: [AMQPDelivery]
    }
    let broker: any PersistenceBroker
    let logger: Logger
    private let waiting = Mutex(0)
    private let queue: AsyncStream<Pending>
    private let continuation: AsyncStream<Pending>.Continuation

    init(broker: any PersistenceBroker, logger: Logger) {
        self.broker = broker
        self.logger = logger
        (queue, continuation) = AsyncStream<Pending>.makeStream(bufferingPolicy: .unbounded)
    }

    /// Acknowledges `deliveries` now, or once `confirmation` completes when `mustConfirm` or a batch before
    /// them still waits. Returns whether they were acknowledged at once.
    @discardableResult
    func settle(_ deliveries: [AMQPDelivery], confirmation: AMQPConfirmation, mustConfirm: Bool) -> Bool {
        let direct = waiting.withLock { count in
            if !mustConfirm && count == 0 { return true }
            count += 1
            return false
        }
        if direct {
            broker.acknowledge(deliveries)
        } else {
            continuation.yield(Pending(confirmation: confirmation, deliveries: deliveries))
        }
        return direct
    }

    /// Batches waiting for their confirm.
    var awaitingConfirm: Int { waiting.withLock { $0 } }

    /// Acknowledges the waiting batches in order as they are confirmed, until ``finish()`` and the last of them.
    /// One whose publish failed is requeued: it is stored already, so its redelivery is broadcast again with
    /// the same seqs.
    func run() async {
        for await batch in queue {
            do {
                try await batch.confirmation.wait()
                broker.acknowledge(batch.deliveries)
            } catch {
                logger.warning("dead letters not confirmed; the batch will be redelivered", metadata: ["error": "\(error)"])
                broker.requeue(batch.deliveries)
            }
            waiting.withLock { $0 -= 1 }
        }
    }

    /// No more batches: ``run()`` returns once the waiting ones are settled.
    func finish() {
        continuation.finish()
    }
}
