import AMQPClient
import ChatProtocol
import Hummingbird
import Logging
import ServiceKit
import ServiceLifecycle
import Synchronization

/// The persistence service's writer, as stages: ``PartitionConsumers`` gathers what the partitions this worker
/// owns deliver → ``InboundBatch`` decodes it → ``BatchStorer`` stores it in one synced transaction (isolating a
/// message the database refuses) → ``BatchPublisher`` publishes its ``DeliveryBatch`` (broadcasts and client acks
/// together) → ``InboundAcker`` acknowledges the inbound. A crash before the ack makes the broker redeliver; the
/// store is idempotent on the message id and gateways drop a seq they have already delivered, so a redelivery
/// neither duplicates a row nor a delivery.
///
/// Everything delivered while a batch is being stored makes the next batch (one transaction, one broadcast per
/// room), so batches grow with the load instead of the transaction count. Which partitions it owns is the
/// ``PartitionAssignment``'s call. At shutdown it releases every partition, finishes the batch in hand and
/// settles every acknowledgement before it returns.
final class MessageWriter: Service {
    let broker: any PersistenceBroker
    let store: any BatchStore
    let migrate: @Sendable () async throws -> Void
    let configuration: PersistenceConfiguration
    let readiness: Readiness
    let writerLock: WriterLock?
    let logger: Logger
    let assignment: any PartitionAssignment
    let consumers: PartitionConsumers
    let storer: BatchStorer
    let publisher: BatchPublisher
    let acker: InboundAcker
    let metrics: PersistenceMetrics

    struct Counts {
        var stored = 0
        var storedByPartition: [Int: Int] = [:]
        var deadLetters = 0
        var batches = 0
    }
    private let counts = Mutex(Counts())

