import AMQPClient
import ChatProtocol

/// The durable part of the topology, declared the same way by every role that uses it (a declare with other
/// arguments than the broker already has is refused, so there is one place that says them).
extension ChatTopology {
    /// `chat.inbound` and its partition queues (single active consumer each), bound by partition key. Gateways
    /// declare them too, so a message is kept even while no persistence worker runs.
    public static func declareInbound(on connection: AMQPConnection, partitions: Int) async throws {
        try await connection.declareExchange(inboundExchange, type: .direct, durable: true)
        for partition in 0..<partitions {
            try await connection.declareQueue(partitionQueue(partition), durable: true,
                                              arguments: ["x-single-active-consumer": .bool(true)])
            try await connection.bindQueue(partitionQueue(partition), exchange: inboundExchange,
                                           routingKey: partitionRoutingKey(partition))
        }
    }

    /// The request queues of the persistence and room services, the groups exchange and the membership fanout.
    public static func declareShared(on connection: AMQPConnection) async throws {
        try await connection.declareExchange(groupsExchange, type: .direct, durable: true)
        try await connection.declareExchange(membershipExchange, type: .fanout, durable: true)
        try await connection.declareQueue(historyQueue, durable: true)
        try await connection.declareQueue(roomsQueue, durable: true)
    }
}
