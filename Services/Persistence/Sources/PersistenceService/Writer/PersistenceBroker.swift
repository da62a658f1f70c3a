import AMQPClient
import ChannelLayer
import ChatProtocol

/// What the message writer's stages need from the broker (partition consumers, publishing, acknowledging),
/// so that they run on RabbitMQ and, in unit tests, on ``InMemoryPersistenceBroker``.
protocol PersistenceBroker: Sendable {
    /// Declares the partition queues and what the writer publishes to.
    func declareTopology(partitions: Int) async throws
    /// Consumes a partition's queue as its single active consumer: `deliver` gets its deliveries in queue order
    /// (and must only hand them on), `finished` runs once when the consumer ends without being released.
    func consume(partition: Int, prefetch: Int, deliver: @escaping @Sendable ([AMQPDelivery]) -> Void,
                 finished: @escaping @Sendable () -> Void) -> any PartitionConsumer
    /// Publishes in order, without waiting: the confirmation completes once the broker has them all.
    func publish(_ messages: [AMQPOutgoingMessage]) -> AMQPConfirmation
    /// Acknowledges handled deliveries, none of whose consumer's earlier ones are left unhandled.
    func acknowledge(_ deliveries: [AMQPDelivery])
    /// Gives deliveries back to their queue, to be delivered again.
    func requeue(_ deliveries: [AMQPDelivery])
}

/// A partition's consumer: ``release()`` hands the partition back, what it held going back in place.
protocol PartitionConsumer: Sendable {
    func release()
}

extension AMQPConsumerHandle: PartitionConsumer {}

/// The writer's broker on RabbitMQ.
struct AMQPPersistenceBroker: PersistenceBroker {
    let connection: AMQPConnection

    func declareTopology(partitions: Int) async throws {
        try await ChatTopology.declare(.persistenceWriter(partitions: partitions), on: connection)
    }

    func consume(partition: Int, prefetch: Int, deliver: @escaping @Sendable ([AMQPDelivery]) -> Void,
                 finished: @escaping @Sendable () -> Void) -> any PartitionConsumer {
        connection.consume(queue: ChatTopology.partitionQueue(partition), prefetch: UInt16(clamping: prefetch),
                           finished: finished, deliver: deliver)
    }

    func publish(_ messages: [AMQPOutgoingMessage]) -> AMQPConfirmation {
        connection.publishPipelined(messages)
    }

    /// One multiple ack per consumer channel, on its latest delivery.
    func acknowledge(_ deliveries: [AMQPDelivery]) {
        deliveries.acknowledgeAll()
    }

    /// One by one, so that no later multiple ack can cover them.
    func requeue(_ deliveries: [AMQPDelivery]) {
        for delivery in deliveries { delivery.reject(requeue: true) }
    }
}
