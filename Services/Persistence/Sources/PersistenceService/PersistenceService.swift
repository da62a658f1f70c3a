import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatStorage
import Foundation
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle
import Synchronization

/// Configuration of the persistence service, read from the environment in one place.
public struct PersistenceConfiguration: Sendable {
    /// `CHAT_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2F`.
    public var amqpURL: String
    /// `CHAT_DATABASE_URL`: `sqlite:PATH` (default `sqlite:.state/messages.sqlite`) or `postgres://…`.
    public var databaseURL: String
    /// `CHAT_HEALTH_HOST` / `CHAT_HEALTH_PORT` (default 127.0.0.1:8001): `/health`, `/health/ready`.
    public var healthHost: String
    public var healthPort: Int
    /// `CHAT_PERSIST_PREFETCH` (default 1000): unacknowledged messages in flight, which bounds a batch.
    public var prefetch: Int

    public static func fromEnvironment(_ env: EnvironmentReader = .init()) -> Self {
        Self(
            amqpURL: env.string("CHAT_AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F"),
            databaseURL: env.string("CHAT_DATABASE_URL", default: "sqlite:.state/messages.sqlite"),
            healthHost: env.string("CHAT_HEALTH_HOST", default: "127.0.0.1"),
            healthPort: env.int("CHAT_HEALTH_PORT", default: 8001),
            prefetch: env.int("CHAT_PERSIST_PREFETCH", default: 1000))
    }
}

/// Builds the persistence service: broker connection, database, the message writer, the history
/// responder and the health server.
public func buildApplication(_ configuration: PersistenceConfiguration, logger: Logger) async throws -> ServiceApplication {
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "persistence"), logger: logger)
    let database = try await openDatabase(url: configuration.databaseURL, logger: logger)
    let store = MessageStore(database: database)
    let writer = MessageWriter(connection: connection, store: store, prefetch: configuration.prefetch, logger: logger)
    let history = HistoryResponder(connection: connection, store: store, logger: logger)
    let health = makeHealthServer(service: "persistence", host: configuration.healthHost, port: configuration.healthPort,
                                  connection: connection, logger: logger)
    return ServiceApplication(services: [connection, database, writer, history, health], logger: logger)
}

/// Consumes `chat.persistence.messages`, stores each batch in one transaction, broadcasts the stored
/// messages to their rooms' groups, and only then acknowledges the batch. A crash anywhere before the
/// ack makes the broker redeliver; the store is idempotent on the message id and gateways drop a seq
/// they have already delivered, so a redelivery neither duplicates a row nor a delivery.
final class MessageWriter: Service {
    let connection: AMQPConnection
    let store: MessageStore
    let prefetch: Int
    let logger: Logger
    let decoder = JSONDecoder()

