import AMQPClient
import ChatProtocol
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle
import Synchronization

/// Which partitions this worker consumes: ``run(onChange:)`` reports every change until shutdown. The
/// ``PartitionCoordinator`` agrees on it with the other workers; unit tests give a fixed set.
protocol PartitionAssignment: Sendable {
    /// The workers it knows of, this one included.
    var workers: [String] { get }
    func run(onChange: @escaping @Sendable (Set<Int>) -> Void) async
}

/// Every partition, for a worker alone (unit tests): reported once, kept until shutdown.
struct FixedPartitions: PartitionAssignment {
    let partitions: Set<Int>
    var workers: [String] { ["fixed"] }
    func run(onChange: @escaping @Sendable (Set<Int>) -> Void) async {
        onChange(partitions)
        while await sleepUntilShutdown(for: .seconds(3600)) {}
    }
}

/// Tells this worker which partitions to consume: announces the worker on `chat.persistence.workers` (a
/// fanout) three times per lease, hears the others' announcements on its own queue, and hands the
/// assignment of ``PartitionOwnership`` to `onChange` whenever a worker joins, leaves or expires (and on
/// every announcement, so a consumer lost to a broker restart is started again). A worker that stops
/// gracefully says so, and the others take its partitions at once instead of after the lease.
final class PartitionCoordinator: PartitionAssignment {
    let connection: AMQPConnection
    let configuration: PersistenceConfiguration
    let logger: Logger
    private let ownership: Mutex<PartitionOwnership>
    private static let leavingPrefix = "-"

    init(connection: AMQPConnection, configuration: PersistenceConfiguration, logger: Logger) {
        self.connection = connection
        self.configuration = configuration
        self.logger = logger
        self.ownership = Mutex(PartitionOwnership(me: configuration.workerID, partitions: configuration.partitions,
                                                  lease: configuration.lease))
    }

    var workers: [String] { ownership.withLock { $0.workers } }

    func run(onChange: @escaping @Sendable (Set<Int>) -> Void) async {
        let me = configuration.workerID
        let queue = ChatTopology.workerQueue(me)
        while true {
            do {
                try await ChatTopology.declare(.persistenceWorker(id: me), on: connection)
                break
            } catch {
                logger.error("cannot declare the workers' exchange; retrying", metadata: ["error": "\(error)"])
                guard await sleepUntilShutdown(for: .seconds(1)) else { return }
            }
        }
        let logger = self.logger
        let consumer = connection.consume(queue: queue, prefetch: 100, autoAck: true) { [self] batch in
            var changed = false
            for delivery in batch {
                let name = String(buffer: delivery.body)
                if name.hasPrefix(Self.leavingPrefix) {
                    let worker = String(name.dropFirst())
                    guard worker != me else { continue }
                    if ownership.withLock({ $0.forget(worker) }) {
                        logger.info("worker left", metadata: ["chat.peer_worker": "\(worker)"])
                        changed = true
                    }
                } else if ownership.withLock({ $0.heard(from: name) }) {
                    if name != me { logger.info("worker joined", metadata: ["chat.peer_worker": "\(name)"]) }
                    changed = true
                }
            }
            if changed { onChange(ownership.withLock { $0.mine }) }
        }
        onChange(ownership.withLock { $0.mine })
        let interval = configuration.lease / 3
        repeat {
            announce(me)
            let expired = ownership.withLock { $0.expire() }
            for worker in expired { logger.warning("worker expired; taking over its share", metadata: ["chat.peer_worker": "\(worker)"]) }
            onChange(ownership.withLock { $0.mine })
        } while await sleepUntilShutdown(for: interval)
        consumer.cancel()
        announce(Self.leavingPrefix + me)
    }

    private func announce(_ body: String) {
        let expiration = String(Int(configuration.lease.components.seconds) * 1000)
        connection.publishPipelined([AMQPOutgoingMessage(
            exchange: ChatTopology.workersExchange, routingKey: "", body: ByteBuffer(string: body),
            properties: AMQPProperties(contentType: "text/plain", expiration: expiration))])
    }
}
