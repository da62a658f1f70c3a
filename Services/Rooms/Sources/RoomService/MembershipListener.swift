import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatWire
import Logging
import Presence
import ServiceKit
import ServiceLifecycle

/// Keeps this instance's ``Membership`` from the gateways' fanout, on a queue of its own (exclusive: it goes
/// with the instance). Events are applied on the connection's thread as they are read, in the order each
/// gateway sent them.
struct MembershipListener: Service {
    let connection: AMQPConnection
    let membership: Membership
    let instanceID: String
    let logger: Logger

    func run() async throws {
        let queue = ChatTopology.roomsInstanceQueue(instanceID)
        try await ChatTopology.declare(.roomsInstance(id: instanceID), on: connection)
        let membership = self.membership, logger = self.logger
        let (ended, end) = AsyncStream<Void>.makeStream()
        let consumer = connection.consume(queue: queue, prefetch: 2000, autoAck: true, finished: { end.finish() }) { batch in
            for delivery in batch {
                do {
                    switch try RoomsInstanceQueueMessage.decode(type: delivery.properties.type, body: delivery.body) {
                    case .membership(let event): event.apply(to: membership)
                    }
                } catch {
                    logger.warning("dropping a malformed membership event", metadata: ["amqp.queue": "\(queue)", "error": "\(error)"])
                }
            }
        }
        await withTaskCancellationOrGracefulShutdownHandler {
            for await _ in ended {}
        } onCancelOrGracefulShutdown: {
            consumer.cancel()
        }
    }
}

/// Forgets, every second, the gateways whose heartbeats stopped (their members leave the counts).
struct MembershipExpiry: Service {
    let membership: Membership
    let logger: Logger

    func run() async throws {
        while await sleepUntilShutdown(for: .seconds(1)) {
            for gateway in membership.expire() {
                logger.info("gateway expired; its members are forgotten", metadata: ["chat.gateway": "\(gateway)"])
            }
        }
    }
}
