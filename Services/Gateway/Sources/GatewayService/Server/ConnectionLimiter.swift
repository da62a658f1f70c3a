import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Caps the gateway's WebSockets below the process's open-files limit: a Swift server that runs out of
/// file descriptors crashes inside libdispatch, so past the cap new upgrades get 503 and the sockets already
/// open keep being served.
final class ConnectionLimiter: Sendable {
    let maximum: Int
    private let active = Atomic<Int>(0)

    init(maximum: Int) {
        self.maximum = maximum
    }

    /// The default: the soft open-files limit less a reserve for the broker, HTTP requests and the runtime.
    static func defaultMaximum() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < UInt64(Int32.max) else { return 1_000_000 }
        return max(16, Int(limit.rlim_cur) - 512)
    }

    var count: Int { active.load(ordering: .relaxed) }
    var isFull: Bool { count >= maximum }
    func enter() { active.add(1, ordering: .relaxed) }
    func leave() { active.subtract(1, ordering: .relaxed) }
}
