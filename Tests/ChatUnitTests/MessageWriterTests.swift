import AMQPClient
import ChatProtocol
import ChatStorage
import ChatWire
import Foundation
import Logging
import ServiceKit
import ServiceLifecycle
import ServiceLifecycleTestKit
import Synchronization
import Testing
@testable import PersistenceService

/// The writer with its stages together, on an ``InMemoryPersistenceBroker`` and a real SQLite file; its drain
/// with swift-service-lifecycle's ``testGracefulShutdown(operation:)``.
@Suite struct MessageWriterTests {
    static let logger = Logger(label: "test.writer")
    let stages = PersistenceStagesTests()

    /// A store that lets a test hold a batch inside ``store(_:checkExisting:)``: `entered` yields each batch's
    /// size as it arrives, and the batch is stored once `open()` is called (at once while open).
    final class GatedStore: BatchStore {
        let store: MessageStore
        let entered: AsyncStream<Int>
        private let enteredContinuation: AsyncStream<Int>.Continuation
        private let gate = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
        init(_ store: MessageStore, open: Bool = false) {
            self.store = store
            (entered, enteredContinuation) = AsyncStream<Int>.makeStream()
            gate.withLock { $0.open = open }
        }
        func open() {
            let waiters = gate.withLock { g in
                g.open = true
                defer { g.waiters = [] }
                return g.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        func store(_ batch: [InboundChatMessage], checkExisting: Bool) async throws -> [StoredChatMessage] {
            enteredContinuation.yield(batch.count)
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let open = gate.withLock { g in
                    if !g.open { g.waiters.append(c) }
                    return g.open
                }
                if open { c.resume() }
            }
            return try await store.store(batch, checkExisting: checkExisting)
        }
        func isReachable() async -> Bool { true }
    }

    func writer(_ broker: InMemoryPersistenceBroker, _ store: any BatchStore, partitions: Int = 2) -> MessageWriter {
        MessageWriter(broker: broker, store: store, migrate: {}, assignment: FixedPartitions(partitions: Set(0..<partitions)),
                      configuration: PersistenceConfiguration(partitions: partitions, workerID: "w1"), readiness: Readiness(),
                      writerLock: nil, logger: Self.logger)
    }

    /// Waits (bounded) until `condition` holds.
    func eventually(_ condition: () -> Bool) async throws {
        for _ in 0..<500 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        #expect(condition())
    }

    @Test func everyMessageIsStoredBroadcastAndAckedAcrossPartitions() async throws {
        try await stages.withStore { store in
            let broker = InMemoryPersistenceBroker()
            let writer = writer(broker, store)
            try await testGracefulShutdown { shutdown in
                async let running: Void = writer.run()
                broker.send([stages.message("a", "1", clientID: "c1"), stages.message("a", "2")], partition: 0)
                broker.send([stages.message("b", "3")], partition: 1)
                broker.send([stages.message("a", "4", clientID: "c4")], partition: 0)
                try await eventually { broker.acked.count == 3 }
                shutdown.triggerGracefulShutdown()
                try await running
            }
            #expect(try await store.count(group: "named:a") == 3)
            let batches = try stages.batches(broker.published)
            #expect(batches.flatMap { $0.runs.flatMap(\.frames) }.count == 4)
            #expect(Set(batches.flatMap(\.acks).map(\.ack.clientID)) == ["c1", "c4"])
            #expect(writer.stats().stored == 4)
            #expect(broker.outstanding == 0)
        }
    }

    /// At shutdown the writer hands its partitions back at once, finishes the batch it holds (stored and
    /// broadcast), and returns; what it held goes back to the queue, and the next owner stores none of it twice.
    @Test func aGracefulShutdownFinishesTheBatchInHandAndTheNextOwnerDoublesNothing() async throws {
        try await stages.withStore { store in
            let broker = InMemoryPersistenceBroker()
            let gated = GatedStore(store)
            let first = writer(broker, gated)
            try await testGracefulShutdown { shutdown in
                async let running: Void = first.run()
                broker.send([stages.message("a", "1", clientID: "c1"), stages.message("a", "2")], partition: 0)
                var entered = gated.entered.makeAsyncIterator()
                #expect(await entered.next() == 2)
                shutdown.triggerGracefulShutdown()
                // Sent after the partitions were released: this writer must not take it.
                broker.send([stages.message("a", "3")], partition: 0)
                gated.open()
                try await running
            }
            #expect(try await store.count(group: "named:a") == 2)
            #expect(try stages.batches(broker.published).flatMap { $0.runs.flatMap(\.frames) }.count == 2)
            // Its acks came after its partition was released: dropped, as RabbitMQ drops them; all three are queued again.
            #expect(broker.acked.isEmpty && broker.outstanding == 2)

            let second = writer(broker, store)
            try await testGracefulShutdown { shutdown in
                async let running: Void = second.run()
                try await eventually { broker.outstanding == 0 }
                shutdown.triggerGracefulShutdown()
                try await running
            }
            let rows = try await store.history(group: "named:a", limit: 10)
            #expect(rows.map(\.seq) == [1, 2, 3])
            #expect(rows.map(\.text) == ["1", "2", "3"])
            // The redelivered batch is broadcast again with its seqs (gateways skip what they delivered).
            let seqs = try stages.batches(broker.published).flatMap { batch in batch.runs.flatMap { run in run.frames.indices.map { run.firstSeq + Int64($0) } } }
            #expect(seqs == [1, 2, 1, 2, 3])
        }
    }
}
