import AMQPClient
import ChatProtocol
import Foundation
import ServiceKit

/// Configuration of the persistence service, read from the environment in one place.
package struct PersistenceConfiguration: Sendable {
    /// `CHAT_AMQP_URL`, default ``AMQPConfiguration/defaultURL``.
    package var amqpURL: String
    /// `CHAT_DATABASE_URL`: `sqlite:PATH` (default `sqlite:.state/messages.sqlite`) or `postgres://…`.
    package var databaseURL: String
    /// `CHAT_HEALTH_HOST` / `CHAT_HEALTH_PORT` (default 127.0.0.1:8001): `/health`, `/health/ready`, `/stats`.
    package var healthHost: String
    package var healthPort: Int
    /// `CHAT_PERSIST_PREFETCH` (default 1000): unacknowledged messages in flight per partition, which bounds a batch.
    package var prefetch: Int
    /// `CHAT_PERSIST_PARTITIONS` (default 2): partition queues of `chat.inbound`; the same in every gateway and worker.
    package var partitions: Int
    /// `CHAT_PERSIST_WORKER_ID` (default random): this worker's name among the workers.
    package var workerID: String
    /// `CHAT_PERSIST_LEASE_SECONDS` (default 3): a worker not heard from for this long loses its partitions to
    /// the others; workers announce themselves three times per lease.
    package var lease: Duration
    /// `CHAT_AMQP_LINGER_US` (default ``defaultAMQPLinger``): the AMQP thread's linger once woken, so that
    /// deliveries, broadcasts and acks of several batches share a pass at moderate load.
    package var amqpLinger: Duration
    package static let defaultAMQPLinger: Duration = .microseconds(500)

    package init(amqpURL: String = AMQPConfiguration.defaultURL, databaseURL: String = "sqlite:.state/messages.sqlite",
                healthHost: String = "127.0.0.1", healthPort: Int = 8001, prefetch: Int = 1000,
                partitions: Int = ChatTopology.defaultPartitions, workerID: String = PersistenceConfiguration.randomWorkerID(),
                lease: Duration = .seconds(3), amqpLinger: Duration = PersistenceConfiguration.defaultAMQPLinger) {
        self.amqpURL = amqpURL
        self.databaseURL = databaseURL
        self.healthHost = healthHost
        self.healthPort = healthPort
        self.prefetch = prefetch
        self.partitions = partitions
        self.workerID = workerID
        self.lease = lease
        self.amqpLinger = amqpLinger
    }

    /// Reads every `CHAT_*` setting of the persistence service; a malformed or out-of-range value is refused, naming it.
    package static func fromEnvironment(_ env: EnvironmentReader = .init()) throws -> Self {
        Self(
            amqpURL: env.string("CHAT_AMQP_URL", default: AMQPConfiguration.defaultURL),
            databaseURL: env.string("CHAT_DATABASE_URL", default: "sqlite:.state/messages.sqlite"),
            healthHost: env.string("CHAT_HEALTH_HOST", default: "127.0.0.1"),
            healthPort: try env.int("CHAT_HEALTH_PORT", default: 8001, in: 0...65535),
            prefetch: try env.int("CHAT_PERSIST_PREFETCH", default: 1000, in: 1...65535),
            partitions: try env.int("CHAT_PERSIST_PARTITIONS", default: ChatTopology.defaultPartitions, in: 1...256),
            workerID: env.string("CHAT_PERSIST_WORKER_ID", default: randomWorkerID()),
            lease: .seconds(try env.int("CHAT_PERSIST_LEASE_SECONDS", default: 3, in: 1...60)),
            amqpLinger: try env.amqpLinger(default: Int(defaultAMQPLinger / .microseconds(1))))
    }

    /// A short random id for a worker that was given none.
    package static func randomWorkerID() -> String {
        String(UUID().uuidString.lowercased().prefix(8))
    }
}
