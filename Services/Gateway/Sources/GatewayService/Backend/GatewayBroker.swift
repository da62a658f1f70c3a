import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatWire
import NIOCore
import Presence

/// What the gateway needs of its broker, the seam its tests swap: the channel layer's groups and this process's
/// members of them, request/reply to the other services, fire-and-forget membership events, and the hand-off
/// of client messages to persistence. ``AMQPGatewayBroker`` is the real one; ``InMemoryGatewayBroker`` is for
/// unit tests of the gateway's logic, never as proof that the system works.
protocol GatewayBroker: ChannelLayer {
    /// The groups of this process and their local members.
    var hub: Hub { get }
    /// This process's own queue: where replies and acks for its sockets are sent.
    var replyQueue: String { get }
    /// Declares what the gateway publishes to and consumes from.
    func declareTopology() async throws
    /// Sends a request to a service's queue and waits for its reply.
    func request(_ body: ByteBuffer, to queue: String, timeout: Duration) async throws -> BrokerReply
    /// Publishes a membership event to every gateway and room service instance, without waiting for the broker.
    func publishMembership(_ event: MembershipEvent)
    /// Hands a client message to persistence; the confirmation succeeds once the broker has routed it to its
    /// partition's queue (its ack comes from persistence, once it is stored).
    func submit(_ message: InboundChatMessage) -> AMQPConfirmation
}

/// A reply to a ``GatewayBroker/request(_:to:timeout:)``: its headers (`x-seq`, `x-count` for history) and body.
struct BrokerReply: Sendable {
    var headers: AMQPTable
    var body: ByteBuffer
}

/// The gateway's broker on RabbitMQ: its ``AMQPChannelLayer`` (one exclusive queue for the process) and the
/// ``InboundBatcher`` that coalesces client messages on `chat.inbound`.
struct AMQPGatewayBroker: GatewayBroker {
    let layer: AMQPChannelLayer
    let gatewayID: String
    let partitions: Int
    let inbound: InboundBatcher

    init(layer: AMQPChannelLayer, gatewayID: String, partitions: Int) {
        self.layer = layer
        self.gatewayID = gatewayID
        self.partitions = partitions
        self.inbound = InboundBatcher(connection: layer.connection, partitions: partitions)
    }

    var hub: Hub { layer.hub }
    var replyQueue: String { layer.queueName }

    func declareTopology() async throws {
        try await ChatTopology.declare(.gateway(id: gatewayID, partitions: partitions), on: layer.connection)
    }

    func groupAdd(_ group: String, channel: any GroupMember) async throws { try await layer.groupAdd(group, channel: channel) }
    func groupDiscard(_ group: String, channel: any GroupMember) async throws { try await layer.groupDiscard(group, channel: channel) }
    func groupSend(_ group: String, message: ChannelMessage) async throws { try await layer.groupSend(group, message: message) }

    func request(_ body: ByteBuffer, to queue: String, timeout: Duration) async throws -> BrokerReply {
        let delivery = try await layer.requester.request(routingKey: queue, body: body, timeout: timeout)
        return BrokerReply(headers: delivery.properties.headers, body: delivery.body)
    }

    func publishMembership(_ event: MembershipEvent) {
        layer.connection.publishPipelined([MembershipWire.outgoing(event)])
    }

    func submit(_ message: InboundChatMessage) -> AMQPConfirmation { inbound.add(message) }
}
