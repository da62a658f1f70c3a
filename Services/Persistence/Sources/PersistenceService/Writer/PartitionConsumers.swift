import AMQPClient
import Logging
import Synchronization

/// A delivery with the partition consumer it came from.
struct PartitionDelivery: Sendable {
    let partition: Int
    /// Which acquisition of the partition it came with: deliveries of a partition released since are skipped.
    let token: Int
    let delivery: AMQPDelivery
}

/// The writer's first stage: consumes the partitions it is told to, gathering their deliveries for the next
/// batch. A partition is handed over by releasing its consumer (``PartitionConsumer/release()``), so that what
/// was held goes back to its place in the queue and the next owner cannot overtake it (docs/amqp-topology.md).
final class PartitionConsumers: Sendable {
    struct Held {
        let token: Int
        let consumer: any PartitionConsumer
    }
    private struct State {
        var held: [Int: Held] = [:]
        var nextToken = 1
        var stopped = false
    }
    private let state = Mutex(State())
    let broker: any PersistenceBroker
    let prefetch: Int
    let gathered = Gathering<PartitionDelivery>()
    let logger: Logger
    /// Told the partitions held after every change.
    let onOwnership: @Sendable (Set<Int>) -> Void

    init(broker: any PersistenceBroker, prefetch: Int, logger: Logger, onOwnership: @escaping @Sendable (Set<Int>) -> Void) {
        self.broker = broker
        self.prefetch = prefetch
        self.logger = logger
        self.onOwnership = onOwnership
    }

    /// Everything delivered since the previous call (waiting for something), or nil once stopped and drained.
    func next() async -> [PartitionDelivery]? {
        await gathered.next()
    }

    /// The tokens of the partitions held now: a delivery with another one came from a consumer released since.
    var liveTokens: Set<Int> { state.withLock { s in Set(s.held.values.map(\.token)) } }

    var owned: [Int] { state.withLock { $0.held.keys.sorted() } }

    /// Consumes exactly the partitions in `mine`: starts consumers for the new ones (each waits, as the queue's
    /// single active consumer, until the previous owner has let go) and releases the others. Only enqueues
    /// commands on the broker, so it may run on any thread, the connection's own included.
    func reconcile(_ mine: Set<Int>) {
        let (released, acquired, owned) = state.withLock { s -> ([Int], [Int], Set<Int>) in
            if s.stopped { return ([], [], []) }
            let released = s.held.keys.filter { !mine.contains($0) }.sorted()
            for partition in released {
                s.held[partition]?.consumer.release()
                s.held[partition] = nil
            }
            var acquired: [Int] = []
            for partition in mine.sorted() where s.held[partition] == nil {
                let token = s.nextToken
                s.nextToken += 1
                let gathered = self.gathered
                let consumer = broker.consume(
                    partition: partition, prefetch: prefetch,
                    deliver: { batch in gathered.append(batch.map { PartitionDelivery(partition: partition, token: token, delivery: $0) }) },
                    finished: { [weak self] in self?.consumerEnded(partition: partition, token: token) })
                s.held[partition] = Held(token: token, consumer: consumer)
                acquired.append(partition)
            }
            return (released, acquired, Set(s.held.keys))
        }
        onOwnership(owned)
        if !released.isEmpty || !acquired.isEmpty {
            logger.info("partitions moved", metadata: ["partitions.released": "\(released)", "partitions.acquired": "\(acquired)",
                                                       "partitions.owned": "\(owned.sorted())"])
        }
    }

    /// A consumer the broker or the connection ended (not one released here): the next reconcile starts it again.
    private func consumerEnded(partition: Int, token: Int) {
        let owned = state.withLock { s in
            if s.held[partition]?.token == token { s.held[partition] = nil }
            return Set(s.held.keys)
        }
        onOwnership(owned)
    }

    /// Stops consuming: releases every partition at once (what is not acknowledged yet goes back in place, and is
    /// stored already or not: either way idempotent) and ends the gathering once what it holds is taken.
    func stop() {
        let held = state.withLock { s -> [Int: Held] in
            s.stopped = true
            defer { s.held = [:] }
            return s.held
        }
        onOwnership([])
        for (_, partition) in held { partition.consumer.release() }
        gathered.finish()
    }
}