    init(connection: AMQPConnection, store: MessageStore, prefetch: Int, logger: Logger) {
        self.connection = connection
        self.store = store
        self.prefetch = prefetch
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.inboundQueue)
        self.logger = logger
    }

    func run() async throws {
        try await store.migrate()
        try await declareTopology(connection)
        logger.info("persistence writer consuming")
        // Everything delivered while a batch is being stored makes the next batch (one transaction, one
        // broadcast per room), so batches grow with the load instead of the transaction count. Deliveries are
        // gathered on the connection's thread as they are read (no task in between).
        let gathered = Gathering<AMQPDelivery>()
        let consumer = connection.consume(queue: ChatTopology.inboundQueue, prefetch: UInt16(clamping: prefetch),
                                          finished: { gathered.finish() }) { gathered.append($0) }
        // Storing batch N+1 overlaps with waiting for batch N's broadcast confirms; acks stay in order.
        let (acks, ackContinuation) = AsyncStream<PendingAck>.makeStream(bufferingPolicy: .unbounded)
        async let acking: Void = acknowledge(acks)
        await withTaskCancellationOrGracefulShutdownHandler {
            // On shutdown the consumer is cancelled, which finishes the gathering: what it holds is still stored.
            while let batch = await gathered.next() {
                if let pending = await handle(batch) { ackContinuation.yield(pending) }
            }
        } onCancelOrGracefulShutdown: {
            consumer.cancel()
        }
        ackContinuation.finish()
        await acking
    }

    /// A stored batch waiting for its broadcasts to be confirmed before it is acknowledged.
    struct PendingAck: Sendable {
        let confirmation: AMQPConfirmation
        let deliveries: [AMQPDelivery]
    }

    /// Acknowledges batches in order once their broadcasts are confirmed. A batch whose broadcast failed is
    /// requeued (one by one, before any later multiple-ack could cover it): it is stored already, so its
    /// redelivery is broadcast again with the same seqs.
    func acknowledge(_ pending: AsyncStream<PendingAck>) async {
        for await batch in pending {
            do {
                try await batch.confirmation.wait()
                batch.deliveries.last?.ack(multiple: true)
            } catch {
                logger.warning("broadcast not confirmed; the batch will be redelivered", metadata: ["error": "\(error)"])
                for delivery in batch.deliveries { delivery.reject(requeue: true) }
            }
        }
    }

    func handle(_ batch: [AMQPDelivery]) async -> PendingAck? {
        var messages: [InboundChatMessage] = []
        var accepted: [AMQPDelivery] = []
        for delivery in batch {
            // A gateway sends the messages that arrived together as one JSON array (or a single object).
            let data = Data(buffer: delivery.body)
            if data.first == UInt8(ascii: "["), let many = try? decoder.decode([InboundChatMessage].self, from: data) {
                messages += many
                accepted.append(delivery)
            } else if let message = try? decoder.decode(InboundChatMessage.self, from: data) {
                messages.append(message)
                accepted.append(delivery)
            } else {
                logger.error("dropping an undecodable message", metadata: ["amqp.delivery_tag": "\(delivery.deliveryTag)"])
                delivery.reject(requeue: false)
            }
        }
        guard !accepted.isEmpty else { return nil }

        var stored: [StoredChatMessage] = []
        var delay: Duration = .milliseconds(100)
        // Only a redelivered batch can hold messages stored already; a first delivery skips that lookup
        // (and any failure makes the retry look).
        var checkExisting = accepted.contains { $0.redelivered }
        while true {
            do {
                stored = try await store.store(messages, checkExisting: checkExisting)
                break
            } catch {
                checkExisting = true
                logger.error("storing a batch failed, retrying", metadata: ["error": "\(error)", "batch.size": "\(messages.count)"])
                if Task.isCancelled { return nil }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }

        // One broadcast per run of consecutive seqs of a room (usually one per room per batch), in seq order.
        var runs: [(group: String, first: Int64, frames: [String])] = []
        var openRun: [String: Int] = [:]
        for message in stored {
            if let index = openRun[message.group], runs[index].first + Int64(runs[index].frames.count) == message.seq {
                runs[index].frames.append(message.clientFrame)
            } else {
                openRun[message.group] = runs.count
                runs.append((message.group, message.seq, [message.clientFrame]))
            }
        }
        // One AMQP message for up to 256 runs (routed to every gateway holding any of their rooms, see
        // ``AMQPChannelLayer/groupRunsMessage(_:)``): the broker's cost follows batches, not rooms.
        let broadcasts = stride(from: 0, to: runs.count, by: 256).map {
            AMQPChannelLayer.groupRunsMessage(Array(runs[$0..<min($0 + 256, runs.count)]))
        }
        logger.trace("stored; broadcasting", metadata: ["batch.size": "\(stored.count)"])
        return PendingAck(confirmation: connection.publishPipelined(broadcasts), deliveries: accepted)
    }
}

