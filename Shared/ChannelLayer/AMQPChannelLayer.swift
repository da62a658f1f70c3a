import AMQPClient
import ChatProtocol
import ChatWire
import Logging
import NIOCore
import Presence
import ServiceLifecycle

/// The channel layer on RabbitMQ (docs/amqp-topology.md):
/// - each process has one exclusive queue, `chat.gateway.<id>`;
/// - a group is a routing key on the direct exchange `chat.groups`; the process binds its queue to the
///   group's key when the group gets its first local member and unbinds when it loses its last;
/// - what arrives on the queue is a ``GatewayQueueMessage``, read once and dispatched by one `switch`.
package final class AMQPChannelLayer: ChannelLayer, Service {
    package let connection: AMQPConnection
    package let hub: Hub
    package let requester: AMQPRequester
    /// This process's queue, `chat.gateway.<id>`.
    package let queueName: String
    let logger: Logger
    /// When set, this process's queue is bound to the membership fanout too, and its events go here (on the
    /// connection's thread).
    let onMembershipEvent: (@Sendable (MembershipEvent) -> Void)?

    /// `hub` holds this process's members of groups (made by the caller when something else, presence,
    /// reads it too).
    package init(connection: AMQPConnection, processID: String, hub: Hub = Hub(), logger: Logger,
                 onMembershipEvent: (@Sendable (MembershipEvent) -> Void)? = nil) {
        self.connection = connection
        self.onMembershipEvent = onMembershipEvent
        let queue = ChatTopology.gatewayQueue(processID)
        self.queueName = queue
        self.hub = hub
        self.requester = AMQPRequester(connection: connection, replyQueue: queue)
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(queue)
        self.logger = logger
    }

    /// Declares the groups exchange and this process's queue.
    package func declareTopology() async throws {
        try await ChatTopology.declare(.channelLayer(queue: queueName, membershipEvents: onMembershipEvent != nil), on: connection)
    }

    package func run() async throws {
        try await declareTopology()
        logger.info("channel layer consuming")
        // Routed on the connection's thread as the deliveries are read: `route` only hands frames to the
        // sockets' event loops and resumes requesters, so nothing here blocks, and a broadcast reaches the
        // sockets without waking a task first.
        let (ended, end) = AsyncStream<Void>.makeStream()
        let consumer = connection.consume(queue: queueName, prefetch: 2000, autoAck: true, finished: { end.finish() }) {
            [self] batch in
            for delivery in batch { route(delivery) }
        }
        await withTaskCancellationOrGracefulShutdownHandler {
            for await _ in ended {}
        } onCancelOrGracefulShutdown: {
            consumer.cancel()
        }
    }

    func route(_ delivery: AMQPDelivery) {
        let message: GatewayQueueMessage
        do {
            message = try GatewayQueueMessage.decode(type: delivery.properties.type, body: delivery.body)
        } catch {
            logger.warning("dropping an unreadable message", metadata: ["amqp.type": "\(delivery.properties.type ?? "-")", "error": "\(error)"])
            return
        }
        switch message {
        case .deliveries(let batch):
            deliver(batch)
        case .groupFrame(let group, let seq, let frame):
            hub.dispatch([ChannelMessage(body: frame, group: group, seq: seq)], to: group, delivered: ChannelMetrics.recorder(messages: 1, receivedAt: nil))
        case .membership(let event):
            onMembershipEvent?(event)
        case .reply:
            requester.handleReply(delivery)
        }
    }

    /// A persistence batch: each run goes to its group's local members (rooms this process does not hold are
    /// skipped: the message reached this queue through another room's key), its frames encoded once for all of
    /// them, in one hop per event loop; then the acks naming this queue go to their sockets.
    func deliver(_ batch: DeliveryBatch) {
        var broadcasts: [Hub.Broadcast] = []
        for run in batch.runs where hub.memberCount(run.group) > 0 {
            let wires = WebSocketWire.textFrames(run.frames)
            var messages: [ChannelMessage] = []
            messages.reserveCapacity(run.frames.count)
            for (index, frame) in run.frames.enumerated() {
                messages.append(ChannelMessage(body: frame, group: run.group, seq: run.firstSeq + Int64(index), wire: wires[index]))
            }
            broadcasts.append(Hub.Broadcast(group: run.group, messages: messages,
                                            delivered: ChannelMetrics.recorder(messages: messages.count, receivedAt: batch.receivedAt)))
        }
        if !broadcasts.isEmpty { hub.deliver(broadcasts) }
        if !batch.acks.isEmpty {
            let mine = batch.acks.compactMap { $0.gateway == queueName ? $0.ack : nil }
            if !mine.isEmpty { hub.acknowledge(mine) }
        }
    }

    package func groupAdd(_ group: String, channel: any GroupMember) async throws {
        let connection = self.connection, queue = queueName, key = ChatTopology.routingKey(forGroup: group)
        try await hub.add(group, channel) {
            try await connection.bindQueue(queue, exchange: ChatTopology.groupsExchange, routingKey: key)
        }
    }

    package func groupDiscard(_ group: String, channel: any GroupMember) async throws {
        let connection = self.connection, queue = queueName, key = ChatTopology.routingKey(forGroup: group)
        try await hub.remove(group, channel) {
            try await connection.unbindQueue(queue, exchange: ChatTopology.groupsExchange, routingKey: key)
        }
    }

    package func groupSend(_ group: String, message: ChannelMessage) async throws {
        try await connection.publish(GatewayQueueMessage.groupSend(group, seq: message.seq, frame: message.body))
    }
}
