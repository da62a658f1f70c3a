import AMQPClient
import ChatProtocol

/// The one source of what each role declares on the broker. A declare with other arguments than the broker
/// already holds is refused at run time, so every exchange and queue is described here once, and each
/// process declares its role's set before it publishes or consumes.
extension ChatTopology {
    /// An exchange, a queue or a binding, as declared.
    package enum Declaration: Sendable, Hashable {
        case exchange(String, AMQPExchangeType)
        /// A queue: `durable` ones outlive the broker's restarts; `exclusive` ones go with their process.
        case queue(String, durable: Bool, exclusive: Bool, singleActiveConsumer: Bool)
        case binding(queue: String, exchange: String, routingKey: String)
    }

    /// What a process declares, by what it does.
    package enum Role: Sendable, Hashable {
        /// The channel layer of one process: the groups exchange, its exclusive queue and, when it keeps
        /// presence, that queue bound to the membership fanout.
        case channelLayer(queue: String, membershipEvents: Bool)
        /// A gateway: its channel layer (with membership events), and everything it publishes to, so that a
        /// message is kept durably even before its consumer starts.
        case gateway(id: String, partitions: Int)
        /// The persistence service's writer: the inbound partitions it consumes, the groups it broadcasts
        /// to, and the dead-letter queue.
        case persistenceWriter(partitions: Int)
        /// One persistence worker's queue on the workers' heartbeat fanout.
        case persistenceWorker(id: String)
        /// The persistence service's history responder.
        case historyResponder
        /// The room service's request responder.
        case roomsResponder
        /// One room service instance's queue on the membership fanout.
        case roomsInstance(id: String)
    }

    /// `chat.inbound` and its partition queues (single active consumer each, so one worker at a time keeps a
    /// room's order), bound by partition key.
    static func inbound(partitions: Int) -> [Declaration] {
        [.exchange(inboundExchange, .direct)] + (0..<partitions).flatMap { partition in
            [Declaration.queue(partitionQueue(partition), durable: true, exclusive: false, singleActiveConsumer: true),
             .binding(queue: partitionQueue(partition), exchange: inboundExchange, routingKey: partitionRoutingKey(partition))]
        }
    }

    /// What every service shares: the request queues, the groups exchange and the membership fanout.
    static let shared: [Declaration] = [
        .exchange(groupsExchange, .direct), .exchange(membershipExchange, .fanout),
        .queue(historyQueue, durable: true, exclusive: false, singleActiveConsumer: false),
        .queue(roomsQueue, durable: true, exclusive: false, singleActiveConsumer: false),
    ]

    /// An exclusive queue of one process, bound to a fanout.
    static func exclusiveQueue(_ queue: String, on fanout: String) -> [Declaration] {
        [.exchange(fanout, .fanout), .queue(queue, durable: false, exclusive: true, singleActiveConsumer: false),
         .binding(queue: queue, exchange: fanout, routingKey: "")]
    }

    /// Everything `role` declares, in the order it is declared (an exchange or queue before its bindings).
    package static func declarations(for role: Role) -> [Declaration] {
        switch role {
        case .channelLayer(let queue, let membershipEvents):
            // The queue's own name is a key on the groups exchange too: a persistence batch reaches the gateways
            // its acks are for in the same AMQP message as its broadcasts (``DeliveryBatch``).
            (membershipEvents
                ? [.exchange(groupsExchange, .direct)] + exclusiveQueue(queue, on: membershipExchange)
                : [.exchange(groupsExchange, .direct), .queue(queue, durable: false, exclusive: true, singleActiveConsumer: false)])
                + [.binding(queue: queue, exchange: groupsExchange, routingKey: queue)]
        case .gateway(let id, let partitions):
            declarations(for: .channelLayer(queue: gatewayQueue(id), membershipEvents: true)) + inbound(partitions: partitions) + shared
        case .persistenceWriter(let partitions):
            inbound(partitions: partitions) + shared + [.queue(deadLetterQueue, durable: true, exclusive: false, singleActiveConsumer: false)]
        case .persistenceWorker(let id):
            exclusiveQueue(workerQueue(id), on: workersExchange)
        case .historyResponder, .roomsResponder:
            shared
        case .roomsInstance(let id):
            shared + exclusiveQueue(roomsInstanceQueue(id), on: membershipExchange)
        }
    }

    /// Declares `role`'s set on `connection`; the connection declares it again by itself after a reconnect.
    package static func declare(_ role: Role, on connection: AMQPConnection) async throws {
        for declaration in declarations(for: role) {
            switch declaration {
            case .exchange(let name, let type):
                try await connection.declareExchange(name, type: type, durable: true)
            case .queue(let name, let durable, let exclusive, let singleActiveConsumer):
                try await connection.declareQueue(name, durable: durable, exclusive: exclusive, autoDelete: exclusive,
                                                  arguments: singleActiveConsumer ? ["x-single-active-consumer": .bool(true)] : [:])
            case .binding(let queue, let exchange, let routingKey):
                try await connection.bindQueue(queue, exchange: exchange, routingKey: routingKey)
            }
        }
    }
}
