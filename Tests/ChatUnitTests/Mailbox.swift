import ChannelLayer
import Logging
import NIOCore

/// A group member that keeps what it receives, read as an async sequence: the tests' stand-in for a socket.
final class Mailbox: GroupMember {
    let memberID: Int
    let messages: AsyncStream<ChannelMessage>
    private let continuation: AsyncStream<ChannelMessage>.Continuation

    init(id: Int) {
        memberID = id
        (messages, continuation) = AsyncStream.makeStream()
    }

    var deliveryLoop: (any EventLoop)? { nil }
    func deliver(_ messages: [ChannelMessage]) {
        for message in messages { continuation.yield(message) }
    }

    /// The bodies of the next `count` messages.
    func next(_ count: Int) async -> [String] {
        var out: [String] = []
        for await message in messages {
            out.append(String(buffer: message.body))
            if out.count == count { break }
        }
        return out
    }
}

extension Logger {
    /// For connections the tests point at port 1 on purpose: their reconnect warnings are expected.
    static var quiet: Logger {
        var logger = Logger(label: "test.quiet")
        logger.logLevel = .critical
        return logger
    }
}
