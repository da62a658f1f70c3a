import ChatProtocol
import Synchronization

/// Where the room service keeps rooms: table `chat_rooms`, one row per named room, created on first use.
package final class RoomStore: Sendable {
    package let database: any SQLDatabase
    /// Rooms are never renamed or deleted, so a room once read stays true: joins of a recently used room (and
    /// lookups of a recently used consultation room) are answered from memory, within `cacheCapacity` each.
    private let namedRooms: RecentCache<String, Room>
    private let consultRoomsByID: RecentCache<Int64, ConsultRoom>

    package init(database: any SQLDatabase, cacheCapacity: Int = 100_000) {
        self.database = database
        self.namedRooms = RecentCache(capacity: cacheCapacity)
        self.consultRoomsByID = RecentCache(capacity: cacheCapacity)
    }

    /// Creates or updates the room tables.
    package func migrate() async throws {
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
            "CREATE TABLE IF NOT EXISTS chat_shop_users (id \(idColumn), email TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS chat_visitor_users (id \(idColumn), email TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS chat_consult_rooms (
                id \(idColumn),
                shop_user_id BIGINT NOT NULL REFERENCES chat_shop_users (id),
                visitor_user_id BIGINT NOT NULL REFERENCES chat_visitor_users (id),
                created_at BIGINT NOT NULL,
                UNIQUE (shop_user_id, visitor_user_id)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS chat_read_marks (
                room_id BIGINT NOT NULL REFERENCES chat_consult_rooms (id),
                email TEXT NOT NULL,
                read_seq BIGINT NOT NULL,
                PRIMARY KEY (room_id, email)
            )
            """,
        ], on: database)
    }

    // MARK: Consultation rooms

    /// Gets or creates both users and their room; safe under concurrent callers (unique keys decide).
    /// Emails must already be normalized (lowercase).
    package func getOrCreateConsultRoom(shopEmail: String, visitorEmail: String) async throws -> (room: ConsultRoom, created: Bool) {
        if let room = try await findConsultRoom(shopEmail: shopEmail, visitorEmail: visitorEmail) { return (room, false) }
        let now = Timestamp.nowMillis()
        let created = try await database.transaction { tx -> Bool in
            _ = try await tx.query("INSERT INTO chat_shop_users (email, created_at) VALUES (?, ?) ON CONFLICT (email) DO NOTHING",
                                   [.text(shopEmail), .int(now)])
            _ = try await tx.query("INSERT INTO chat_visitor_users (email, created_at) VALUES (?, ?) ON CONFLICT (email) DO NOTHING",
                                   [.text(visitorEmail), .int(now)])
            let rows = try await tx.query(
                """
                INSERT INTO chat_consult_rooms (shop_user_id, visitor_user_id, created_at)
                SELECT s.id, v.id, ? FROM chat_shop_users s, chat_visitor_users v WHERE s.email = ? AND v.email = ?
                ON CONFLICT (shop_user_id, visitor_user_id) DO NOTHING RETURNING id
                """,
                [.int(now), .text(shopEmail), .text(visitorEmail)])
            return !rows.isEmpty
        }
        guard let room = try await findConsultRoom(shopEmail: shopEmail, visitorEmail: visitorEmail) else {
            throw ChatError.unavailable("room could not be created")
        }
        return (room, created)
    }

    static let consultSelect = """
        SELECT r.id, s.email, v.email, r.created_at FROM chat_consult_rooms r
        JOIN chat_shop_users s ON s.id = r.shop_user_id JOIN chat_visitor_users v ON v.id = r.visitor_user_id
        """

    /// The consultation room of a (shop, visitor) pair, if there is one.
    package func findConsultRoom(shopEmail: String, visitorEmail: String) async throws -> ConsultRoom? {
        try await database.query(Self.consultSelect + " WHERE s.email = ? AND v.email = ?", [.text(shopEmail), .text(visitorEmail)])
            .first.map(Self.consultRoom)
    }

    /// A consultation room by id.
    package func consultRoom(id: Int64) async throws -> ConsultRoom? {
        if let room = consultRoomsByID[id] { return room }
        let room = try await database.query(Self.consultSelect + " WHERE r.id = ?", [.int(id)]).first.map(Self.consultRoom)
        if let room { consultRoomsByID.set(id, room) }
        return room
    }

    /// The rooms of a user in a role, each with the seq that user has read.
    package func consultRooms(email: String, role: UserRole) async throws -> [ConsultRoom] {
        let column = role == .shop ? "s.email" : "v.email"
        let rows = try await database.query(
            """
            SELECT r.id, s.email, v.email, r.created_at, COALESCE(m.read_seq, 0) FROM chat_consult_rooms r
            JOIN chat_shop_users s ON s.id = r.shop_user_id JOIN chat_visitor_users v ON v.id = r.visitor_user_id
            LEFT JOIN chat_read_marks m ON m.room_id = r.id AND m.email = ?
            WHERE \(column) = ? ORDER BY r.id
            """,
            [.text(email), .text(email)])
        return rows.map { row in
            var room = Self.consultRoom(row)
            room.readSeq = row[4].int ?? 0
            return room
        }
    }

    /// Records that `email` has read room `id` up to `seq` (never moving backwards); returns the mark.
    package func markRead(roomID: Int64, email: String, seq: Int64) async throws -> Int64 {
        try await database.transaction { tx in
            _ = try await tx.query(
                """
                INSERT INTO chat_read_marks (room_id, email, read_seq) VALUES (?, ?, ?)
                ON CONFLICT (room_id, email) DO UPDATE SET read_seq = CASE WHEN excluded.read_seq > chat_read_marks.read_seq
                THEN excluded.read_seq ELSE chat_read_marks.read_seq END
                """,
                [.int(roomID), .text(email), .int(seq)])
            return try await tx.query("SELECT read_seq FROM chat_read_marks WHERE room_id = ? AND email = ?",
                                      [.int(roomID), .text(email)]).first?.first?.int ?? seq
        }
    }

    static func consultRoom(_ row: [SQLValue]) -> ConsultRoom {
        ConsultRoom(id: row[0].int ?? 0, shopUserEmail: row[1].string ?? "", visitorUserEmail: row[2].string ?? "", createdAt: row[3].int ?? 0)
    }

    /// A named room as stored.
    package struct Room: Sendable, Equatable {
        package var id: Int64
        package var kind: String
        package var name: String
        package var createdAt: Int64
    }

    /// Gets the named room or creates it; safe under concurrent callers (the unique key decides).
    package func getOrCreate(kind: String, name: String) async throws -> (room: Room, created: Bool) {
        if let room = try await find(kind: kind, name: name) { return (room, false) }
        // One statement, so no explicit transaction: the unique key decides between concurrent creators.
        let now = Timestamp.nowMillis()
        let rows = try await database.write(
            "INSERT INTO chat_rooms (kind, name, created_at) VALUES (?, ?, ?) ON CONFLICT (kind, name) DO NOTHING RETURNING id",
            [.text(kind), .text(name), .int(now)])
        if let id = rows.first?.first?.int {
            let room = Room(id: id, kind: kind, name: name, createdAt: now)
            namedRooms.set(kind + "\u{0}" + name, room)
            return (room, true)
        }
        let inserted = false
        guard let room = try await find(kind: kind, name: name) else {
            throw ChatError.unavailable("room could not be created")
        }
        return (room, inserted)
    }

    /// A named room by kind and name.
    package func find(kind: String, name: String) async throws -> Room? {
        let key = kind + "\u{0}" + name
        if let room = namedRooms[key] { return room }
        let rows = try await database.query("SELECT id, kind, name, created_at FROM chat_rooms WHERE kind = ? AND name = ?",
                                            [.text(kind), .text(name)])
        let room = rows.first.map { Room(id: $0[0].int ?? 0, kind: $0[1].string ?? "", name: $0[2].string ?? "", createdAt: $0[3].int ?? 0) }
        if let room { namedRooms.set(key, room) }
        return room
    }
}
