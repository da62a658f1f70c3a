import ChatProtocol
import ChatStorage
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// The stores on embedded SQLite and on the real PostgreSQL that scripts/test started.
@Suite(.serialized) struct StorageTests {
    static var postgresURL: String {
        guard let url = ProcessInfo.processInfo.environment["CHAT_TEST_PG_URL"] else {
            fatalError("CHAT_TEST_PG_URL is not set: run the tests through ./scripts/test, which starts PostgreSQL")
        }
        return url
    }

    /// Runs `body` with a migrated store on each backend.
    func onEachDatabase(_ body: (MessageStore, RoomStore) async throws -> Void) async throws {
        let logger = Logger(label: "test.storage")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("chat-\(UUID().uuidString).sqlite").path
        for url in ["sqlite:\(path)", Self.postgresURL] {
            let database = try await openDatabase(url: url, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await database.run() }
                let messages = MessageStore(database: database), rooms = RoomStore(database: database)
                try await messages.migrate()
                try await messages.migrate()  // idempotent
                try await rooms.migrate()
                try await body(messages, rooms)
                group.cancelAll()
            }
        }
    }

    @Test func storingIsIdempotentOnTheIDAndNumbersEachRoom() async throws {
        try await onEachDatabase { store, _ in
            let room = "named:store-\(UUID().uuidString.prefix(8))", other = room + "-other"
            let batch = (0..<5).map { InboundChatMessage(id: UUID().uuidString, group: $0 == 2 ? other : room, sender: nil, text: "t\($0)", receivedAt: 1000 + Int64($0)) }
            let first = try await store.store(batch)
            #expect(first.map(\.seq) == [1, 2, 1, 3, 4])
            // A redelivered batch (plus one new message) writes only the new one and returns the same rows.
            let again = try await store.store(batch + [InboundChatMessage(id: UUID().uuidString, group: room, sender: "a@b.c", text: "new", receivedAt: 2000)])
            #expect(Array(again.prefix(5)) == first)
            #expect(again.last?.seq == 5 && again.last?.sender == "a@b.c")
            #expect(try await store.count(group: room) == 5)
            let history = try await store.history(group: room, limit: 3)
            #expect(history.map(\.seq) == [3, 4, 5])
            #expect(try await store.history(group: room, beforeSeq: 3, limit: 10).map(\.text) == ["t0", "t1"])
        }
    }

    @Test func roomsAreCreatedOnceUnderConcurrentCallers() async throws {
        try await onEachDatabase { _, rooms in
            let name = "concurrent-\(UUID().uuidString.prefix(8))"
            let results = try await withThrowingTaskGroup(of: (Int64, Bool).self) { group in
                for _ in 0..<20 { group.addTask { let r = try await rooms.getOrCreate(kind: "named", name: name); return (r.room.id, r.created) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(results.map(\.0)).count == 1)
            #expect(results.filter(\.1).count == 1)
        }
    }
}

extension StorageTests {
    @Test func aBatchStoredWithoutTheLookupFailsWholeOnAKnownIDAndSucceedsWithIt() async throws {
        try await onEachDatabase { store, _ in
            let room = "named:fast-\(UUID().uuidString.prefix(8))"
            let first = InboundChatMessage(id: UUID().uuidString, group: room, sender: nil, text: "a", receivedAt: 1)
            _ = try await store.store([first], checkExisting: false)
            let second = InboundChatMessage(id: UUID().uuidString, group: room, sender: nil, text: "b", receivedAt: 2)
            await #expect(throws: (any Error).self) { _ = try await store.store([second, first], checkExisting: false) }
            #expect(try await store.count(group: room) == 1)  // nothing of the failed batch was written
            let stored = try await store.store([second, first], checkExisting: true)
            #expect(stored.map(\.seq) == [2, 1])
            // A first delivery of a room whose next seq is known goes on from it (the one-statement path).
            let more = (0..<3).map { InboundChatMessage(id: UUID().uuidString, group: room, sender: nil, text: "c\($0)", receivedAt: 3) }
            #expect(try await store.store(more, checkExisting: false).map(\.seq) == [3, 4, 5])
            #expect(try await store.history(group: room, limit: 10).map(\.text) == ["a", "b", "c0", "c1", "c2"])
        }
    }
}

extension StorageTests {
    @Test func aRoomStoresOneMessagePerClientIDAndAResendGetsTheOriginalRow() async throws {
        try await onEachDatabase { store, _ in
            let room = "named:client-\(UUID().uuidString.prefix(8))", other = room + "-other"
            func message(_ text: String, _ clientID: String?, in group: String? = nil) -> InboundChatMessage {
                InboundChatMessage(id: MessageID.timeOrdered(), group: group ?? room, sender: nil, text: text, receivedAt: 1, clientID: clientID)
            }
            let original = try await store.store([message("hello", "c-1"), message("plain", nil)], checkExisting: false)
            #expect(original.map(\.seq) == [1, 2])
            // The resend (a new gateway id, after a reconnect): on the fast path the unique index refuses it whole ...
            let resend = message("hello", "c-1")
            await #expect(throws: (any Error).self) { _ = try await store.store([resend, message("after", "c-2")], checkExisting: false) }
            // ... and with the lookup it is the original row, while the new message is stored.
            let again = try await store.store([resend, message("after", "c-2")], checkExisting: true)
            #expect(again[0] == original[0] && again[1].seq == 3)
            // The same client id twice in one batch: one row. The same client id in another room: its own message.
            let twice = try await store.store([message("x", "c-3"), message("x", "c-3"), message("y", "c-1", in: other)])
            #expect(twice[0] == twice[1] && twice[0].seq == 4 && twice[2].seq == 1)
            #expect(try await store.count(group: room) == 4)
            // A resume reads what came after a seq, and the room's last seq.
            let after = try await store.messages(group: room, afterSeq: 2, limit: 10)
            #expect(after.messages.map(\.seq) == [3, 4] && after.lastSeq == 4)
            #expect(try await store.messages(group: room + "-none", afterSeq: 0, limit: 10).lastSeq == 0)
        }
    }
}
