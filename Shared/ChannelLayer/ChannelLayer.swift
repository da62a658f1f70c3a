import ChatProtocol
import NIOCore
import Synchronization

/// A message on the channel layer: an already-encoded frame and, for room broadcasts, its sequence number.
package struct ChannelMessage: Sendable {
    package var body: ByteBuffer
    package var group: String?
    package var seq: Int64?
    /// The whole WebSocket frame of `body` (header included), encoded once for every socket of the room
    /// (``WebSocketWire``); nil when each socket frames it itself.
    package var wire: ByteBuffer?

    package init(body: ByteBuffer, group: String? = nil, seq: Int64? = nil, wire: ByteBuffer? = nil) {
        self.body = body
        self.group = group
        self.seq = seq
        self.wire = wire
    }
}

/// Django Channels' channel layer: groups of channels (here, of sockets), added to, discarded from and sent to.
///
/// `groupAdd` returns once messages sent to the group afterwards reach the member (for AMQP: the
/// binding is confirmed by the broker), which is what lets a joining socket read history without a gap.
package protocol ChannelLayer: Sendable {
    func groupAdd(_ group: String, channel: any GroupMember) async throws
    func groupDiscard(_ group: String, channel: any GroupMember) async throws
    func groupSend(_ group: String, message: ChannelMessage) async throws
}

/// Something that belongs to groups and receives what is sent to them: in the gateway, a WebSocket
/// connection that writes straight to its socket.
package protocol GroupMember: AnyObject, Sendable {
    /// Unique within the process (``Hub/allocateID()``).
    var memberID: Int { get }
    /// The event loop `deliver` must be called on, or nil when any thread will do. The hub calls the
    /// members of one loop together, with one hop to that loop per dispatch rather than one per member.
    var deliveryLoop: (any EventLoop)? { get }
    /// Takes messages in order (a run of a room's messages arrives as one call).
    func deliver(_ messages: [ChannelMessage])
    /// Takes persistence's acks of messages this member sent, on its loop.
    func acknowledge(_ acks: [MessageAck])
}

extension GroupMember {
    package func acknowledge(_ acks: [MessageAck]) {}
}

/// A channel layer inside one process: for unit tests of pure logic, never as proof the system works.
package final class InMemoryChannelLayer: ChannelLayer {
    package let hub: Hub

    package init(hub: Hub = Hub()) {
        self.hub = hub
    }

    package func groupAdd(_ group: String, channel: any GroupMember) async throws {
        try await hub.add(group, channel, onFirstMember: {})
    }

    package func groupDiscard(_ group: String, channel: any GroupMember) async throws {
        try await hub.remove(group, channel, onLastMember: {})
    }

    package func groupSend(_ group: String, message: ChannelMessage) async throws {
        var message = message
        message.group = group
        hub.dispatch(message, to: group)
    }
}
