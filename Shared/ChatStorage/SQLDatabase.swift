import Foundation
import Logging
import NIOCore
import PostgresNIO
import SQLiteNIO
import ServiceLifecycle

/// A value bound to or read from SQL.
package enum SQLValue: Sendable, Equatable {
    case text(String)
    case int(Int64)
    case null

    /// The value when it is text.
    package var string: String? { if case .text(let s) = self { s } else { nil } }
    /// The value when it is an integer.
    package var int: Int64? { if case .int(let i) = self { i } else { nil } }
}

/// Which SQL the statements are written in (placeholders and upserts differ).
package enum SQLDialect: Sendable { case sqlite, postgres }

/// The little SQL the stores need, over SQLite (embedded, the default) or PostgreSQL. Statements are
/// written with `?` placeholders; the PostgreSQL backend numbers them.
package protocol SQLDatabase: Service {
    var dialect: SQLDialect { get }
    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]]
    /// Runs one writing statement on its own (it commits by itself).
    func write(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]]
    /// Runs `body` in one transaction; statements inside go through the `SQLTransaction` it gets.
    func transaction<T: Sendable>(_ body: @Sendable (any SQLTransaction) async throws -> T) async throws -> T
}

/// What a transaction's body runs its statements on.
package protocol SQLTransaction: Sendable {
    func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]]
}

/// A `CHAT_DATABASE_URL` the services cannot use.
package enum DatabaseConfigurationError: Error, CustomStringConvertible {
    case unsupportedURL(String)
    package var description: String {
        switch self {
        case .unsupportedURL(let url): "unsupported database URL '\(url)': use sqlite:PATH or postgres://user:pass@host:port/db"
        }
    }
}

/// Opens the database a URL names: `sqlite:PATH` (or `sqlite::memory:`) or `postgres://user:pass@host:port/db`.
/// `syncEveryCommit`: SQLite syncs its WAL at every commit (`synchronous=FULL`), for stores whose commit is
/// promised to survive a machine crash (the messages: their acks); otherwise `NORMAL` (synced at checkpoints).
package func openDatabase(url: String, logger: Logger, syncEveryCommit: Bool = false) async throws -> any SQLDatabase {
    if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
        return try PostgresDatabase(url: url, logger: logger)
    }
    if let path = sqlitePath(url: url) {
        return try await SQLiteDatabase.open(path: path, logger: logger, syncEveryCommit: syncEveryCommit)
    }
    throw DatabaseConfigurationError.unsupportedURL(url)
}

/// The file of an SQLite database URL (`sqlite:PATH` or `sqlite://PATH`; `:memory:` for none), or nil for another URL.
package func sqlitePath(url: String) -> String? {
    guard url.hasPrefix("sqlite:") else { return nil }
    let path = url.dropFirst("sqlite:".count)
    return String(path.hasPrefix("//") ? path.dropFirst(2) : path)
}

// MARK: SQLite

/// Embedded SQLite in WAL mode: one connection writes (transactions are serialized by an async lock),
/// another reads, so history reads never see a write transaction half done.
package final class SQLiteDatabase: SQLDatabase {
    /// SQLite's dialect.
    package let dialect = SQLDialect.sqlite
    let writer: SQLiteConnection
    let reader: SQLiteConnection
    /// Copies the WAL into the database file in the background (nil in memory): the writer never checkpoints
    /// itself, so no commit waits for a checkpoint's writes and fsync.
    let checkpointer: SQLiteConnection?
    let writeLock = AsyncLock()
    static let checkpointInterval: Duration = .milliseconds(500)

    init(writer: SQLiteConnection, reader: SQLiteConnection, checkpointer: SQLiteConnection? = nil) {
        self.writer = writer
        self.reader = reader
        self.checkpointer = checkpointer
    }

    /// Opens (or creates) the database file in WAL mode, with a writer and a reader connection.
    package static func open(path: String, logger: Logger, syncEveryCommit: Bool = false) async throws -> SQLiteDatabase {
        if path == ":memory:" {
            let connection = try await SQLiteConnection.open(storage: .memory, logger: logger)
            return SQLiteDatabase(writer: connection, reader: connection)
        }
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let writer = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        _ = try await Self.run(writer, "PRAGMA journal_mode=WAL", [])
        // FULL: every commit syncs the WAL, so an acked message survives a crash of the machine, not only of
        // the process (one sync per batch: a batch is one transaction). NORMAL syncs at checkpoints only: the
        // room service's rows, made again on first use, keep it (a sync per room created held up 1,000 joins/s).
        _ = try await Self.run(writer, syncEveryCommit ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", [])
        _ = try await Self.run(writer, "PRAGMA busy_timeout=5000", [])
        // Statement journals in memory: a multi-row insert inside a transaction writes one.
        _ = try await Self.run(writer, "PRAGMA temp_store=MEMORY", [])
        _ = try await Self.run(writer, "PRAGMA wal_autocheckpoint=0", [])
        let reader = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        _ = try await Self.run(reader, "PRAGMA busy_timeout=5000", [])
        let checkpointer = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        _ = try await Self.run(checkpointer, "PRAGMA busy_timeout=5000", [])
        return SQLiteDatabase(writer: writer, reader: reader, checkpointer: checkpointer)
    }

    /// Checkpoints the WAL every half second (passive: it never blocks the writer or a reader) until graceful
    /// shutdown or cancellation, then closes the connections. The close runs in a task of its own, which
    /// cancellation cannot reach: the handles must be closed before they are released.
    package func run() async throws {
        if let checkpointer {
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                // Cut short by graceful shutdown: the final checkpoint in `close()` follows at once.
                _ = try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.checkpointInterval) }
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                // A passive checkpoint that fails (busy) is simply tried again at the next tick.
                _ = try? await Self.run(checkpointer, "PRAGMA wal_checkpoint(PASSIVE)", [])
            }
        } else {
            // Throws only when cancelled, which ends the wait the same way.
            try? await gracefulShutdown()
        }
        try await Task { try await self.close() }.value
    }

    /// Closes both connections.
    package func close() async throws {
        if let checkpointer {
            // Best effort: a WAL left behind is replayed by the next open, so nothing is lost if it fails.
            _ = try? await Self.run(checkpointer, "PRAGMA wal_checkpoint(TRUNCATE)", [])
            try await checkpointer.close()
        }
        try await writer.close()
        if reader !== writer { try await reader.close() }
    }

    package func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
        try await Self.run(reader, sql, binds)
    }

    package func write(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
        try await writeLock.withLock { try await Self.run(writer, sql, binds) }
    }

    package func transaction<T: Sendable>(_ body: @Sendable (any SQLTransaction) async throws -> T) async throws -> T {
        try await writeLock.withLock {
            _ = try await Self.run(writer, "BEGIN IMMEDIATE", [])
            do {
                let result = try await body(SQLiteTransaction(connection: writer))
                _ = try await Self.run(writer, "COMMIT", [])
                return result
            } catch {
                // The body's error is the one to report; a failed ROLLBACK leaves nothing committed either.
                _ = try? await Self.run(writer, "ROLLBACK", [])
                throw error
            }
        }
    }

    struct SQLiteTransaction: SQLTransaction {
        let connection: SQLiteConnection
        func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
            try await SQLiteDatabase.run(connection, sql, binds)
        }
    }

    static func run(_ connection: SQLiteConnection, _ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
        let data: [SQLiteData] = binds.map {
            switch $0 {
            case .text(let s): .text(s)
            case .int(let i): .integer(Int(i))
            case .null: .null
            }
        }
        let rows = RowCollector()
        try await connection.query(sql, data) { row in
            rows.append(row.columns.map { column -> SQLValue in
                switch column.data {
                case .integer(let i): .int(Int64(i))
                case .float(let d): .int(Int64(d))
                case .text(let s): .text(s)
                case .blob(let b): .text(String(buffer: b))
                case .null: .null
                }
            })
        }
        return rows.rows
    }
}

