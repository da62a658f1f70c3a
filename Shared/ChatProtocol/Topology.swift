/// Names of the AMQP exchanges, queues and headers the services share (docs/amqp-topology.md).
public enum ChatTopology {
    /// Direct exchange: gateways publish every accepted client message here (routing key `message`).
    public static let inboundExchange = "chat.inbound"
    public static let inboundRoutingKey = "message"
    /// Durable queue of the persistence service (single active consumer keeps per-room order).
    public static let inboundQueue = "chat.persistence.messages"
    /// Direct exchange of the channel layer's groups: routing key = group key, bound by gateways.
    public static let groupsExchange = "chat.groups"
    /// Request queues (request/reply, reply to the caller's own queue with a correlation id).
    public static let historyQueue = "chat.persistence.history"
    public static let roomsQueue = "chat.rooms.requests"

    /// Header carrying the full group name (routing keys may be hashed).
    public static let groupHeader = "x-group"
    /// Header carrying the per-room sequence number of a broadcast, or the first one of a history reply.
    public static let seqHeader = "x-seq"
    /// Header carrying the process-local channel of a direct `send`.
    public static let channelHeader = "x-channel"
    public static let countHeader = "x-count"

    /// Exclusive, auto-deleted queue of one gateway process: group broadcasts, direct sends and replies.
    public static func gatewayQueue(_ gatewayID: String) -> String { "chat.gateway." + gatewayID }
}

/// Requests to the room service (JSON on `chat.rooms.requests`).
public struct RoomRequest: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable {
        /// A socket joins a room: get-or-create the room, count the member; replies.
        case join
        /// A socket leaves; no reply.
        case leave
        /// A gateway's periodic snapshot of its members per room; no reply.
        case heartbeat
        /// How many members a room has; replies.
        case members
    }
    public var op: Operation
    public var gateway: String
    public var room: String?
    /// For heartbeats: members per room on that gateway.
    public var rooms: [String: Int]?

    public init(op: Operation, gateway: String, room: String? = nil, rooms: [String: Int]? = nil) {
        self.op = op
        self.gateway = gateway
        self.room = room
        self.rooms = rooms
    }
}

public struct RoomReply: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var roomID: Int64?
    public var room: String?
    public var created: Bool?
    public var members: Int?

    public init(ok: Bool, error: String? = nil, roomID: Int64? = nil, room: String? = nil, created: Bool? = nil, members: Int? = nil) {
        self.ok = ok
        self.error = error
        self.roomID = roomID
        self.room = room
        self.created = created
        self.members = members
    }
}

/// A history request to the persistence service. The reply's body is the frames, one per line, oldest
/// first; its `x-seq` header is the first frame's seq (seqs are contiguous) and `x-count` their number.
public struct HistoryRequest: Codable, Sendable, Equatable {
    public var group: String
    public var limit: Int
    public var beforeSeq: Int64?

    public init(group: String, limit: Int, beforeSeq: Int64? = nil) {
        self.group = group
        self.limit = limit
        self.beforeSeq = beforeSeq
    }
}
