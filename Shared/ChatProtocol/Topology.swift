/// Names of the AMQP exchanges, queues and headers the services share (docs/amqp-topology.md).
public enum ChatTopology {
    /// Direct exchange: gateways publish every accepted client message here, routed by the partition of its
    /// room (routing key ``partitionRoutingKey(_:)``) to that partition's queue.
    public static let inboundExchange = "chat.inbound"
    /// Partitions when `CHAT_PERSIST_PARTITIONS` is not set; every gateway and persistence worker must agree.
    public static let defaultPartitions = 8
    /// Durable queue of one partition (single active consumer: one worker at a time keeps per-room order).
    public static func partitionQueue(_ partition: Int) -> String { "chat.persistence.p\(partition)" }
    public static func partitionRoutingKey(_ partition: Int) -> String { "p\(partition)" }
    /// The partition of a room: FNV-1a (64 bit) of its group name, modulo the partition count. Stable across
    /// processes and releases, since gateways and workers compute it apart.
    public static func partition(of group: String, count: Int) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in group.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return Int(hash % UInt64(max(1, count)))
    }
    /// Fanout exchange of the persistence workers' heartbeats, from which each computes who owns which partition.
    public static let workersExchange = "chat.persistence.workers"
    /// Exclusive queue of one persistence worker on ``workersExchange``.
    public static func workerQueue(_ workerID: String) -> String { "chat.persistence.worker." + workerID }
    /// Durable queue of messages the store refused on their own (header ``reasonHeader`` says why).
    public static let deadLetterQueue = "chat.dead"
    public static let reasonHeader = "x-reason"
    /// Fanout exchange of the gateways' joins, leaves and heartbeats: every room service instance (and every
    /// gateway, for presence) keeps the whole membership from it.
    public static let membershipExchange = "chat.rooms.membership"
    /// Exclusive queue of one room service instance on ``membershipExchange``.
    public static func roomsInstanceQueue(_ instanceID: String) -> String { "chat.rooms.instance." + instanceID }
    /// Header marking a membership event on a gateway's own queue.
    public static let membershipHeader = "x-membership"
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
    /// Header of a multi-room broadcast: one line per run, `<group>\t<first seq>\t<count>`, in body order.
    /// The message is published once with the first room's routing key and the others in `CC`.
    public static let runsHeader = "x-runs"
    /// RabbitMQ's sender-selected distribution: extra routing keys, each queue gets the message once.
    public static let ccHeader = "CC"
    /// On a broadcast: when the gateway received its earliest message (milliseconds since 1970), for the
    /// gateways' delivery latency.
    public static let receivedAtHeader = "x-received-at"

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
        /// Get-or-create the users and the consultation room of a (shop, visitor) pair; replies.
        case consultCreate = "consult.create"
        /// A consultation room by id; replies (`ok: false` with `notFound` when there is none).
        case consultGet = "consult.get"
        /// The consultation rooms of a user in a role, with the seq the user has read in each; replies.
        case consultList = "consult.list"
        /// A user has read a room up to a seq; replies.
        case consultRead = "consult.read"
    }
    public var op: Operation
    public var gateway: String
    public var room: String?
    /// For heartbeats: members per room on that gateway.
    public var rooms: [String: Int]?
    public var roomID: Int64?
    public var shopUserEmail: String?
    public var visitorUserEmail: String?
    public var email: String?
    public var role: UserRole?
    public var seq: Int64?

    public init(op: Operation, gateway: String, room: String? = nil, rooms: [String: Int]? = nil, roomID: Int64? = nil,
                shopUserEmail: String? = nil, visitorUserEmail: String? = nil, email: String? = nil, role: UserRole? = nil,
                seq: Int64? = nil) {
        self.op = op
        self.gateway = gateway
        self.room = room
        self.rooms = rooms
        self.roomID = roomID
        self.shopUserEmail = shopUserEmail
        self.visitorUserEmail = visitorUserEmail
        self.email = email
        self.role = role
        self.seq = seq
    }
}

public struct RoomReply: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var roomID: Int64?
    public var room: String?
    public var created: Bool?
    public var members: Int?
    public var notFound: Bool?
    public var consultRoom: ConsultRoom?
    public var consultRooms: [ConsultRoom]?

    public init(ok: Bool, error: String? = nil, roomID: Int64? = nil, room: String? = nil, created: Bool? = nil, members: Int? = nil,
                notFound: Bool? = nil, consultRoom: ConsultRoom? = nil, consultRooms: [ConsultRoom]? = nil) {
        self.ok = ok
        self.error = error
        self.roomID = roomID
        self.room = room
        self.created = created
        self.members = members
        self.notFound = notFound
        self.consultRoom = consultRoom
        self.consultRooms = consultRooms
    }
}

/// A history request to the persistence service. The reply's body is the frames, one per line, oldest
/// first; its `x-seq` header is the first frame's seq (seqs are contiguous) and `x-count` their number.
///
/// With `summaries` set instead, it asks for each room's last message and unread count; the reply's body is
/// a JSON array of ``RoomSummary``.
public struct HistoryRequest: Codable, Sendable, Equatable {
    public var group: String
    public var limit: Int
    public var beforeSeq: Int64?
    public var summaries: [RoomSummaryQuery]?

    public init(group: String, limit: Int, beforeSeq: Int64? = nil, summaries: [RoomSummaryQuery]? = nil) {
        self.group = group
        self.limit = limit
        self.beforeSeq = beforeSeq
        self.summaries = summaries
    }
}
