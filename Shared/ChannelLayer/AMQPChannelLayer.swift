import AMQPClient
import ChatProtocol
import Logging
import NIOCore
import ServiceLifecycle

/// The channel layer on RabbitMQ (docs/amqp-topology.md):
/// - each process has one exclusive queue, `chat.gateway.<id>`;
/// - a group is a routing key on the direct exchange `chat.groups`; the process binds its queue to the
///   group's key when the group gets its first local member and unbinds when it loses its last;
/// - `groupSend` publishes to `chat.groups` with the full group name in the `x-group` header.
/// Replies to requests (messages with a correlation id) go to the ``AMQPRequester``.
package final class AMQPChannelLayer: ChannelLayer, Service {
    package let connection: AMQPConnection
    package let registry: GroupRegistry
    package let requester: AMQPRequester
    /// This process's queue, `chat.gateway.<id>`.
    package let queueName: String
    let logger: Logger
    /// When set, this process's queue is bound to the membership fanout too, and its events go here (on the
    /// connection's thread) instead of to the groups.
    let onMembershipEvent: (@Sendable (ByteBuffer) -> Void)?
    /// Where persistence's acks to this process's sockets go (messages with the `x-acks` header), on the
    /// connection's thread.
    let onAcks: (@Sendable (ByteBuffer) -> Void)?

    /// `registry` holds this process's members of groups (made by the caller when something else, presence,
    /// reads it too).
    package init(connection: AMQPConnection, processID: String, registry: GroupRegistry = GroupRegistry(), logger: Logger,
                 onAcks: (@Sendable (ByteBuffer) -> Void)? = nil, onMembershipEvent: (@Sendable (ByteBuffer) -> Void)? = nil) {
        self.connection = connection
        self.onMembershipEvent = onMembershipEvent
        self.onAcks = onAcks
        let queue = ChatTopology.gatewayQueue(processID)
        self.queueName = queue
        self.registry = registry
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
        if let onMembershipEvent, delivery.exchange == ChatTopology.membershipExchange {
            onMembershipEvent(delivery.body)
            return
        }
        if let onAcks, delivery.properties.headers[ChatTopology.acksHeader] != nil {
            onAcks(delivery.body)
            return
        }
        if delivery.properties.correlationID != nil {
            requester.handleReply(delivery)
            return
        }
        let headers = delivery.properties.headers
        let receivedAt = headers[ChatTopology.receivedAtHeader]?.intValue
        if let runs = headers[ChatTopology.runsHeader]?.stringValue {
            routeRuns(runs, body: delivery.body, receivedAt: receivedAt)
        } else if let group = headers[ChatTopology.groupHeader]?.stringValue {
            let seq = headers[ChatTopology.seqHeader]?.intValue
            if headers[ChatTopology.countHeader] != nil, let first = seq {
                // A run of consecutive messages of one room: one frame per line, seqs from `first`.
                let messages = FrameBatch.split(delivery.body).enumerated().map { offset, frame in
                    ChannelMessage(body: frame, group: group, seq: first + Int64(offset))
                }
                registry.dispatch(messages, to: group, delivered: ChannelMetrics.recorder(messages: messages.count, receivedAt: receivedAt))
            } else {
                registry.dispatch([ChannelMessage(body: delivery.body, group: group, seq: seq)], to: group,
                                  delivered: ChannelMetrics.recorder(messages: 1, receivedAt: receivedAt))
            }
        } else {
            logger.debug("dropping a message without a group", metadata: ["amqp.routing_key": "\(delivery.routingKey)"])
        }
    }

    /// A multi-room broadcast: each run goes to its group's local members (rooms this process does not hold
    /// are skipped: the message reached this queue through another room's key).
    func routeRuns(_ runs: String, body: ByteBuffer, receivedAt: Int64?) {
        let frames = FrameBatch.split(body)
        var offset = 0
        for line in runs.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 3, let first = Int64(fields[1]), let count = Int(fields[2]), count > 0,
                  offset + count <= frames.count else {
                logger.warning("dropping a malformed multi-room broadcast", metadata: ["x-runs": "\(line)"])
                return
            }
            let group = String(fields[0])
            if registry.memberCount(group) > 0 {
                var messages: [ChannelMessage] = []
                messages.reserveCapacity(count)
                for index in 0..<count {
                    messages.append(ChannelMessage(body: frames[offset + index], group: group, seq: first + Int64(index)))
                }
                registry.dispatch(messages, to: group, delivered: ChannelMetrics.recorder(messages: count, receivedAt: receivedAt))
            }
            offset += count
        }
    }

    package func groupAdd(_ group: String, channel: any GroupMember) async throws {
        let connection = self.connection, queue = queueName, key = ChatTopology.routingKey(forGroup: group)
        try await registry.add(group, channel) {
            try await connection.bindQueue(queue, exchange: ChatTopology.groupsExchange, routingKey: key)
        }
    }

    package func groupDiscard(_ group: String, channel: any GroupMember) async throws {
        let connection = self.connection, queue = queueName, key = ChatTopology.routingKey(forGroup: group)
        try await registry.remove(group, channel) {
            try await connection.unbindQueue(queue, exchange: ChatTopology.groupsExchange, routingKey: key)
        }
    }

    package func groupSend(_ group: String, message: ChannelMessage) async throws {
        try await connection.publish(Self.groupMessage(group, message))
    }

    /// The AMQP message `groupSend` publishes; the persistence service publishes the same for broadcasts.
    package static func groupMessage(_ group: String, _ message: ChannelMessage) -> AMQPOutgoingMessage {
        var headers: AMQPTable = [ChatTopology.groupHeader: .string(group)]
        if let seq = message.seq { headers[ChatTopology.seqHeader] = .int(seq) }
        return AMQPOutgoingMessage(
            exchange: ChatTopology.groupsExchange, routingKey: ChatTopology.routingKey(forGroup: group), body: message.body,
            properties: AMQPProperties(headers: headers))
    }

    /// One AMQP message carrying a run of consecutive stored messages of one group (seqs `firstSeq`, …).
    package static func groupRunMessage(_ group: String, frames: [String], firstSeq: Int64) -> AMQPOutgoingMessage {
        AMQPOutgoingMessage(
            exchange: ChatTopology.groupsExchange, routingKey: ChatTopology.routingKey(forGroup: group), body: ByteBuffer(string: FrameBatch.join(frames)),
            properties: AMQPProperties(headers: [
                ChatTopology.groupHeader: .string(group), ChatTopology.seqHeader: .int(firstSeq),
                ChatTopology.countHeader: .int(Int64(frames.count)),
            ]))
    }

    /// One AMQP message carrying runs of stored messages of many groups: routed with the first group's key and
    /// the others in `CC`, so each gateway queue bound to any of them gets it once. Runs are
    /// `(group, first seq, frames)`, in the order their frames appear in the body.
    package static func groupRunsMessage(_ runs: [(group: String, first: Int64, frames: [String])], receivedAt: Int64? = nil) -> AMQPOutgoingMessage {
        var description = ""
        var keys: [String] = []
        var seenKeys = Set<String>()
        var frames: [String] = []
        for run in runs {
            description += "\(run.group)\t\(run.first)\t\(run.frames.count)\n"
            let key = ChatTopology.routingKey(forGroup: run.group)
            if seenKeys.insert(key).inserted { keys.append(key) }
            frames += run.frames
        }
        var headers: AMQPTable = [ChatTopology.runsHeader: .string(description)]
        if keys.count > 1 { headers[ChatTopology.ccHeader] = .strings(Array(keys.dropFirst())) }
        if let receivedAt { headers[ChatTopology.receivedAtHeader] = .int(receivedAt) }
        return AMQPOutgoingMessage(
            exchange: ChatTopology.groupsExchange, routingKey: keys.first ?? "", body: ByteBuffer(string: FrameBatch.join(frames)),
            properties: AMQPProperties(headers: headers))
    }
}
