import AMQPClient
import ChatStorage
import Hummingbird
import Logging
import Presence
import ServiceKit

/// Builds the room service: rooms in its database, the whole membership from the gateways' fanout (every
/// instance keeps all of it, so any instance answers alike), requests load-balanced over the instances.
package func buildApplication(_ configuration: RoomConfiguration, logger: Logger) async throws -> ServiceApplication {
    var logger = logger
    logger[metadataKey: "chat.rooms_instance"] = .string(configuration.instanceID)
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "rooms-\(configuration.instanceID)"), logger: logger)
    let database = try await openDatabase(url: configuration.databaseURL, logger: logger)
    let store = RoomStore(database: database)
    let readiness = Readiness()
    let membership = Membership(expiry: configuration.gatewayExpiry)
    let responder = RoomRequestResponder(connection: connection, store: store, membership: membership, readiness: readiness, logger: logger)
    let listener = MembershipListener(connection: connection, membership: membership, instanceID: configuration.instanceID, logger: logger)
    let health = makeHealthServer(service: "rooms", host: configuration.healthHost, port: configuration.healthPort,
                                  connection: connection, readiness: readiness, logger: logger) { router in
        router.get("/stats") { _, _ in
            let snapshot = membership.snapshot()
            return RoomStatsBody(gateways: snapshot.gateways, rooms: snapshot.rooms)
        }
    }
    return ServiceApplication(services: [connection, database, listener, responder, MembershipExpiry(membership: membership, logger: logger),
                                         health], logger: logger)
}

/// `GET /stats` of the room service: the gateways heard from and the members per room across them.
struct RoomStatsBody: ResponseEncodable {
    var gateways: Int
    var rooms: [String: Int]
}
