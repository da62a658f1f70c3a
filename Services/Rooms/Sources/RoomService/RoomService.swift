import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatStorage
import CoreMetrics
import Foundation
import Hummingbird
import Logging
import NIOCore
import Presence
import ServiceKit
import ServiceLifecycle
import Synchronization

/// Configuration of the room service, read from the environment in one place.
package struct RoomConfiguration: Sendable {
    /// `CHAT_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2F`.
    package var amqpURL: String
    /// `CHAT_DATABASE_URL`: `sqlite:PATH` (default `sqlite:.state/rooms.sqlite`) or `postgres://…`.
    package var databaseURL: String
    /// `CHAT_HEALTH_HOST` / `CHAT_HEALTH_PORT` (default 127.0.0.1:8002): `/health`, `/health/ready`, `/stats`.
    package var healthHost: String
    package var healthPort: Int
    /// `CHAT_GATEWAY_EXPIRY_SECONDS` (default 15): a gateway not heard from for this long has its members forgotten.
    package var gatewayExpiry: Duration
    /// `CHAT_ROOMS_INSTANCE_ID` (default random): names this instance's membership queue.
    package var instanceID: String

    /// Reads every `CHAT_*` setting of the room service; a malformed or out-of-range value is refused, naming it.
    package static func fromEnvironment(_ env: EnvironmentReader = .init()) throws -> Self {
        Self(
            amqpURL: env.string("CHAT_AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F"),
            databaseURL: env.string("CHAT_DATABASE_URL", default: "sqlite:.state/rooms.sqlite"),
            healthHost: env.string("CHAT_HEALTH_HOST", default: "127.0.0.1"),
            healthPort: try env.int("CHAT_HEALTH_PORT", default: 8002, in: 0...65535),
            gatewayExpiry: .seconds(try env.int("CHAT_GATEWAY_EXPIRY_SECONDS", default: 15, in: 1...3600)),
            instanceID: env.string("CHAT_ROOMS_INSTANCE_ID", default: String(UUID().uuidString.lowercased().prefix(8))))
    }
}

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
    let responder = RoomRequestResponder(connection: connection, store: store, readiness: readiness, logger: logger)
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
        let decoder = JSONDecoder()
        let (ended, end) = AsyncStream<Void>.makeStream()
        let consumer = connection.consume(queue: queue, prefetch: 2000, autoAck: true, finished: { end.finish() }) { batch in
            for delivery in batch {
                guard let event = try? decoder.decode(MembershipEvent.self, from: Data(buffer: delivery.body)) else {
                    logger.warning("dropping a malformed membership event", metadata: ["amqp.queue": "\(queue)"])
                    continue
                }
                event.apply(to: membership)
            }
        }
        await withTaskCancellationOrGracefulShutdownHandler {
            for await _ in ended {}
        } onCancelOrGracefulShutdown: {
            consumer.cancel()
        }
    }
}

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

/// Answers the gateways on `chat.rooms.requests`.
final class RoomRequestResponder: Service {
    let connection: AMQPConnection
    let store: RoomStore
    let readiness: Readiness
    let logger: Logger
    let decoder = JSONDecoder()
    let encoder = JSONEncoder()

    init(connection: AMQPConnection, store: RoomStore, readiness: Readiness, logger: Logger) {
        self.connection = connection
        self.store = store
        self.readiness = readiness
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.roomsQueue)
        self.logger = logger
    }

    func run() async throws {
        do {
            let store = self.store
            try await retryUntilDone("database", readiness: readiness, logger: logger) { try await store.migrate() }
        } catch {
            return  // shut down while waiting
        }
        try await ChatTopology.declare(.roomsResponder, on: connection)
        logger.info("room service consuming")
        let consumer = connection.consume(queue: ChatTopology.roomsQueue, prefetch: 256)
        // Requests are answered concurrently (up to `maxConcurrent`): a burst of joins of new rooms (each an
        // insert) must not queue behind one another past the gateways' timeout. Membership changes are
        // in-memory and each is applied whole; the gateways' heartbeats (full snapshots) keep the counts true.
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            for await delivery in consumer.cancelOnGracefulShutdown() {
                if running >= Self.maxConcurrent {
                    await group.next()
                    running -= 1
                }
                group.addTask {
                    await self.handle(delivery)
                    delivery.ack()
                }
                running += 1
            }
        }
    }

    static let maxConcurrent = 64

    /// `chat_rooms_requests_total{op}`: room requests served, by operation (a handful of values).
    static func requests(op: String) -> Counter {
        Counter(label: "chat_rooms_requests_total", dimensions: [("op", op)])
    }

    func handle(_ delivery: AMQPDelivery) async {
        guard let request = try? decoder.decode(RoomRequest.self, from: Data(buffer: delivery.body)) else {
            Self.requests(op: "malformed").increment()
            await reply(to: delivery, .refused(reason: "malformed request"))
            return
        }
        Self.requests(op: request.operation).increment()
        do {
            await reply(to: delivery, try await answer(request))
        } catch let error as ChatError {
            await reply(to: delivery, .refused(reason: error.description))
        } catch {
            logger.error("room request failed", metadata: ["error": "\(error)", "op": "\(request.operation)"])
            await reply(to: delivery, .failed(reason: "room service error"))
        }
    }

    func answer(_ request: RoomRequest) async throws -> RoomReply {
        switch request {
        case .join(.consult):
            // Consultation rooms exist before anyone joins; the gateway has checked the participant.
            return .joined(roomID: nil, created: false)
        case .join(.named(let name)):
            let (room, created) = try await store.getOrCreate(kind: "named", name: name.value)
            if created { logger.info("room created", metadata: ["chat.room": "\(name.value)", "chat.room_id": "\(room.id)"]) }
            return .joined(roomID: room.id, created: created)
        case .consultCreate(let shop, let visitor):
            let (room, created) = try await store.getOrCreateConsultRoom(shopEmail: shop.value, visitorEmail: visitor.value)
            if created { logger.info("consultation room created", metadata: ["chat.room_id": "\(room.id)"]) }
            return .consultRoom(room: room, created: created)
        case .consultGet(let id):
            guard let room = try await store.consultRoom(id: id) else { return .notFound }
            return .consultRoom(room: room, created: false)
        case .consultList(let email, let role):
            return .consultRooms(try await store.consultRooms(email: email.value, role: role))
        case .consultRead(let roomID, let email, let seq):
            return .readUpTo(seq: try await store.markRead(roomID: roomID, email: email.value, seq: seq))
        }
    }

    func reply(to delivery: AMQPDelivery, _ reply: RoomReply) async {
        guard let body = try? encoder.encode(reply),
              let message = AMQPRequester.reply(to: delivery, body: ByteBuffer(bytes: body)) else { return }
        // Not awaited: a lost reply is the requester's timeout, and waiting here would hold the next request.
        let logger = self.logger
        connection.publishPipelined([message]).onFailure { error in
            logger.warning("reply not confirmed", metadata: ["error": "\(error)"])
        }
    }
}
