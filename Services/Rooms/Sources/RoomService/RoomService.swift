import AMQPClient
import ChatProtocol
import ChatStorage
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle
import Synchronization

/// Configuration of the room service, read from the environment in one place.
public struct RoomConfiguration: Sendable {
    /// `CHAT_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2F`.
    public var amqpURL: String
    /// `CHAT_DATABASE_URL`: `sqlite:PATH` (default `sqlite:.state/rooms.sqlite`) or `postgres://…`.
    public var databaseURL: String
    /// `CHAT_HEALTH_HOST` / `CHAT_HEALTH_PORT` (default 127.0.0.1:8002): `/health`, `/health/ready`, `/stats`.
    public var healthHost: String
    public var healthPort: Int
    /// `CHAT_GATEWAY_EXPIRY_SECONDS` (default 15): a gateway not heard from for this long has its members forgotten.
    public var gatewayExpiry: Duration

    public static func fromEnvironment(_ env: EnvironmentReader = .init()) -> Self {
        Self(
            amqpURL: env.string("CHAT_AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F"),
            databaseURL: env.string("CHAT_DATABASE_URL", default: "sqlite:.state/rooms.sqlite"),
            healthHost: env.string("CHAT_HEALTH_HOST", default: "127.0.0.1"),
            healthPort: env.int("CHAT_HEALTH_PORT", default: 8002),
            gatewayExpiry: .seconds(env.int("CHAT_GATEWAY_EXPIRY_SECONDS", default: 15)))
    }
}

public func buildApplication(_ configuration: RoomConfiguration, logger: Logger) async throws -> ServiceApplication {
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "rooms"), logger: logger)
    let database = try await openDatabase(url: configuration.databaseURL, logger: logger)
    let store = RoomStore(database: database)
    let membership = Membership(expiry: configuration.gatewayExpiry)
    let responder = RoomRequestResponder(connection: connection, store: store, membership: membership, logger: logger)
    let health = makeHealthServer(service: "rooms", host: configuration.healthHost, port: configuration.healthPort,
                                  connection: connection, logger: logger) { router in
        router.get("/stats") { _, _ -> Response in
            let snapshot = membership.snapshot()
            let rooms = snapshot.rooms.map { "\(JSONWriter.quoted($0.key)):\($0.value)" }.joined(separator: ",")
            return HealthRoutes.json(.ok, "{\"gateways\":\(snapshot.gateways),\"rooms\":{\(rooms)}}")
        }
    }
    return ServiceApplication(services: [connection, database, responder, MembershipExpiry(membership: membership, logger: logger), health],
                              logger: logger)
}

/// Who is in which room, per gateway. Gateways report joins and leaves and send a snapshot with every
/// heartbeat; a gateway that stops sending heartbeats (it died) has its members forgotten after `expiry`.
public final class Membership: Sendable {
    struct GatewayState {
        var lastSeen: ContinuousClock.Instant
        var rooms: [String: Int]
    }
    private let state = Mutex<[String: GatewayState]>([:])
    let expiry: Duration

    public init(expiry: Duration) {
        self.expiry = expiry
    }

    public func join(gateway: String, room: String) -> Int {
        state.withLock { gateways in
            gateways[gateway, default: GatewayState(lastSeen: .now, rooms: [:])].rooms[room, default: 0] += 1
            gateways[gateway]!.lastSeen = .now
            return Self.total(room, in: gateways)
        }
    }

    public func leave(gateway: String, room: String) {
        state.withLock { gateways in
            guard var entry = gateways[gateway] else { return }
            entry.lastSeen = .now
            if let count = entry.rooms[room] { entry.rooms[room] = count > 1 ? count - 1 : nil }
            gateways[gateway] = entry
        }
    }

    public func heartbeat(gateway: String, rooms: [String: Int]) {
        state.withLock { $0[gateway] = GatewayState(lastSeen: .now, rooms: rooms.filter { $0.value > 0 }) }
    }

    public func members(of room: String) -> Int {
        state.withLock { Self.total(room, in: $0) }
    }

    /// Forgets gateways not heard from within `expiry`; returns their ids.
    public func expire(now: ContinuousClock.Instant = .now) -> [String] {
        state.withLock { gateways in
            let dead = gateways.filter { now - $0.value.lastSeen > expiry }.map(\.key)
            for id in dead { gateways[id] = nil }
            return dead
        }
    }

    public func snapshot() -> (gateways: Int, rooms: [String: Int]) {
        state.withLock { gateways in
            var rooms: [String: Int] = [:]
            for entry in gateways.values { for (room, count) in entry.rooms { rooms[room, default: 0] += count } }
            return (gateways.count, rooms)
        }
    }

