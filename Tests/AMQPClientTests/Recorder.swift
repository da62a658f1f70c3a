import ChannelLayer
import NIOCore
import Synchronization

/// A group member that records what the broker delivered to it, polled by the tests.
final class Recorder: GroupMember {
    let memberID: Int
    private let received = Mutex<[ChannelMessage]>([])

    init(id: Int) { memberID = id }

    var deliveryLoop: (any EventLoop)? { nil }
    func deliver(_ messages: [ChannelMessage]) { received.withLock { $0 += messages } }

    /// What it has received once it holds `count`, or what it has after 10 s.
    func first(_ count: Int) async throws -> [ChannelMessage] {
        for _ in 0..<1000 {
            let now = received.withLock { $0 }
            if now.count >= count { return now }
            try await Task.sleep(for: .milliseconds(10))
        }
        return received.withLock { $0 }
    }
}
