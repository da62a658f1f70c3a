import ChatProtocol

/// Where the room service keeps rooms: table `chat_rooms`, one row per named room, created on first use.
public final class RoomStore: Sendable {
    public let database: any SQLDatabase

    public init(database: any SQLDatabase) {
        self.database = database
    }

    public func migrate() async throws {
        let idColumn = database.dialect == .postgres ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT"
        try await Migrations.apply(component: "rooms", steps: [
            """
            CREATE TABLE IF NOT EXISTS chat_rooms (
                id \(idColumn),
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                UNIQUE (kind, name)
            )
            """,
        ], on: database)
    }

    public struct Room: Sendable, Equatable {
        public var id: Int64
        public var kind: String
        public var name: String
        public var createdAt: Int64
    }

    /// Gets the named room or creates it; safe under concurrent callers (the unique key decides).
    public func getOrCreate(kind: String, name: String) async throws -> (room: Room, created: Bool) {
        if let room = try await find(kind: kind, name: name) { return (room, false) }
        let inserted = try await database.transaction { tx -> Bool in
            let rows = try await tx.query(
                "INSERT INTO chat_rooms (kind, name, created_at) VALUES (?, ?, ?) ON CONFLICT (kind, name) DO NOTHING RETURNING id",
                [.text(kind), .text(name), .int(Timestamp.nowMillis())])
            return !rows.isEmpty
        }
        guard let room = try await find(kind: kind, name: name) else {
            throw ChatError.unavailable("room could not be created")
        }
        return (room, inserted)
    }

    public func find(kind: String, name: String) async throws -> Room? {
        let rows = try await database.query("SELECT id, kind, name, created_at FROM chat_rooms WHERE kind = ? AND name = ?",
                                            [.text(kind), .text(name)])
        return rows.first.map { Room(id: $0[0].int ?? 0, kind: $0[1].string ?? "", name: $0[2].string ?? "", createdAt: $0[3].int ?? 0) }
    }

    public func count() async throws -> Int {
        Int(try await database.query("SELECT COUNT(*) FROM chat_rooms", []).first?.first?.int ?? 0)
    }
}
