import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// What every socket of the gateway shares.
struct SocketServices: Sendable {
    let backend: GatewayBackend
    let authenticator: Authenticator
    let limiter: ConnectionLimiter
    /// Client frames per user (nil: no limit).
    let rates: UserRateLimits?
    let logger: Logger
    var configuration: GatewayConfiguration { backend.configuration }
}

/// A socket as a member of its room's group: deliveries hop to the socket's event loop (one hop per loop per
/// broadcast, see ``Hub/dispatch(_:to:)-([ChannelMessage],_)``) and are written there.
final class SocketMember: GroupMember {
    let memberID: Int
    let handler: NIOLoopBound<ChatSocketHandler>

    init(memberID: Int, handler: NIOLoopBound<ChatSocketHandler>) {
        self.memberID = memberID
        self.handler = handler
    }

    var deliveryLoop: (any EventLoop)? { handler.eventLoop }
    func deliver(_ messages: [ChannelMessage]) { handler.value.deliver(messages) }
    func acknowledge(_ acks: [MessageAck]) { handler.value.acknowledge(acks) }
}
