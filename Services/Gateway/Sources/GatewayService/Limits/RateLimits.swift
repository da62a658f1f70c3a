import NIOCore
import Synchronization

/// The monotonic clock the limits read (nanoseconds).
enum LimitClock {
    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }
}

/// `CHAT_RATE_PER_SECOND` / `CHAT_RATE_BURST`: one token bucket per user on this gateway, shared by the user's
/// sockets (a user is the token's `sub`; an anonymous socket is its own user). An entry lives while the user
/// has a socket here. Sockets of every event loop take from it, hence the lock (one per client frame).
final class UserRateLimits: Sendable {
    let rate: Double
    let burst: Double
    private struct Entry {
        var bucket: TokenBucket
        var sockets: Int
    }
    private let users = Mutex<[String: Entry]>([:])

    /// Nil when the limit is off (`CHAT_RATE_PER_SECOND=0`).
    init?(perSecond: Int, burst: Int) {
        guard perSecond > 0 else { return nil }
        self.rate = Double(perSecond)
        self.burst = Double(max(1, burst))
    }

    /// A socket of `user` opened on this gateway.
    func attach(_ user: String) {
        let now = LimitClock.now()
        users.withLock { users in
            users[user, default: Entry(bucket: TokenBucket(rate: rate, burst: burst, now: now), sockets: 0)].sockets += 1
        }
    }

    /// A socket of `user` closed; the user's bucket goes with its last socket.
    func detach(_ user: String) {
        users.withLock { users in
            guard var entry = users[user] else { return }
            entry.sockets -= 1
            users[user] = entry.sockets > 0 ? entry : nil
        }
    }

    /// One client frame of `user`.
    func take(_ user: String, now: UInt64 = LimitClock.now()) -> TokenBucket.Decision {
        users.withLock { users in
            guard users[user] != nil else { return .allowed }
            return users[user]!.bucket.take(now: now)
        }
    }

    var userCount: Int { users.withLock { $0.count } }
}

/// `CHAT_CONNECT_RATE_PER_SECOND`: one token bucket per client address for WebSocket upgrades (burst twice the
/// rate). Buckets that are full again are dropped once there are many, so a scan of addresses costs bounded memory.
final class ConnectRateLimits: Sendable {
    let rate: Double
    let burst: Double
    private let addresses = Mutex<[String: TokenBucket]>([:])
    static let pruneAbove = 4096

    init?(perSecond: Int) {
        guard perSecond > 0 else { return nil }
        self.rate = Double(perSecond)
        self.burst = Double(perSecond * 2)
    }

    func take(_ address: String, now: UInt64 = LimitClock.now()) -> TokenBucket.Decision {
        addresses.withLock { addresses in
            if addresses.count > Self.pruneAbove {
                addresses = addresses.filter { _, bucket in var bucket = bucket; return !bucket.isFull(now: now) }
            }
            return addresses[address, default: TokenBucket(rate: rate, burst: burst, now: now)].take(now: now)
        }
    }

    var addressCount: Int { addresses.withLock { $0.count } }
}

/// A socket's refusals: one that goes on sending while refused (more than `limit` refusals within `window`)
/// is closed with 4429.
struct RefusalWindow: Sendable {
    static let limit = 100
    static let window: UInt64 = 10_000_000_000
    private var start: UInt64 = 0
    private var count = 0

    /// Counts a refusal; true when the socket has gone past the limit.
    mutating func refused(now: UInt64) -> Bool {
        if count == 0 || now - start > Self.window {
            start = now
            count = 0
        }
        count += 1
        return count > Self.limit
    }
}
