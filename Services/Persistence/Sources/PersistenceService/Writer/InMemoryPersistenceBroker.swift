import AMQPClient
import ChatProtocol
import ChatWire
import NIOCore
import Synchronization

/// A broker for the writer inside one process, for unit tests: a queue per partition with one active consumer,
/// unacknowledged deliveries going back in place when their consumer is released, publishes kept in
/// ``published`` and confirmed at once (or failed, with ``failPublishes``).
final class InMemoryPersistenceBroker: PersistenceBroker {
    private struct Consumer {
        let id: Int
        let deliver: @Sendable ([AMQPDelivery]) -> Void
        let finished: @Sendable () -> Void
    }
    private struct State {
        var ready: [Int: [AMQPDelivery]] = [:]
        var unacked: [Int: [AMQPDelivery]] = [:]
        var active: [Int: Consumer] = [:]
        var waiting: [Int: [Consumer]] = [:]
        var published: [AMQPOutgoingMessage] = []
        var acked: [AMQPDelivery] = []
        var lateAcks = 0
        var nextID = 1
        var failPublishes = false
    }
    private let state = Mutex(State())

    init() {}

    func declareTopology(partitions: Int) async throws {}

    /// Queues `messages` on `partition`'s queue as one delivery (as a gateway's batch cut would send them).
    func send(_ messages: [InboundChatMessage], partition: Int) {
        let delivery = state.withLock { s in
            defer { s.nextID += 1 }
            return AMQPDelivery(body: PartitionQueueMessage.messages(messages).encode(), routingKey: "\(partition)",
                                properties: AMQPProperties(messageID: "d\(s.nextID)", type: PartitionQueueMessage.messages(messages).type))
        }
        state.withLock { $0.ready[partition, default: []].append(delivery) }
        dispatch(partition)
    }

    func consume(partition: Int, prefetch: Int, deliver: @escaping @Sendable ([AMQPDelivery]) -> Void,
                 finished: @escaping @Sendable () -> Void) -> any PartitionConsumer {
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            let consumer = Consumer(id: s.nextID, deliver: deliver, finished: finished)
            if s.active[partition] == nil { s.active[partition] = consumer } else { s.waiting[partition, default: []].append(consumer) }
            return consumer.id
        }
        dispatch(partition)
        return Handle(broker: self, partition: partition, id: id)
    }

    private struct Handle: PartitionConsumer {
        let broker: InMemoryPersistenceBroker
        let partition: Int
        let id: Int
        func release() { broker.release(partition: partition, consumer: id) }
    }

    /// Closes a consumer: what it held goes back to the front of its queue, marked redelivered, for the next one.
    private func release(partition: Int, consumer id: Int) {
        state.withLock { s in
            s.waiting[partition]?.removeAll { $0.id == id }
            guard s.active[partition]?.id == id else { return }
            let held = (s.unacked[partition] ?? []).map {
                AMQPDelivery(body: $0.body, routingKey: $0.routingKey, properties: $0.properties, redelivered: true)
            }
            s.unacked[partition] = []
            s.ready[partition] = held + (s.ready[partition] ?? [])
            s.active[partition] = s.waiting[partition]?.isEmpty == false ? s.waiting[partition]!.removeFirst() : nil
        }
        dispatch(partition)
    }

    /// Hands what is ready to the partition's active consumer.
    private func dispatch(_ partition: Int) {
        let work = state.withLock { s -> (Consumer, [AMQPDelivery])? in
            guard let consumer = s.active[partition], let ready = s.ready[partition], !ready.isEmpty else { return nil }
            s.ready[partition] = []
            s.unacked[partition, default: []] += ready
            return (consumer, ready)
        }
        if let (consumer, deliveries) = work { consumer.deliver(deliveries) }
    }

    func publish(_ messages: [AMQPOutgoingMessage]) -> AMQPConfirmation {
        let fail = state.withLock { s in
            s.published += messages
            return s.failPublishes
        }
        let confirmation = AMQPConfirmation()
        confirmation.complete(fail ? .failure(.nacked) : .success(()))
        return confirmation
    }

    /// An ack of a delivery its consumer no longer holds (released since) is dropped, as RabbitMQ drops it.
    func acknowledge(_ deliveries: [AMQPDelivery]) {
        state.withLock { s in
            for delivery in deliveries {
                let partition = Int(delivery.routingKey)!
                if let index = s.unacked[partition]?.firstIndex(where: { $0.properties.messageID == delivery.properties.messageID }) {
                    s.acked.append(s.unacked[partition]!.remove(at: index))
                } else {
                    s.lateAcks += 1
                }
            }
        }
    }

    func requeue(_ deliveries: [AMQPDelivery]) {
        var partitions = Set<Int>()
        state.withLock { s in
            for delivery in deliveries {
                let partition = Int(delivery.routingKey)!
                guard let index = s.unacked[partition]?.firstIndex(where: { $0.properties.messageID == delivery.properties.messageID }) else { continue }
                let held = s.unacked[partition]!.remove(at: index)
                s.ready[partition, default: []].append(AMQPDelivery(body: held.body, routingKey: held.routingKey, properties: held.properties, redelivered: true))
                partitions.insert(partition)
            }
        }
        for partition in partitions { dispatch(partition) }
    }

    var published: [AMQPOutgoingMessage] { state.withLock { $0.published } }
    var acked: [AMQPDelivery] { state.withLock { $0.acked } }
    /// Acks of deliveries their consumer had released.
    var lateAcks: Int { state.withLock { $0.lateAcks } }
    /// Deliveries in the queues, delivered or not, not acknowledged.
    var outstanding: Int { state.withLock { s in s.ready.values.map(\.count).reduce(0, +) + s.unacked.values.map(\.count).reduce(0, +) } }
    var failPublishes: Bool {
        get { state.withLock { $0.failPublishes } }
        set { state.withLock { $0.failPublishes = newValue } }
    }
}
