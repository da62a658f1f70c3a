import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatStorage
import ChatWire
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle
import Synchronization

/// A delivery with the partition consumer it came from.
struct PartitionDelivery: Sendable {
    let partition: Int
    /// Which acquisition of the partition it came with: deliveries of a partition released since are skipped.
    let token: Int
    let delivery: AMQPDelivery
}

/// Consumes the partition queues this worker owns, stores each batch in one transaction (synced), then in one
/// pass of the AMQP thread publishes its ``DeliveryBatch`` (broadcasts and client acks together) and
/// acknowledges it. A crash before the ack makes the broker redeliver; the store is idempotent on the message
/// id and gateways drop a seq they have already delivered, so a redelivery neither duplicates a row nor a
/// delivery.
///
/// Which partitions it owns is the ``PartitionCoordinator``'s call; a partition is handed over by closing its
/// consumer's channel (``AMQPConsumerHandle/release()``), so that what this worker held goes back to its place
/// in the queue and the next owner cannot overtake it (docs/amqp-topology.md).
final class MessageWriter: Service {
    let connection: AMQPConnection
    let store: MessageStore
    let configuration: PersistenceConfiguration
    let readiness: Readiness
    let writerLock: WriterLock?
    let logger: Logger
    let gathered = Gathering<PartitionDelivery>()

    struct Held {
        let token: Int
        let handle: AMQPConsumerHandle
    }
    struct State {
        var held: [Int: Held] = [:]
        var nextToken = 1
        var stopped = false
        var stored = 0
        var storedByPartition: [Int: Int] = [:]
        var deadLetters = 0
        var batches = 0
        /// Batches handed to ``acknowledge(_:)`` and not acknowledged yet.
        var awaitingConfirm = 0
    }
    private let state = Mutex(State())
    let coordinator: PartitionCoordinator
    let metrics: PersistenceMetrics

