import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Close codes the gateway uses (docs/protocol.md). Each follows an `{"error"}` frame saying why.
enum CloseCode {
    /// The room name or id is invalid.
    static let invalidRoom = WebSocketErrorCode.unknown(4400)
    /// No token, or a token that is expired, malformed or badly signed.
    static let unauthenticated = WebSocketErrorCode.unknown(4401)
    /// The caller is not a participant of the room.
    static let forbidden = WebSocketErrorCode.unknown(4403)
    /// The room does not exist.
    static let notFound = WebSocketErrorCode.unknown(4404)
    /// The socket fell `CHAT_MAILBOX_CAPACITY` messages behind.
    static let slowConsumer = WebSocketErrorCode.unknown(4008)
    /// The socket went on sending past its rate limit, or its user has too many sockets.
    static let tooMany = WebSocketErrorCode.unknown(4429)
    /// A service it needs (rooms, broker) did not answer: try again later.
    static let tryAgainLater = WebSocketErrorCode.unknown(1013)
}

/// The two WebSocket endpoints, told apart by the upgrade request's path.
enum SocketEndpoint: Sendable, Equatable {
    /// `/ws/chat/<room>/`: the tutorial's named rooms (the name as it came, percent-encoded).
    case namedRoom(rawRoom: String)
    /// `/ws/room/<id>/messages`: a 1:1 consultation room.
    case consultRoom(rawID: String)

    init?(uri: String) {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let parts = path.split(separator: "/")
        if parts.count == 3, parts[0] == "ws", parts[1] == "chat" {
            self = .namedRoom(rawRoom: String(parts[2]))
        } else if parts.count == 4, parts[0] == "ws", parts[1] == "room", parts[3] == "messages" {
            self = .consultRoom(rawID: String(parts[2]))
        } else {
            return nil
        }
    }
}

extension SocketEndpoint {
    /// A query parameter of the upgrade request's URI, percent-decoded (`since`, `token`).
    static func queryValue(_ name: String, in uri: String) -> String? {
        guard let query = uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.first == Substring(name) {
                let value = parts.count > 1 ? String(parts[1]) : ""
                return value.removingPercentEncoding ?? value
            }
        }
        return nil
    }
}