/// Declares what the persistence service consumes: the inbound exchange and its durable queue
/// (single active consumer: several instances fail over without reordering a room), and the groups exchange.
func declareTopology(_ connection: AMQPConnection) async throws {
    try await connection.declareExchange(ChatTopology.inboundExchange, type: .direct, durable: true)
    try await connection.declareQueue(ChatTopology.inboundQueue, durable: true,
                                      arguments: ["x-single-active-consumer": .bool(true)])
    try await connection.bindQueue(ChatTopology.inboundQueue, exchange: ChatTopology.inboundExchange,
                                   routingKey: ChatTopology.inboundRoutingKey)
    try await connection.declareExchange(ChatTopology.groupsExchange, type: .direct, durable: true)
    try await connection.declareQueue(ChatTopology.historyQueue, durable: true)
}

/// Answers history requests: the last N messages of a room (before a seq), as the frames sockets receive.
final class HistoryResponder: Service {
    let connection: AMQPConnection
    let store: MessageStore
    let logger: Logger
    static let maxLimit = 200

    init(connection: AMQPConnection, store: MessageStore, logger: Logger) {
        self.connection = connection
        self.store = store
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.historyQueue)
        self.logger = logger
    }

    func run() async throws {
        try await declareTopology(connection)
        let consumer = connection.consume(queue: ChatTopology.historyQueue, prefetch: 256)
        // Answered concurrently (reads of the WAL reader connection): a burst of joins each asks for history.
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            for await delivery in consumer.cancelOnGracefulShutdown() {
                if running >= Self.maxConcurrent {
                    await group.next()
                    running -= 1
                }
                group.addTask { await self.answer(delivery) }
                running += 1
            }
        }
    }

    static let maxConcurrent = 16

    /// Replies are not awaited: a lost reply is the requester's timeout.
    func send(_ reply: AMQPOutgoingMessage) {
        let logger = self.logger
        connection.publishPipelined([reply]).onFailure { error in
            logger.warning("reply not confirmed", metadata: ["error": "\(error)"])
        }
    }

    func answer(_ delivery: AMQPDelivery) async {
        defer { delivery.ack() }
        guard let request = try? JSONDecoder().decode(HistoryRequest.self, from: Data(buffer: delivery.body)) else {
            logger.warning("malformed history request")
            return
        }
        do {
            if let queries = request.summaries {
                let body = try JSONEncoder().encode(try await store.summaries(queries))
                if let reply = AMQPRequester.reply(to: delivery, body: ByteBuffer(bytes: body)) { send(reply) }
                return
            }
            let limit = max(0, min(request.limit, Self.maxLimit))
            let messages = limit == 0 ? [] : try await store.history(group: request.group, beforeSeq: request.beforeSeq, limit: limit)
            let body = messages.map(\.clientFrame).joined(separator: "\n")
            var headers: AMQPTable = [ChatTopology.countHeader: .int(Int64(messages.count))]
            if let first = messages.first { headers[ChatTopology.seqHeader] = .int(first.seq) }
            if let reply = AMQPRequester.reply(to: delivery, body: ByteBuffer(string: body), headers: headers) { send(reply) }
        } catch {
            logger.error("history request failed", metadata: ["error": "\(error)", "chat.room": "\(request.group)"])
        }
    }
}

/// Items handed over from one task to another, taken all at once: ``next()`` returns everything appended
/// since the previous call (waiting when there is nothing), or nil once finished and drained.
final class Gathering<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var waiter: CheckedContinuation<[Element]?, Never>?
        var finished = false
    }
    private let state = Mutex(State())

    func append(_ items: [Element]) {
        let resume = state.withLock { s -> (CheckedContinuation<[Element]?, Never>, [Element])? in
            s.items += items
            guard let waiter = s.waiter else { return nil }
            s.waiter = nil
            defer { s.items = [] }
            return (waiter, s.items)
        }
        if let (waiter, items) = resume { waiter.resume(returning: items) }
    }

    func finish() {
        let waiter = state.withLock { s -> CheckedContinuation<[Element]?, Never>? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> [Element]? {
        await withCheckedContinuation { (c: CheckedContinuation<[Element]?, Never>) in
            let ready = state.withLock { s -> [Element]?? in
                if !s.items.isEmpty {
                    defer { s.items = [] }
                    return .some(s.items)
                }
                if s.finished { return .some(nil) }
                s.waiter = c
                return .none
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}
