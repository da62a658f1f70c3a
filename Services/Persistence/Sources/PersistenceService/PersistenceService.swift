import AMQPClient
import ChatProtocol
import ChatStorage
import Foundation
import Hummingbird
import Logging
import ServiceKit

/// Builds the persistence service: broker connection, database, the message writer (with the coordinator of
/// its partitions), the history responder and the health server (`/stats`: partitions owned, messages stored).
package func buildApplication(_ configuration: PersistenceConfiguration, logger: Logger) async throws -> ServiceApplication {
    var logger = logger
    logger[metadataKey: "chat.worker"] = .string(configuration.workerID)
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "persistence-\(configuration.workerID)",
                                         linger: configuration.amqpLinger),
        logger: logger)
    let database = try await openDatabase(url: configuration.databaseURL, logger: logger, syncEveryCommit: true)
    let readiness = Readiness()
    let store = MessageStore(database: database)
    let writer = MessageWriter(broker: AMQPPersistenceBroker(connection: connection), store: store, migrate: { try await store.migrate() },
                               assignment: PartitionCoordinator(connection: connection, configuration: configuration, logger: logger),
                               configuration: configuration, readiness: readiness,
                               writerLock: WriterLock.forDatabase(url: configuration.databaseURL), logger: logger)
    let history = HistoryResponder(connection: connection, store: store, logger: logger)
    let health = makeHealthServer(service: "persistence", host: configuration.healthHost, port: configuration.healthPort,
                                  connection: connection, readiness: readiness, logger: logger) { router in
        router.get("/stats") { _, _ in writer.stats() }
    }
    return ServiceApplication(services: [connection, database, writer, history, health], logger: logger)
}
