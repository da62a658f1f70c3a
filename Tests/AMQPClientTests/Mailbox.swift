import ChannelLayer
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

}
