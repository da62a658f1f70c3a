import ChatStorage
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Keeps a second persistence process off an SQLite file: SQLite is the embedded database of one machine,
/// and its single writer is the one that holds an exclusive `flock` on `<database>.writer-lock`. Another
/// process waits as a standby and takes over when the holder exits (the kernel drops the lock with the
/// process, SIGKILL included). PostgreSQL needs none: its writers share the partitions.
final class WriterLock: Sendable {
    let path: String
    /// Set once, when the lock is taken; the descriptor stays open (and the lock held) until the process ends.
    private let descriptor = Mutex<Int32>(-1)

    init(path: String) {
        self.path = path
    }

    /// The lock an SQLite database URL needs, or nil (PostgreSQL, or SQLite in memory).
    static func forDatabase(url: String) -> WriterLock? {
        guard let path = sqlitePath(url: url), path != ":memory:" else { return nil }
        return WriterLock(path: path + ".writer-lock")
    }

    /// Takes the lock if nobody holds it; true when this process holds it (now or already).
    func tryAcquire() -> Bool {
        descriptor.withLock { fd in
            if fd >= 0 { return true }
            let opened = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
            guard opened >= 0 else { return false }
            if flock(opened, LOCK_EX | LOCK_NB) != 0 {
                Glibc.close(opened)
                return false
            }
            fd = opened
            return true
        }
    }
}