/// Collects rows from sqlite-nio's row callback (called on its thread pool, one row after another).
final class RowCollector: @unchecked Sendable {
    // Safety: sqlite-nio calls the row callback sequentially and `rows` is read only after the query returns.
    var rows: [[SQLValue]] = []
    func append(_ row: [SQLValue]) { rows.append(row) }
}

/// A FIFO async mutex for the SQLite writer.
actor AsyncLock {
    private var locked = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func withLock<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        if locked {
            await withCheckedContinuation { waiters.append($0) }
        }
        locked = true
        defer {
            if waiters.isEmpty { locked = false } else { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}

// MARK: PostgreSQL

/// PostgreSQL through postgres-nio's pooled client. `run()` runs the pool (it is a Service).
package final class PostgresDatabase: SQLDatabase {
    /// PostgreSQL's dialect.
    package let dialect = SQLDialect.postgres
    let client: PostgresClient
    let logger: Logger

    package init(url: String, logger: Logger) throws {
        guard let components = URLComponents(string: url), let host = components.host else {
            throw DatabaseConfigurationError.unsupportedURL(url)
        }
        var configuration = PostgresClient.Configuration(
            host: host, port: components.port ?? 5432,
            username: components.user ?? "postgres", password: components.password,
            database: components.path.isEmpty ? nil : String(components.path.dropFirst()),
            tls: .disable)
        configuration.options.maximumConnections = 8
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
    }

    package func run() async throws {
        await client.run()
    }

    package func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
        try await Self.collect(client.query(Self.postgresQuery(sql, binds), logger: logger))
    }

    package func write(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
        try await query(sql, binds)
    }

    package func transaction<T: Sendable>(_ body: @Sendable (any SQLTransaction) async throws -> T) async throws -> T {
        try await client.withTransaction(logger: logger) { connection in
            try await body(PostgresTransaction(connection: connection, logger: logger))
        }
    }

    struct PostgresTransaction: SQLTransaction {
        let connection: PostgresConnection
        let logger: Logger
        func query(_ sql: String, _ binds: [SQLValue]) async throws -> [[SQLValue]] {
            try await PostgresDatabase.collect(connection.query(PostgresDatabase.postgresQuery(sql, binds), logger: logger))
        }
    }

    static func postgresQuery(_ sql: String, _ binds: [SQLValue]) -> PostgresQuery {
        var numbered = ""
        numbered.reserveCapacity(sql.utf8.count + binds.count * 2)
        var index = 0
        for character in sql {
            if character == "?" {
                index += 1
                numbered += "$\(index)"
            } else {
                numbered.append(character)
            }
        }
        var bindings = PostgresBindings(capacity: binds.count)
        for bind in binds {
            switch bind {
            case .text(let s): bindings.append(s)
            case .int(let i): bindings.append(i)
            case .null: bindings.appendNull()
            }
        }
        return PostgresQuery(unsafeSQL: numbered, binds: bindings)
    }

    static func collect(_ sequence: PostgresRowSequence) async throws -> [[SQLValue]] {
        var rows: [[SQLValue]] = []
        for try await row in sequence {
            var values: [SQLValue] = []
            for cell in row {
                if cell.bytes == nil {
                    values.append(.null)
                    continue
                }
                switch cell.dataType {
                case .int2, .int4, .int8: values.append(.int(try cell.decode(Int64.self)))
                case .bool: values.append(.int(try cell.decode(Bool.self) ? 1 : 0))
                default: values.append(.text(try cell.decode(String.self)))
                }
            }
            rows.append(values)
        }
        return rows
    }
}
