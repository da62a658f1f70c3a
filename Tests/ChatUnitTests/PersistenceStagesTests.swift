import AMQPClient
import ChatProtocol
import ChatStorage
import ChatWire
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import ServiceLifecycleTestKit
import Synchronization
import Testing
@testable import PersistenceService

/// The persistence writer's stages (decode, store, publish, acknowledge) and the writer as a whole, on an
/// ``InMemoryPersistenceBroker`` and a real SQLite file: no RabbitMQ.
@Suite struct PersistenceStagesTests {
    static let logger = Logger(label: "test.persistence")

    func message(_ room: String, _ text: String, clientID: String? = nil) -> InboundChatMessage {
        InboundChatMessage(id: UUID().uuidString, group: "named:\(room)", sender: nil, text: text, receivedAt: 1_000,
                           clientID: clientID, replyTo: clientID.map { _ in "chat.gateway.g1" }, socket: clientID.map { _ in 7 })
    }

    /// Runs `body` with a migrated message store on a fresh SQLite file.
    func withStore(_ body: (MessageStore) async throws -> Void) async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stages-\(UUID().uuidString).sqlite").path
        let database = try await openDatabase(url: "sqlite:\(path)", logger: Self.logger, syncEveryCommit: true)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            let store = MessageStore(database: database)
            try await store.migrate()
            try await body(store)
            group.cancelAll()
        }
    }

    func batches(_ published: [AMQPOutgoingMessage]) throws -> [DeliveryBatch] {
        try published.filter { $0.routingKey != ChatTopology.deadLetterQueue }.map { message in
            guard case .deliveries(let batch) = try GatewayQueueMessage.decode(type: message.properties.type, body: message.body) else {
                throw WireError.unknownType(message.properties.type)
            }
            return batch
        }
    }

    // MARK: Consuming

    @Test func aReleasedPartitionGoesBackInPlaceAndWhatItDeliveredIsSkipped() async throws {
        let broker = InMemoryPersistenceBroker()
        let owned = Mutex<Set<Int>>([])
        let consumers = PartitionConsumers(broker: broker, prefetch: 10, logger: Self.logger, onOwnership: { mine in owned.withLock { $0 = mine } })
        consumers.reconcile([0, 1])
        broker.send([message("a", "1")], partition: 0)
        broker.send([message("b", "2")], partition: 1)
        let gathered = try #require(await consumers.next())
        #expect(gathered.count == 2 && owned.withLock { $0 } == [0, 1])
        // Partition 0 moves to another worker before the batch is decoded: its delivery is skipped and queued again.
        consumers.reconcile([1])
        let batch = InboundBatch(gathered, live: consumers.liveTokens)
        #expect(batch.messages.map(\.text) == ["2"])
        #expect(consumers.owned == [1] && owned.withLock { $0 } == [1])
        #expect(broker.outstanding == 2)
        consumers.stop()
        #expect(await consumers.next() == nil)
        #expect(owned.withLock { $0 }.isEmpty)
    }

    // MARK: Decoding

    @Test func decodingSkipsReleasedConsumersAndDeadLettersWhatDoesNotDecode() {
        let good = PartitionQueueMessage.messages([message("a", "1"), message("a", "2")])
        let deliveries = [
            PartitionDelivery(partition: 0, token: 1, delivery: AMQPDelivery(body: good.encode(), properties: AMQPProperties(type: good.type))),
            PartitionDelivery(partition: 1, token: 2, delivery: AMQPDelivery(body: ByteBuffer(string: "junk"),
                                                                             properties: AMQPProperties(type: good.type), redelivered: true)),
            PartitionDelivery(partition: 1, token: 9, delivery: AMQPDelivery(body: good.encode(), properties: AMQPProperties(type: good.type))),
        ]
        let batch = InboundBatch(deliveries, live: [1, 2])
        #expect(batch.messages.map(\.text) == ["1", "2"])
        #expect(batch.deliveries.count == 2)
        #expect(batch.undecodable.count == 1 && batch.undecodable[0].routingKey == ChatTopology.deadLetterQueue)
        #expect(batch.redelivered)
        #expect(batch.countByPartition == [0: 2])
    }

    // MARK: Storing

    /// A store that refuses, as the database would, every batch holding a message whose text is "poison", and
    /// is unreachable for its first `outages` attempts.
    final class RefusingStore: BatchStore {
        let store: MessageStore
        let outages: Mutex<Int>
        init(_ store: MessageStore, outages: Int = 0) {
            self.store = store
            self.outages = Mutex(outages)
        }
        struct Refused: Error {}
        func store(_ batch: [InboundChatMessage], checkExisting: Bool) async throws -> [StoredChatMessage] {
            if outages.withLock({ o in defer { o -= 1 }; return o > 0 }) { throw Refused() }
            if batch.contains(where: { $0.text == "poison" }) { throw Refused() }
            return try await store.store(batch, checkExisting: checkExisting)
        }
        func isReachable() async -> Bool { outages.withLock { $0 <= 0 } }
    }

    @Test func storingIsolatesTheRefusedMessageAndKeepsTheOthersInOrder() async throws {
        try await withStore { store in
            let storer = BatchStorer(store: RefusingStore(store), logger: Self.logger, firstRetry: .milliseconds(1))
            let batch = [message("a", "1"), message("b", "2"), message("a", "poison"), message("a", "3"), message("b", "4")]
            let stored = try #require(await storer.store(batch[...], checkExisting: false))
            #expect(stored.taken.map(\.message.text) == ["1", "2", "3", "4"])
            #expect(stored.taken.map(\.row.seq) == [1, 1, 2, 2])
            #expect(stored.refused.map(\.message.text) == ["poison"])
            #expect(try await store.count(group: "named:a") == 2)
        }
    }

    @Test func storingWaitsOutAnUnreachableDatabaseWithoutMovingPastTheBatch() async throws {
        try await withStore { store in
            let storer = BatchStorer(store: RefusingStore(store, outages: 3), logger: Self.logger, firstRetry: .milliseconds(1))
            let stored = try #require(await storer.store([message("a", "1"), message("a", "2")][...], checkExisting: true))
            #expect(stored.taken.map(\.row.seq) == [1, 2])
            #expect(stored.refused.isEmpty)
        }
    }

    // MARK: Publishing

    @Test func aStoredBatchIsOneBroadcastWithItsAcksAndADeadLetterPerRefusal() throws {
        let broker = InMemoryPersistenceBroker()
        let sent = message("a", "hi", clientID: "c1")
        let row = StoredChatMessage(id: sent.id, group: sent.group, seq: 4, sender: nil, text: sent.text, createdAt: 1_000, clientID: "c1")
        let refused = message("a", "poison")
        let confirmation = BatchPublisher(broker: broker).publish(StoredBatch(taken: [(sent, row)], refused: [(refused, "CHECK failed")]), undecodable: [])
        let published = broker.published
        #expect(published.count == 2)
        let batch = try #require(try batches(published).first)
        #expect(batch.runs.map(\.firstSeq) == [4])
        #expect(batch.acks.map(\.ack.clientID) == ["c1"])
        #expect(published[1].routingKey == ChatTopology.deadLetterQueue)
        #expect(published[1].properties.headers[ChatTopology.reasonHeader] == .string("CHECK failed"))
        _ = confirmation
    }

    // MARK: Acknowledging

    @Test func aBatchWithoutDeadLettersIsAckedAtOnceAndOneWithSomeWaitsForItsConfirm() async throws {
        let broker = InMemoryPersistenceBroker()
        let acker = InboundAcker(broker: broker, logger: Self.logger)
        // The in-memory broker hands deliveries over synchronously.
        let got = Mutex<[AMQPDelivery]>([])
        let consumer = broker.consume(partition: 0, prefetch: 10, deliver: { batch in got.withLock { $0 += batch } }, finished: {})
        for i in 0..<3 { broker.send([message("a", "\(i)")], partition: 0) }
        let deliveries = got.withLock { $0 }
        try #require(deliveries.count == 3)

        let confirmed = AMQPConfirmation()
        #expect(acker.settle([deliveries[0]], confirmation: confirmed, mustConfirm: false))
        let waiting = AMQPConfirmation()
        #expect(!acker.settle([deliveries[1]], confirmation: waiting, mustConfirm: true))
        // Behind a waiting batch, even one without dead letters waits (a multiple ack would cover it).
        #expect(!acker.settle([deliveries[2]], confirmation: confirmed, mustConfirm: false))
        #expect(broker.acked.count == 1)
        async let running: Void = acker.run()
        waiting.complete(.failure(.nacked))
        confirmed.complete(.success(()))
        acker.finish()
        await running
        // The one whose dead letters were not confirmed went back to the queue; the one behind it was acked.
        #expect(broker.acked.map(\.properties.messageID) == [deliveries[0], deliveries[2]].map(\.properties.messageID))
        #expect(acker.awaitingConfirm == 0)
        #expect(broker.outstanding == 1)
        consumer.release()
    }
}
