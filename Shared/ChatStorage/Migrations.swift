import ChatProtocol
import Synchronization

/// Applies numbered schema steps once each, recording them in `chat_schema`.
package enum Migrations {
    /// The advisory lock that serializes schema changes across processes on PostgreSQL: concurrent
    /// `CREATE TABLE IF NOT EXISTS` race inside PostgreSQL (a unique violation on `pg_type`).
    static let postgresLockKey: Int64 = 0x6368_6174_5343_484D  // "chatSCHM"

    /// Runs the steps of `component` not yet applied, in order, recording each in `chat_schema`.
    package static func apply(component: String, steps: [String], on database: any SQLDatabase) async throws {
        _ = try await database.transaction { tx in
            // Held until the transaction ends; every instance of every service waits here for the one before it.
            if database.dialect == .postgres { _ = try await tx.query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock(?)) AS schema_lock", [.int(postgresLockKey)]) }
            _ = try await tx.query("CREATE TABLE IF NOT EXISTS chat_schema (component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))", [])
            let applied = try await tx.query("SELECT version FROM chat_schema WHERE component = ?", [.text(component)])
            let done = Set(applied.compactMap { $0.first?.int })
            for (index, step) in steps.enumerated() where !done.contains(Int64(index + 1)) {
                _ = try await tx.query(step, [])
                _ = try await tx.query("INSERT INTO chat_schema (component, version) VALUES (?, ?)", [.text(component), .int(Int64(index + 1))])
            }
            return true
        }
    }
}
