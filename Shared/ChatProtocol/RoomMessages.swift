/// A request to the room service (JSON on `chat.rooms.requests`), one case per operation; every one is answered
/// with a ``RoomReply``.
package enum RoomRequest: Codable, Sendable, Equatable {
    /// A socket joins a room: a named room is created on first use, a consultation room must exist (the
    /// gateway has checked the participant). Answered with ``RoomReply/joined(roomID:created:)``.
    case join(group: ChatGroup)
    /// Get-or-create the consultation room of a (shop, visitor) pair. Answered with ``RoomReply/consultRoom(room:created:)``.
    case consultCreate(shop: Email, visitor: Email)
    /// A consultation room by id. Answered with ``RoomReply/consultRoom(room:created:)`` or ``RoomReply/notFound``.
    case consultGet(id: Int64)
    /// The consultation rooms of a user in a role, with the seq the user has read in each. Answered with
    /// ``RoomReply/consultRooms(_:)``.
    case consultList(email: Email, role: UserRole)
    /// A user has read a room up to a seq. Answered with ``RoomReply/readUpTo(seq:)``, the mark now stored.
    case consultRead(roomID: Int64, email: Email, seq: Int64)
    /// Who is in a room (a group key) now, across every gateway: the room service keeps the whole membership
    /// from the gateways' fanout. Answered with ``RoomReply/presence(count:online:)``.
    case presence(group: String)

    /// The operation's name, for logs and the `op` label of `chat_rooms_requests_total`.
    package var operation: String {
        switch self {
        case .join: "join"
        case .consultCreate: "consult.create"
        case .consultGet: "consult.get"
        case .consultList: "consult.list"
        case .consultRead: "consult.read"
        case .presence: "presence"
        }
    }
}

/// The room service's answer to a ``RoomRequest``.
package enum RoomReply: Codable, Sendable, Equatable {
    /// The room is there (`roomID` for a named room; `created` when this join made it).
    case joined(roomID: Int64?, created: Bool)
    case consultRoom(room: ConsultRoom, created: Bool)
    case consultRooms([ConsultRoom])
    case readUpTo(seq: Int64)
    /// Sockets in the room, and the emails of those online (consultation rooms).
    case presence(count: Int, online: [String])
    case notFound
    /// The request was wrong (an invalid name or email): the reason is for the client.
    case refused(reason: String)
    /// The service could not do it (storage failed): the client should try again.
    case failed(reason: String)
}

/// A request to the persistence service's history queue (`chat.persistence.history`).
package enum HistoryRequest: Codable, Sendable, Equatable {
    /// Up to `limit` stored messages of a room, the newest before `beforeSeq` (or the newest of all), oldest
    /// first. The reply's body is their frames, one per line; its `x-seq` header is the first frame's seq
    /// (seqs are contiguous) and `x-count` their number.
    case messages(group: String, limit: Int, beforeSeq: Int64?)
    /// What a resuming socket missed: the stored messages with seq > `afterSeq`, oldest first, as for
    /// ``messages(group:limit:beforeSeq:)``, unless there are more than `limit` (then none, and the reply has
    /// `x-truncated`). Its `x-last-seq` header is the room's last seq either way, so the gateway can tell a reset.
    case after(group: String, afterSeq: Int64, limit: Int)
    /// Each room's last message and unread count; the reply's body is a JSON array of ``RoomSummary``.
    case summaries([RoomSummaryQuery])
}

/// Persistence's word to a sender's gateway that a message sent with a `client_id` is stored: the socket to tell,
/// and the stored id and seq (a resend's are those of the room's earlier message with that client id).
package struct MessageAck: Codable, Sendable, Equatable {
    package var socket: Int
    package var clientID: String
    package var id: String
    package var seq: Int64

    package init(socket: Int, clientID: String, id: String, seq: Int64) {
        self.socket = socket
        self.clientID = clientID
        self.id = id
        self.seq = seq
    }
}
