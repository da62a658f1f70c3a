/// Names of the AMQP exchanges, queues and headers the services share (docs/amqp-topology.md).
package enum ChatTopology {
    /// Direct exchange: gateways publish every accepted client message here, routed by the partition of its
    /// room (routing key ``partitionRoutingKey(_:)``) to that partition's queue.
    package static let inboundExchange = "chat.inbound"
    /// Partitions when `CHAT_PERSIST_PARTITIONS` is not set; every gateway and persistence worker must agree.
    /// Two: two workers share the writes, and a gateway's cut splits at most in two (each partition costs the
    /// broker a queue's work per cut; docs/benchmarks.md, issue 19).
    package static let defaultPartitions = 2
    /// Durable queue of one partition (single active consumer: one worker at a time keeps per-room order).
    package static func partitionQueue(_ partition: Int) -> String { "chat.persistence.p\(partition)" }
    /// The routing key of partition `partition` on ``inboundExchange``.
    package static func partitionRoutingKey(_ partition: Int) -> String { "p\(partition)" }
    /// The partition of a room: FNV-1a (64 bit) of its group name, modulo the partition count. Stable across
    /// processes and releases, since gateways and workers compute it apart.
    package static func partition(of group: String, count: Int) -> Int {
        Int(fnv1a(group.utf8) % UInt64(max(1, count)))
    }

    /// FNV-1a, 64 bit: a hash every process computes alike (partitions, long routing keys).
    static func fnv1a(_ bytes: String.UTF8View) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }
    /// Fanout exchange of the persistence workers' heartbeats, from which each computes who owns which partition.
    package static let workersExchange = "chat.persistence.workers"
    /// Exclusive queue of one persistence worker on ``workersExchange``.
    package static func workerQueue(_ workerID: String) -> String { "chat.persistence.worker." + workerID }
    /// Durable queue of messages the store refused on their own (header ``reasonHeader`` says why).
    package static let deadLetterQueue = "chat.dead"
    /// Header of a dead letter: why the store refused it.
    package static let reasonHeader = "x-reason"
    /// Header of a history reply that could not be answered (a malformed request, a store failure): why. The
    /// requester learns it at once instead of waiting out its timeout.
    package static let failureHeader = "x-failure"
    /// Fanout exchange of the gateways' joins, leaves and heartbeats: every room service instance (and every
    /// gateway, for presence) keeps the whole membership from it.
    package static let membershipExchange = "chat.rooms.membership"
    /// Exclusive queue of one room service instance on ``membershipExchange``.
    package static func roomsInstanceQueue(_ instanceID: String) -> String { "chat.rooms.instance." + instanceID }
    /// Direct exchange of the channel layer's groups: routing key = group key, bound by gateways.
    package static let groupsExchange = "chat.groups"
    /// Request queues (request/reply, reply to the caller's own queue with a correlation id).
    package static let historyQueue = "chat.persistence.history"
    /// Durable queue of the room service's requests, load-balanced over its instances.
    package static let roomsQueue = "chat.rooms.requests"

    /// The routing key of a group on ``groupsExchange``. Routing keys are at most 255 bytes, and 100
    /// characters of Hangul take 300, so long names are hashed; receivers dispatch on the group named in the body (``DeliveryBatch``),
    /// never on the key, so a hash collision costs bandwidth, not correctness.
    package static func routingKey(forGroup group: String) -> String {
        let utf8 = group.utf8
        if utf8.count <= 200 { return group }
        return "h:" + String(fnv1a(utf8), radix: 16) + ":\(utf8.count)"
    }

    /// Header carrying the full group name (routing keys may be hashed).
    package static let groupHeader = "x-group"
    /// Header carrying the per-room sequence number of a broadcast, or the first one of a history reply.
    package static let seqHeader = "x-seq"
    /// Header of a history reply: how many frames its body holds.
    package static let countHeader = "x-count"
    /// Header of a resume's history reply: the room's last seq.
    package static let lastSeqHeader = "x-last-seq"
    /// Header of a resume's history reply when more were missed than asked for (and none are sent).
    package static let truncatedHeader = "x-truncated"
    /// RabbitMQ's sender-selected distribution: extra routing keys, each queue gets the message once.
    package static let ccHeader = "CC"

    /// Exclusive, auto-deleted queue of one gateway process: what ``GatewayQueueMessage`` (ChatWire) names.
    package static func gatewayQueue(_ gatewayID: String) -> String { "chat.gateway." + gatewayID }
}
