import ChatProtocol
import Synchronization

/// Where the persistence service keeps messages: table `chat_messages`, one row per message,
/// unique on `id` (idempotent writes), on `(grp, seq)` (per-room order) and on `(grp, client_id)` (one message
/// per client id in a room, so a client's resend stores nothing new).
package final class MessageStore: Sendable {
    package let database: any SQLDatabase
    /// The next seq of the rooms this process has written to. The writer is the queue's single active
    /// consumer, so between its own writes nobody else assigns seqs; should another instance have written
    /// meanwhile (a failover and back), the insert fails on `UNIQUE (grp, seq)`, the cache is dropped and the
    /// batch is stored again from the table's own maxima.
    private let nextSeqCache = Mutex<[String: Int64]>([:])

    package init(database: any SQLDatabase) {
        self.database = database
    }

    /// Creates or migrates the schema (versioned in `chat_schema`, one row per applied step).
    package func migrate() async throws {
        try await Migrations.apply(component: "messages", steps: [
            """
            CREATE TABLE IF NOT EXISTS chat_messages (
                id TEXT PRIMARY KEY,
                grp TEXT NOT NULL,
                seq BIGINT NOT NULL,
                sender TEXT,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                UNIQUE (grp, seq)
            )
            """,
            "ALTER TABLE chat_messages ADD COLUMN client_id TEXT",
            // Partial: a message without a client id costs no entry in it.
            "CREATE UNIQUE INDEX IF NOT EXISTS chat_messages_client ON chat_messages (grp, client_id) WHERE client_id IS NOT NULL",
        ], on: database)
    }

    /// Stores a batch in one transaction and returns every message as stored, in the batch's order.
    /// A message whose id is already stored (a redelivery), or whose `client_id` its room already has (a client's
    /// resend, or the same resend twice in the batch), is not written again: the stored row is returned.
    /// `checkExisting` may be false for a batch none of whose messages was ever delivered before: it saves
    /// a query, and should an id exist after all, the insert fails on the primary key and nothing is written
    /// (the caller then stores again with the check).
    package func store(_ batch: [InboundChatMessage], checkExisting: Bool = true) async throws -> [StoredChatMessage] {
        if batch.isEmpty { return [] }
        if !checkExisting, batch.count <= Self.rowsPerInsert, let stored = try await storeInOneStatement(batch) { return stored }
        let result: ([StoredChatMessage], [String: Int64])
        do {
            result = try await database.transaction { tx in
                var (stored, byClientID) = checkExisting ? try await existingRows(of: batch, tx) : ([:], [:])
                var nextSeq = try await nextSeqs(of: Set(batch.filter { stored[$0.id] == nil }.map(\.group)), tx)
                var inserts: [StoredChatMessage] = []
                for message in batch where stored[message.id] == nil {
                    if let id = message.clientID, let earlier = byClientID[ClientKey(group: message.group, id: id)] {
                        stored[message.id] = earlier  // the same client id earlier in this batch
                        continue
                    }
                    let seq = nextSeq[message.group]!
                    nextSeq[message.group] = seq + 1
                    let row = StoredChatMessage(id: message.id, group: message.group, seq: seq, sender: message.sender,
                                                text: message.text, createdAt: message.receivedAt, clientID: message.clientID)
                    stored[message.id] = row
                    if let id = message.clientID { byClientID[ClientKey(group: message.group, id: id)] = row }
                    inserts.append(row)
                }
                for chunk in inserts.chunks(of: Self.rowsPerInsert) {
                    let (sql, binds) = Self.insertStatement(Array(chunk))
                    _ = try await tx.query(sql, binds)
                }
                return (batch.map { stored[$0.id]! }, nextSeq)
            }
        } catch {
            nextSeqCache.withLock { $0 = [:] }
            throw error
        }
        nextSeqCache.withLock { cache in
            if cache.count > 100_000 { cache = [:] }
            cache.merge(result.1) { _, new in new }
        }
        return result.0
    }

    /// The rows a batch has already: by message id (redeliveries), and by (room, client id) (a client's resends),
    /// each message given the row of its client id when it has one. Read in chunks of 500, under every database's
    /// bind-parameter limit.
    private func existingRows(of batch: [InboundChatMessage], _ tx: any SQLTransaction) async throws
        -> (byID: [String: StoredChatMessage], byClientID: [ClientKey: StoredChatMessage]) {
        var stored: [String: StoredChatMessage] = [:]
        for chunk in Array(Set(batch.map(\.id))).chunks(of: 500) {
            let rows = try await tx.query("SELECT \(Self.columns) FROM chat_messages WHERE id IN (\(Self.marks(chunk.count)))",
                                          chunk.map { .text($0) })
            for row in rows { let m = Self.message(row); stored[m.id] = m }
        }
        var byClientID: [ClientKey: StoredChatMessage] = [:]
        for chunk in Array(Set(batch.filter { stored[$0.id] == nil }.compactMap(\.clientID))).chunks(of: 500) {
            let rows = try await tx.query("SELECT \(Self.columns) FROM chat_messages WHERE client_id IN (\(Self.marks(chunk.count)))",
                                          chunk.map { .text($0) })
            for row in rows { let m = Self.message(row); if let id = m.clientID { byClientID[ClientKey(group: m.group, id: id)] = m } }
        }
        for message in batch where stored[message.id] == nil {
            if let id = message.clientID, let row = byClientID[ClientKey(group: message.group, id: id)] { stored[message.id] = row }
        }
        return (stored, byClientID)
    }

    /// The next seq of each room: from the cache, else from the database in one query per 500 rooms.
    private func nextSeqs(of groups: Set<String>, _ tx: any SQLTransaction) async throws -> [String: Int64] {
        var nextSeq = nextSeqCache.withLock { cache in
            var known: [String: Int64] = [:]
            for group in groups { if let seq = cache[group] { known[group] = seq } }
            return known
        }
        for chunk in groups.filter({ nextSeq[$0] == nil }).sorted().chunks(of: 500) {
            for group in chunk { nextSeq[group] = 1 }
            let rows = try await tx.query("SELECT grp, MAX(seq) FROM chat_messages WHERE grp IN (\(Self.marks(chunk.count))) GROUP BY grp",
                                          chunk.map { .text($0) })
            for row in rows { if let g = row[0].string, let max = row[1].int { nextSeq[g] = max + 1 } }
        }
        return nextSeq
    }

    /// `?,?,…`: `count` bind markers.
    static func marks(_ count: Int) -> String { Array(repeating: "?", count: count).joined(separator: ",") }

    /// A room's client id.
    struct ClientKey: Hashable {
        var group: String
        var id: String
    }

    /// The columns ``message(_:)`` reads, in its order.
    static let columns = "id, grp, seq, sender, body, created_at, client_id"

    /// Rows per INSERT statement (7 binds each: well under every bind-parameter limit).
    static let rowsPerInsert = 200

    /// The common case, in one statement and one round trip to the database instead of a transaction's
    /// three (BEGIN, INSERT, COMMIT): a first delivery (nothing to look up) of at most one INSERT's rows, all
    /// of whose rooms have their next seq cached. A single statement is atomic by itself. Returns nil when
    /// the batch does not qualify; a failure drops the cache, like the transaction's.
    func storeInOneStatement(_ batch: [InboundChatMessage]) async throws -> [StoredChatMessage]? {
        let planned = nextSeqCache.withLock { cache -> ([StoredChatMessage], [String: Int64])? in
            var nextSeq: [String: Int64] = [:]
            var rows: [StoredChatMessage] = []
            rows.reserveCapacity(batch.count)
            for message in batch {
                guard let seq = nextSeq[message.group] ?? cache[message.group] else { return nil }
                nextSeq[message.group] = seq + 1
                rows.append(StoredChatMessage(id: message.id, group: message.group, seq: seq, sender: message.sender,
                                              text: message.text, createdAt: message.receivedAt, clientID: message.clientID))
            }
            return (rows, nextSeq)
        }
        guard let (rows, nextSeq) = planned, Set(rows.lazy.map(\.id)).count == rows.count else { return nil }
        let (sql, binds) = Self.insertStatement(rows)
        do {
            _ = try await database.write(sql, binds)
        } catch {
            nextSeqCache.withLock { $0 = [:] }
            throw error
        }
        nextSeqCache.withLock { cache in cache.merge(nextSeq) { _, new in new } }
        return rows
    }

    static func insertStatement(_ rows: [StoredChatMessage]) -> (String, [SQLValue]) {
        let values = Array(repeating: "(?,?,?,?,?,?,?)", count: rows.count).joined(separator: ",")
        var binds: [SQLValue] = []
        binds.reserveCapacity(rows.count * 7)
        for m in rows {
            binds += [.text(m.id), .text(m.group), .int(m.seq), m.sender.map { .text($0) } ?? .null, .text(m.text), .int(m.createdAt),
                      m.clientID.map { .text($0) } ?? .null]
        }
        return ("INSERT INTO chat_messages (\(columns)) VALUES \(values)", binds)
    }

    /// The last `limit` messages of a room before `beforeSeq` (all when nil), oldest first.
    package func history(group: String, beforeSeq: Int64? = nil, limit: Int) async throws -> [StoredChatMessage] {
        let rows = try await database.query(
            "SELECT \(Self.columns) FROM chat_messages WHERE grp = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            [.text(group), .int(beforeSeq ?? Int64.max), .int(Int64(limit))])
        return rows.map(Self.message).reversed()
    }

    /// Up to `limit` messages of a room after `afterSeq`, oldest first, and the room's last seq (0 for none).
    package func messages(group: String, afterSeq: Int64, limit: Int) async throws -> (messages: [StoredChatMessage], lastSeq: Int64) {
        let rows = try await database.query(
            "SELECT \(Self.columns) FROM chat_messages WHERE grp = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
            [.text(group), .int(afterSeq), .int(Int64(limit))])
        let last = try await database.query("SELECT MAX(seq) FROM chat_messages WHERE grp = ?", [.text(group)]).first?.first?.int ?? 0
        return (rows.map(Self.message), last)
    }

    /// Each room's last message and how many messages after `afterSeq` came from someone other than `reader`.
    package func summaries(_ queries: [RoomSummaryQuery]) async throws -> [RoomSummary] {
        var out: [RoomSummary] = []
        for query in queries {
            let last = try await database.query(
                "SELECT \(Self.columns) FROM chat_messages WHERE grp = ? ORDER BY seq DESC LIMIT 1",
                [.text(query.group)]).first.map(Self.message)
            let unread = try await database.query(
                "SELECT COUNT(*) FROM chat_messages WHERE grp = ? AND seq > ? AND (sender IS NULL OR sender <> ?)",
                [.text(query.group), .int(query.afterSeq), .text(query.reader)]).first?.first?.int ?? 0
            out.append(RoomSummary(group: query.group, lastSeq: last?.seq ?? 0, lastMessage: last, unread: Int(unread)))
        }
        return out
    }

    /// Whether the database answers at all: tells a batch it refuses from a database that is down.
    package func isReachable() async -> Bool {
        // Any error is the answer "no": the caller only asks whether the database is there.
        (try? await database.query("SELECT 1", [])) != nil
    }

    /// How many messages a room has stored (for tests and checks).
    package func count(group: String) async throws -> Int {
        let rows = try await database.query("SELECT COUNT(*) FROM chat_messages WHERE grp = ?", [.text(group)])
        return Int(rows.first?.first?.int ?? 0)
    }

    static func message(_ row: [SQLValue]) -> StoredChatMessage {
        StoredChatMessage(id: row[0].string ?? "", group: row[1].string ?? "", seq: row[2].int ?? 0, sender: row[3].string,
                          text: row[4].string ?? "", createdAt: row[5].int ?? 0, clientID: row.count > 6 ? row[6].string : nil)
    }
}

extension Array {
    /// The array in consecutive pieces of at most `size` elements.
    func chunks(of size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