    init(broker: any PersistenceBroker, store: any BatchStore, migrate: @escaping @Sendable () async throws -> Void,
         assignment: any PartitionAssignment, configuration: PersistenceConfiguration, readiness: Readiness,
         writerLock: WriterLock?, logger: Logger) {
        self.broker = broker
        self.store = store
        self.migrate = migrate
        self.assignment = assignment
        self.configuration = configuration
        self.readiness = readiness
        self.writerLock = writerLock
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.inboundExchange)
        self.logger = logger
        let metrics = PersistenceMetrics(partitions: configuration.partitions)
        self.metrics = metrics
        metrics.ownership([])
        self.consumers = PartitionConsumers(broker: broker, prefetch: configuration.prefetch, logger: logger,
                                            onOwnership: { metrics.ownership($0) })
        self.storer = BatchStorer(store: store, logger: logger)
        self.publisher = BatchPublisher(broker: broker)
        self.acker = InboundAcker(broker: broker, logger: logger)
    }

    func run() async throws {
        guard try await start() else { return }
        readiness.ready("writer")
        logger.info("persistence writer running", metadata: ["partitions": "\(configuration.partitions)"])
        // Storing batch N+1 overlaps with waiting for batch N's dead-letter confirms; acks stay in order.
        async let acking: Void = acker.run()
        async let assigning: Void = assignment.run { [consumers] mine in consumers.reconcile(mine) }
        await withTaskCancellationOrGracefulShutdownHandler {
            while let batch = await consumers.next() { await handle(batch) }
        } onCancelOrGracefulShutdown: {
            // Hand every partition back at once, then let the loop finish what it holds.
            self.consumers.stop()
        }
        acker.finish()
        await acking
        await assigning
    }

    /// Migrates, declares, and waits for the SQLite writer lock; false at shutdown.
    private func start() async throws -> Bool {
        readiness.waiting("writer", "starting")
        do {
            let migrate = self.migrate, broker = self.broker, partitions = configuration.partitions
            try await retryUntilDone("database", readiness: readiness, logger: logger) { try await migrate() }
            // Broker operations wait for the connection (which retries by itself), so no timeout here.
            try await retryUntilDone("topology", readiness: readiness, logger: logger, attemptTimeout: nil) {
                try await broker.declareTopology(partitions: partitions)
            }
            if let writerLock, !writerLock.tryAcquire() {
                logger.warning("another persistence process writes this SQLite database; standing by until it stops",
                               metadata: ["lock": "\(writerLock.path)"])
                readiness.waiting("writer", "standby: another process writes this SQLite database")
                while !writerLock.tryAcquire() {
                    guard await sleepUntilShutdown(for: .seconds(1)) else { return false }
                }
                logger.info("took over the SQLite database")
            }
            return true
        } catch is CancellationError {
            return false
        }
    }

    /// One batch through the stages. At shutdown while the database is away it returns without acknowledging:
    /// the partitions are released already, so the broker delivers the batch again to the next owner.
    func handle(_ gathered: [PartitionDelivery]) async {
        let inbound = InboundBatch(gathered, live: consumers.liveTokens)
        guard !inbound.isEmpty else { return }
        // Only a redelivered batch can hold messages stored already; a first delivery skips that lookup.
        let started = ContinuousClock.now
        guard let stored = await storer.store(inbound.messages[...], checkExisting: inbound.redelivered) else { return }
        metrics.batchDuration.recordNanoseconds(Int64((ContinuousClock.now - started) / .nanoseconds(1)))
        metrics.batchSize.record(inbound.messages.count)
        if inbound.redelivered { metrics.redeliveredBatches.increment() }
        record(inbound, stored)

        let confirmation = publisher.publish(stored, undecodable: inbound.undecodable)
        acker.settle(inbound.deliveries, confirmation: confirmation,
                     mustConfirm: !inbound.undecodable.isEmpty || !stored.refused.isEmpty)
    }

    /// Counts, logs and metrics of a stored batch.
    private func record(_ inbound: InboundBatch, _ stored: StoredBatch) {
        var byPartition = inbound.countByPartition
        for (message, reason) in stored.refused {
            logger.error("message refused by the database; dead-lettered",
                         metadata: ["chat.room": "\(message.group)", "chat.message_id": "\(message.id)", "reason": "\(reason)",
                                    "amqp.queue": "\(ChatTopology.deadLetterQueue)"])
            byPartition[ChatTopology.partition(of: message.group, count: configuration.partitions), default: 0] -= 1
        }
        let deadLetters = inbound.undecodable.count + stored.refused.count
        metrics.stored.increment(by: stored.taken.count)
        metrics.deadLetters.increment(by: deadLetters)
        let total = counts.withLock { c in
            c.stored += stored.taken.count
            c.deadLetters += deadLetters
            c.batches += 1
            c.storedByPartition.merge(byPartition, uniquingKeysWith: +)
            return c.deadLetters
        }
        if deadLetters > 0 {
            logger.warning("dead letters", metadata: ["dead_letters.batch": "\(deadLetters)", "dead_letters.total": "\(total)"])
        }
    }

    var deadLetterCount: Int { counts.withLock { $0.deadLetters } }
    var owned: [Int] { consumers.owned }

    /// `/stats`: this worker, the workers it sees, the partitions it owns and what it stored.
    func stats() -> PersistenceStatsBody {
        let c = counts.withLock { $0 }
        return PersistenceStatsBody(worker: configuration.workerID, workers: assignment.workers, partitions: configuration.partitions,
                                    owned: consumers.owned, stored: c.stored,
                                    storedByPartition: Dictionary(uniqueKeysWithValues: c.storedByPartition.map { (String($0.key), $0.value) }),
                                    deadLetters: c.deadLetters, batches: c.batches)
    }
}

/// `GET /stats` of a persistence worker: who it is, which partitions it owns, what it stored and dead-lettered.
struct PersistenceStatsBody: ResponseEncodable {
    var worker: String
    var workers: [String]
    var partitions: Int
    var owned: [Int]
    var stored: Int
    var storedByPartition: [String: Int]
    var deadLetters: Int
    var batches: Int

    enum CodingKeys: String, CodingKey {
        case worker, workers, partitions, owned, stored, storedByPartition = "stored_by_partition", deadLetters = "dead_letters", batches
    }
}