    static func total(_ room: String, in gateways: [String: GatewayState]) -> Int {
        gateways.values.reduce(0) { $0 + ($1.rooms[room] ?? 0) }
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
    let membership: Membership
    let logger: Logger
    let decoder = JSONDecoder()
    let encoder = JSONEncoder()

    init(connection: AMQPConnection, store: RoomStore, membership: Membership, logger: Logger) {
        self.connection = connection
        self.store = store
        self.membership = membership
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.roomsQueue)
        self.logger = logger
    }

    func run() async throws {
        try await store.migrate()
        try await connection.declareQueue(ChatTopology.roomsQueue, durable: true)
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

    func handle(_ delivery: AMQPDelivery) async {
        guard let request = try? decoder.decode(RoomRequest.self, from: Data(buffer: delivery.body)) else {
            await reply(to: delivery, RoomReply(ok: false, error: "malformed request"))
            return
        }
        switch request.op {
        case .heartbeat:
            membership.heartbeat(gateway: request.gateway, rooms: request.rooms ?? [:])
        case .leave:
            if let room = request.room { membership.leave(gateway: request.gateway, room: room) }
        case .members:
            await reply(to: delivery, RoomReply(ok: true, room: request.room, members: request.room.map(membership.members(of:)) ?? 0))
        case .consultCreate, .consultGet, .consultList, .consultRead:
            await handleConsultation(request, delivery)
        case .join:
            guard let group = request.room, group.hasPrefix("named:") || group.hasPrefix("consult:") else {
                await reply(to: delivery, RoomReply(ok: false, error: "unknown room kind"))
                return
            }
            if group.hasPrefix("consult:") {
                // Consultation rooms exist before anyone joins; the gateway has checked the participant.
                let members = membership.join(gateway: request.gateway, room: group)
                await reply(to: delivery, RoomReply(ok: true, room: group, members: members))
                return
            }
            do {
                let name = try RoomName(validating: GroupName.displayName(of: group))
                let (room, created) = try await store.getOrCreate(kind: "named", name: name.value)
                if created { logger.info("room created", metadata: ["chat.room": "\(name.value)", "chat.room_id": "\(room.id)"]) }
                let members = membership.join(gateway: request.gateway, room: group)
                await reply(to: delivery, RoomReply(ok: true, roomID: room.id, room: name.value, created: created, members: members))
            } catch let error as ChatError {
                await reply(to: delivery, RoomReply(ok: false, error: error.description))
            } catch {
                logger.error("join failed", metadata: ["error": "\(error)", "chat.room": "\(group)"])
                await reply(to: delivery, RoomReply(ok: false, error: "room service error"))
            }
        }
    }

    func handleConsultation(_ request: RoomRequest, _ delivery: AMQPDelivery) async {
        do {
            switch request.op {
            case .consultCreate:
                let shop = try Email(validating: request.shopUserEmail ?? "")
                let visitor = try Email(validating: request.visitorUserEmail ?? "")
                let (room, created) = try await store.getOrCreateConsultRoom(shopEmail: shop.value, visitorEmail: visitor.value)
                if created { logger.info("consultation room created", metadata: ["chat.room_id": "\(room.id)"]) }
                await reply(to: delivery, RoomReply(ok: true, roomID: room.id, created: created, consultRoom: room))
            case .consultGet:
                guard let id = request.roomID, let room = try await store.consultRoom(id: id) else {
                    await reply(to: delivery, RoomReply(ok: false, error: "room not found", notFound: true))
                    return
                }
                await reply(to: delivery, RoomReply(ok: true, roomID: room.id, consultRoom: room))
            case .consultList:
                let email = try Email(validating: request.email ?? "")
                let rooms = try await store.consultRooms(email: email.value, role: request.role ?? .visitor)
                await reply(to: delivery, RoomReply(ok: true, consultRooms: rooms))
            case .consultRead:
                guard let id = request.roomID, let seq = request.seq, let email = request.email else {
                    await reply(to: delivery, RoomReply(ok: false, error: "roomID, email and seq are required"))
                    return
                }
                let mark = try await store.markRead(roomID: id, email: email, seq: seq)
                await reply(to: delivery, RoomReply(ok: true, roomID: id, members: nil, consultRoom: ConsultRoom(
                    id: id, shopUserEmail: "", visitorUserEmail: "", createdAt: 0, readSeq: mark)))
            default:
                break
            }
        } catch let error as ChatError {
            await reply(to: delivery, RoomReply(ok: false, error: error.description))
        } catch {
            logger.error("consultation request failed", metadata: ["error": "\(error)", "op": "\(request.op.rawValue)"])
            await reply(to: delivery, RoomReply(ok: false, error: "room service error"))
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