    init(connection: AMQPConnection, store: MessageStore, configuration: PersistenceConfiguration, readiness: Readiness,
         writerLock: WriterLock?, logger: Logger) {
        self.connection = connection
        self.store = store
        self.configuration = configuration
        self.readiness = readiness
        self.writerLock = writerLock
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.inboundExchange)
        self.logger = logger
        self.coordinator = PartitionCoordinator(connection: connection, configuration: configuration, logger: logger)
        self.metrics = PersistenceMetrics(partitions: configuration.partitions)
        metrics.ownership([])
    }

    func run() async throws {
        readiness.waiting("writer", "starting")
        do {
            let store = self.store, connection = self.connection, partitions = configuration.partitions
            try await retryUntilDone("database", readiness: readiness, logger: logger) { try await store.migrate() }
            // AMQP operations wait for the connection (which retries by itself), so no timeout here.
            try await retryUntilDone("topology", readiness: readiness, logger: logger, attemptTimeout: nil) {
                try await ChatTopology.declare(.persistenceWriter(partitions: partitions), on: connection)
            }
            if let writerLock, !writerLock.tryAcquire() {
                logger.warning("another persistence process writes this SQLite database; standing by until it stops",
                               metadata: ["lock": "\(writerLock.path)"])
                readiness.waiting("writer", "standby: another process writes this SQLite database")
                while !writerLock.tryAcquire() {
                    guard await sleepUntilShutdown(for: .seconds(1)) else { throw CancellationError() }
                }
                logger.info("took over the SQLite database")
            }
        } catch is CancellationError {
            return
        }
        readiness.ready("writer")
        logger.info("persistence writer running", metadata: ["partitions": "\(configuration.partitions)"])

        // Storing batch N+1 overlaps with waiting for batch N's broadcast confirms; acks stay in order.
        let (acks, ackContinuation) = AsyncStream<PendingAck>.makeStream(bufferingPolicy: .unbounded)
        async let acking: Void = acknowledge(acks)
        async let coordinating: Void = coordinator.run { [self] mine in reconcile(mine) }
        await withTaskCancellationOrGracefulShutdownHandler {
            // Everything delivered while a batch is being stored makes the next batch (one transaction, one
            // broadcast per room), so batches grow with the load instead of the transaction count.
            while let batch = await gathered.next() {
                if let pending = await handle(batch) { ackContinuation.yield(pending) }
            }
        } onCancelOrGracefulShutdown: {
            // Hand every partition back at once (what is not acknowledged yet is requeued in place, and is
            // stored already or not: either way idempotent), then let the loop finish what it holds.
            self.stop()
        }
        ackContinuation.finish()
        await acking
        await coordinating
    }

    /// Stops consuming: releases every partition and ends the gathering.
    func stop() {
        let held = state.withLock { s -> [Int: Held] in
            s.stopped = true
            defer { s.held = [:] }
            metrics.ownership([])
            return s.held
        }
        for (_, partition) in held { partition.handle.release() }
        gathered.finish()
    }

    // MARK: Partitions

    /// Consumes exactly the partitions in `mine`: starts consumers for the new ones (each waits, as the queue's
    /// single active consumer, until the previous owner has let go) and releases the others. Only enqueues
    /// commands on the connection, so it may run on any thread, the connection's own included.
    func reconcile(_ mine: Set<Int>) {
        let (released, acquired) = state.withLock { s -> ([Int], [Int]) in
            if s.stopped { return ([], []) }
            var released: [Int] = []
            for (partition, held) in s.held where !mine.contains(partition) {
                held.handle.release()
                released.append(partition)
            }
            for partition in released { s.held[partition] = nil }
            defer { metrics.ownership(Set(s.held.keys)) }
            var acquired: [Int] = []
            for partition in mine.sorted() where s.held[partition] == nil {
                let token = s.nextToken
                s.nextToken += 1
                let gathered = self.gathered
                let handle = connection.consume(
                    queue: ChatTopology.partitionQueue(partition), prefetch: UInt16(clamping: configuration.prefetch),
                    finished: { [weak self] in Task { self?.consumerEnded(partition: partition, token: token) } }
                ) { batch in
                    gathered.append(batch.map { PartitionDelivery(partition: partition, token: token, delivery: $0) })
                }
                s.held[partition] = Held(token: token, handle: handle)
                acquired.append(partition)
            }
            return (released.sorted(), acquired)
        }
        if !released.isEmpty || !acquired.isEmpty {
            logger.info("partitions moved", metadata: ["partitions.released": "\(released)", "partitions.acquired": "\(acquired)",
                                                       "partitions.owned": "\(owned)"])
        }
    }

    /// A consumer the broker or the connection ended (not one this worker released): the next reconcile
    /// starts it again.
    private func consumerEnded(partition: Int, token: Int) {
        state.withLock { s in
            if s.held[partition]?.token == token { s.held[partition] = nil }
            metrics.ownership(Set(s.held.keys))
        }
    }

    var owned: [Int] { state.withLock { $0.held.keys.sorted() } }

    // MARK: Batches

    /// A stored batch with dead letters, waiting for their confirm before it is acknowledged.
    struct PendingAck: Sendable {
        let confirmation: AMQPConfirmation
        let deliveries: [AMQPDelivery]
    }

    /// Acknowledges batches with dead letters in order once those are confirmed (the broker keeps a dead letter,
    /// the store does not). One whose publish failed is requeued (one by one, before any later multiple-ack could
    /// cover it): it is stored already, so its redelivery is broadcast again with the same seqs.
    func acknowledge(_ pending: AsyncStream<PendingAck>) async {
        for await batch in pending {
            do {
                try await batch.confirmation.wait()
                batch.deliveries.acknowledgeAll()
            } catch {
                logger.warning("dead letters not confirmed; the batch will be redelivered", metadata: ["error": "\(error)"])
                for delivery in batch.deliveries { delivery.reject(requeue: true) }
            }
            state.withLock { $0.awaitingConfirm -= 1 }
        }
    }

    func handle(_ batch: [PartitionDelivery]) async -> PendingAck? {
        let live = state.withLock { s in Set(s.held.values.map(\.token)) }
        var messages: [InboundChatMessage] = []
        var deliveries: [AMQPDelivery] = []
        var deadLetters: [AMQPOutgoingMessage] = []
        var redelivered = false
        // Messages per partition (a delivery's messages are all of its partition's rooms), less the refused below.
        var storedByPartition: [Int: Int] = [:]
        for item in batch where live.contains(item.token) {
            let delivery = item.delivery
            deliveries.append(delivery)
            redelivered = redelivered || delivery.redelivered
            // A gateway sends the messages of one partition that arrived together as one AMQP message.
            do {
                switch try PartitionQueueMessage.decode(type: delivery.properties.type, body: delivery.body) {
                case .messages(let many):
                    messages += many
                    storedByPartition[item.partition, default: 0] += many.count
                }
            } catch {
                deadLetters.append(Self.deadLetter(body: delivery.body, reason: "undecodable message: \(error)", group: nil))
            }
        }
        guard !deliveries.isEmpty else { return nil }

        // Only a redelivered batch can hold messages stored already; a first delivery skips that lookup.
        let started = ContinuousClock.now
        guard let outcome = await storeIsolatingRefused(messages[...], checkExisting: redelivered) else { return nil }
        metrics.batchDuration.recordNanoseconds(Int64((ContinuousClock.now - started) / .nanoseconds(1)))
        metrics.batchSize.record(messages.count)
        if redelivered { metrics.redeliveredBatches.increment() }
        for (message, reason) in outcome.refused {
            logger.error("message refused by the database; dead-lettered",
                         metadata: ["chat.room": "\(message.group)", "chat.message_id": "\(message.id)", "reason": "\(reason)",
                                    "amqp.queue": "\(ChatTopology.deadLetterQueue)"])
            let body = ByteBuffer(bytes: (try? JSONEncoder().encode(message)) ?? Data())
            deadLetters.append(Self.deadLetter(body: body, reason: reason, group: message.group))
            storedByPartition[ChatTopology.partition(of: message.group, count: configuration.partitions), default: 0] -= 1
        }
        let stored = outcome.stored
        metrics.stored.increment(by: stored.count)
        metrics.deadLetters.increment(by: deadLetters.count)
        state.withLock { s in
            s.stored += stored.count
            s.deadLetters += deadLetters.count
            s.batches += 1
            s.storedByPartition.merge(storedByPartition, uniquingKeysWith: +)
        }
        if !deadLetters.isEmpty {
            logger.warning("dead letters", metadata: ["dead_letters.batch": "\(deadLetters.count)", "dead_letters.total": "\(deadLetterCount)"])
        }

        // What was stored for each message the store took (the refused are left out, in order). A resend of a
        // client id gets the room's earlier row: it was broadcast when it was stored, so only its ack goes out.
        let accepted: [InboundChatMessage]
        if outcome.refused.isEmpty { accepted = messages } else {
            let refusedIDs = Set(outcome.refused.map(\.0.id))
            accepted = messages.filter { !refusedIDs.contains($0.id) }
        }
        let taken = zip(accepted, stored).map { (message: $0, row: $1) }
        let broadcasts = Self.deliveries(taken, receivedAt: accepted.lazy.map(\.receivedAt).min())
        logger.trace("stored; broadcasting", metadata: ["batch.size": "\(stored.count)"])
        let confirmation = connection.publishPipelined(broadcasts + deadLetters)
        // The store has the batch (synced): the broker need not keep it any more, so the inbound is acked in the
        // same pass as the broadcast, without waiting for its confirm. A broadcast lost now is a client ack lost
        // with it (the ack travels in the same AMQP message), and the client's resend broadcasts the stored row
        // again. Dead letters are the broker's to keep: a batch with some waits for their confirm.
        // A multiple ack covers earlier deliveries of its channel, so it may go at once only when no earlier
        // batch still waits for its confirm.
        let direct = state.withLock { s in
            if deadLetters.isEmpty && s.awaitingConfirm == 0 { return true }
            s.awaitingConfirm += 1
            return false
        }
        if direct {
            deliveries.acknowledgeAll()
            return nil
        }
        return PendingAck(confirmation: confirmation, deliveries: deliveries)
    }

    /// What a stored batch sends to the gateways: every stored row it took, once (a resend's earlier row too, so a
    /// broadcast lost before its ack is mended by the resend; gateways skip a seq they have delivered), in runs
    /// of consecutive seqs per room, and the acks of the messages sent with a `client_id` (for their gateways'
    /// queues). One AMQP message for up to `runsPerMessage` runs; the acks ride in the last, so a gateway that
    /// gets an ack has been routed every broadcast before it.
    static func deliveries(_ taken: [(message: InboundChatMessage, row: StoredChatMessage)], receivedAt: Int64?,
                           runsPerMessage: Int = 256) -> [AMQPOutgoingMessage] {
        var seen = Set<String>()
        var rows = taken.compactMap { seen.insert($0.row.id).inserted ? $0.row : nil }
        // Seq order within each room (a resend's earlier row may come after newer ones); rooms keep their first order.
        var firstIndex: [String: Int] = [:]
        for (index, row) in rows.enumerated() where firstIndex[row.group] == nil { firstIndex[row.group] = index }
        rows.sort { ($0.group == $1.group) ? $0.seq < $1.seq : firstIndex[$0.group]! < firstIndex[$1.group]! }
        var runs: [DeliveryBatch.Run] = []
        var openRun: [String: Int] = [:]
        for row in rows {
            let frame = ByteBuffer(string: row.clientFrame)
            if let index = openRun[row.group], runs[index].firstSeq + Int64(runs[index].frames.count) == row.seq {
                runs[index].frames.append(frame)
            } else {
                openRun[row.group] = runs.count
                runs.append(DeliveryBatch.Run(group: row.group, firstSeq: row.seq, frames: [frame]))
            }
        }
        let acks = taken.compactMap { message, row -> DeliveryBatch.Ack? in
            guard let clientID = message.clientID, let replyTo = message.replyTo, let socket = message.socket else { return nil }
            return DeliveryBatch.Ack(gateway: replyTo, ack: MessageAck(socket: socket, clientID: clientID, id: row.id, seq: row.seq))
        }
        let chunks = stride(from: 0, to: max(runs.count, 1), by: runsPerMessage).map { runs[$0..<min($0 + runsPerMessage, runs.count)] }
        return chunks.enumerated().compactMap { index, chunk in
            DeliveryBatch(runs: Array(chunk), acks: index == chunks.count - 1 ? acks : [], receivedAt: receivedAt).outgoing()
        }
    }

    /// Stores `messages` in order, as one transaction when it can. When the database is there but refuses the
    /// batch, the batch is split in halves (stored one after the other, so order holds) until the message it
    /// refuses on its own is found; that one is returned as refused, with the reason, and gets no seq. While
    /// the database is unreachable it retries with backoff, never moving past the batch. Nil at shutdown.
    func storeIsolatingRefused(_ messages: ArraySlice<InboundChatMessage>, checkExisting: Bool) async
        -> (stored: [StoredChatMessage], refused: [(InboundChatMessage, String)])?
    {
        if messages.isEmpty { return ([], []) }
        var check = checkExisting
        var delay: Duration = .milliseconds(100)
        var refusals = 0
        let store = self.store, batch = Array(messages)
        while true {
            do {
                // Bounded: a statement caught on a connection the database dropped may never return (seen with a
                // fast PostgreSQL stop); the retry runs on another connection and the store is idempotent.
                let attemptCheck = check
                return (try await withDeadline(Self.attemptLimit) { try await store.store(batch, checkExisting: attemptCheck) }, [])
            } catch {
                if error is TimedOut {
                    logger.warning("the database did not answer a batch in time; retrying it",
                                   metadata: ["batch.size": "\(messages.count)", "timeout": "\(Self.attemptLimit)"])
                }
                // A conflict with a redelivery (or with the previous owner of the partition): look up and retry.
                if !check {
                    check = true
                    continue
                }
                if (try? await withDeadline(Self.attemptLimit, { await store.isReachable() })) == true {
                    refusals += 1
                    if messages.count > 1 {
                        logger.warning("the database refused a batch; splitting it to find the message",
                                       metadata: ["error": "\(error)", "batch.size": "\(messages.count)"])
                        let middle = messages.startIndex + messages.count / 2
                        guard let first = await storeIsolatingRefused(messages[..<middle], checkExisting: true),
                              let second = await storeIsolatingRefused(messages[middle...], checkExisting: true) else { return nil }
                        return (first.stored + second.stored, first.refused + second.refused)
                    }
                    // One message, refused three times while the database answers: it is the message.
                    if refusals >= 3 { return ([], [(messages[messages.startIndex], Self.reason(error))]) }
                } else {
                    logger.error("database unavailable; retrying the batch",
                                 metadata: ["error": "\(error)", "batch.size": "\(messages.count)", "retry.in": "\(delay)"])
                }
                guard await sleepUntilShutdown(for: delay) else { return nil }
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// How long one attempt to store a batch may take before it counts as failed.
    static let attemptLimit: Duration = .seconds(10)

    static func reason(_ error: any Error) -> String {
        String(String(reflecting: error).prefix(500))
    }

    static func deadLetter(body: ByteBuffer, reason: String, group: String?) -> AMQPOutgoingMessage {
        var headers: AMQPTable = [ChatTopology.reasonHeader: .string(reason)]
        if let group { headers[ChatTopology.groupHeader] = .string(group) }
        return AMQPOutgoingMessage(exchange: "", routingKey: ChatTopology.deadLetterQueue, body: body,
                                   properties: AMQPProperties(persistent: true, headers: headers), mandatory: true)
    }

    var deadLetterCount: Int { state.withLock { $0.deadLetters } }

    /// `/stats`: this worker, the workers it sees, the partitions it owns and what it stored.
    func stats() -> PersistenceStatsBody {
        let (owned, stored, byPartition, dead, batches) = state.withLock { s in
            (s.held.keys.sorted(), s.stored, s.storedByPartition, s.deadLetters, s.batches)
        }
        return PersistenceStatsBody(worker: configuration.workerID, workers: coordinator.workers, partitions: configuration.partitions,
                                    owned: owned, stored: stored, storedByPartition: Dictionary(uniqueKeysWithValues: byPartition.map { (String($0.key), $0.value) }),
                                    deadLetters: dead, batches: batches)
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
