import ChatProtocol
import Foundation

/// A gateway's report on the membership fanout (`chat.rooms.membership`): a socket joined or left a room, or
/// the gateway's whole state (its heartbeat), or that it stops. JSON, one per AMQP message.
package struct MembershipEvent: Codable, Sendable, Equatable {
    /// What happened: a socket joined or left, a gateway's periodic snapshot, or a gateway that stops.
    package enum Kind: String, Codable, Sendable {
        case join, leave, heartbeat
        /// The gateway stops (graceful shutdown): forget its members now.
        case stop
        /// The server API asks every gateway to close `user`'s sockets, saying `reason`.
        case disconnect
    }
    package var kind: Kind
    package var gateway: String
    /// For join and leave.
    package var room: String?
    /// For join and leave of a consultation room: who.
    package var email: String?
    /// For heartbeats: sockets per room on that gateway.
    package var rooms: [String: Int]?
    /// For heartbeats: consultation rooms' sockets per email.
    package var online: [String: [String: Int]]?
    /// For join and leave: the signed-in user of the socket (the token's `sub`), for the sockets-per-user cap.
    package var user: String?
    /// For heartbeats: sockets per signed-in user on that gateway.
    package var users: [String: Int]?
    /// For disconnect: what the closed sockets are told.
    package var reason: String?

    package init(kind: Kind, gateway: String, room: String? = nil, email: String? = nil, rooms: [String: Int]? = nil,
                online: [String: [String: Int]]? = nil, user: String? = nil, users: [String: Int]? = nil,
                reason: String? = nil) {
        self.kind = kind
        self.gateway = gateway
        self.room = room
        self.email = email
        self.rooms = rooms
        self.online = online
        self.user = user
        self.users = users
        self.reason = reason
    }

    /// Applies the event to a membership.
    package func apply(to membership: Membership) {
        switch kind {
        case .join: if let room { membership.join(gateway: gateway, room: room, email: email, user: user) }
        case .leave: if let room { membership.leave(gateway: gateway, room: room, email: email, user: user) }
        case .heartbeat: membership.heartbeat(gateway: gateway, rooms: rooms ?? [:], online: online ?? [:], users: users ?? [:])
        case .stop: membership.forget(gateway: gateway)
        case .disconnect: break  // for the gateways' sockets, not the membership
        }
    }
}

/// The presence frames sockets receive (docs/protocol.md).
package enum PresenceFrame {
    /// `{"type":"presence","room":R,"count":N}` on a named room's sockets.
    package static func named(room: String, count: Int) -> String {
        "{\"type\":\"presence\",\"room\":\(quoted(room)),\"count\":\(count)}"
    }

    /// `{"type":"presence","online":["<email>",...]}` on a consultation room's sockets (sorted).
    package static func consult(online: [String]) -> String {
        "{\"type\":\"presence\",\"online\":[\(online.sorted().map(quoted).joined(separator: ","))]}"
    }

    static func quoted(_ string: String) -> String { JSONWriter.quoted(string) }
}
