import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Presence
import ServiceKit
import ServiceLifecycle
import Synchronization

/// Builds the gateway: its broker connection, its channel layer (one exclusive queue for this process),
/// the heartbeat to the room service, and the HTTP + WebSocket server.
public func buildApplication(_ configuration: GatewayConfiguration, logger: Logger) async throws -> ServiceApplication {
    var logger = logger
    logger[metadataKey: "chat.gateway"] = .string(configuration.gatewayID)
    GatewayMetrics.register()
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "gateway-\(configuration.gatewayID)"),
        logger: logger)
    // Every gateway's joins, leaves and heartbeats, for the presence counts of this gateway's rooms.
    let membership = Membership(expiry: configuration.gatewayExpiry)
    let gatewayID = configuration.gatewayID
    let decoder = JSONDecoder()
    let layer = AMQPChannelLayer(connection: connection, processID: configuration.gatewayID, logger: logger) { body in
        // This gateway's own members are counted from its registry, which is never behind.
        if let event = try? decoder.decode(MembershipEvent.self, from: Data(buffer: body)), event.gateway != gatewayID {
            event.apply(to: membership)
        }
    }
    let backend = GatewayBackend(configuration: configuration, layer: layer, membership: membership, logger: logger)
    guard configuration.jwtSecret.utf8.count >= 32 else {
        throw GatewayConfigurationError.jwtSecretTooShort(configuration.jwtSecret.utf8.count)
    }
    let authenticator = await Authenticator(secret: configuration.jwtSecret)
    if configuration.devTokens {
        logger.warning("CHAT_DEV_TOKENS is on: POST /api/dev/token mints tokens for anyone (development only)")
    }
    let server = makeServer(configuration: configuration, backend: backend, authenticator: authenticator, logger: logger)
    return ServiceApplication(services: [connection, backend, layer, PresenceNotifier(backend: backend), server,
                                         MemoryTrimmer(interval: configuration.mallocTrimInterval)],
                              logger: logger)
}

func makeServer(configuration: GatewayConfiguration, backend: GatewayBackend, authenticator: Authenticator, logger: Logger) -> some Service {
    let origins = OriginPolicy(allowed: configuration.allowedOrigins)
    let limiter = ConnectionLimiter(maximum: configuration.maxConnections ?? ConnectionLimiter.defaultMaximum())
    logger.info("WebSocket limit", metadata: ["chat.max_connections": "\(limiter.maximum)"])
    let router = Router()
    router.add(middleware: RequestLogMiddleware())
    HealthRoutes.add(to: router, service: "gateway", connection: backend.connection)
    Pages.add(to: router)
    API(backend: backend, authenticator: authenticator, configuration: configuration).add(to: router)

    // A WebSocket upgrade from a foreign Origin is not upgraded; it falls through to these routes, which say 403.
    for path in ["/ws/chat/:room", "/ws/room/:id/messages"] {
        router.get(RouterPath(path)) { request, _ -> Response in
            if !origins.allows(request.headers[.origin]) {
                return API.error(.forbidden, "origin not allowed")
            }
            return API.error(.upgradeRequired, "this is a WebSocket endpoint")
        }
    }

    let sockets = SocketServices(backend: backend, authenticator: authenticator, limiter: limiter, logger: logger)
    return Application(
        router: router,
        server: HTTPServerBuilder { responder in
            ChatServerChannel(responder: responder, sockets: sockets, policy: origins)
        },
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "swift-chat"),
        eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreads)),
        logger: logger)
}

/// What sessions use to reach the other services over AMQP; also declares the shared topology and sends
/// this gateway's heartbeats (its member counts) to the room service.
final class GatewayBackend: Service {
    let configuration: GatewayConfiguration
    let layer: AMQPChannelLayer
    let logger: Logger
    var connection: AMQPConnection { layer.connection }
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()

    let inboundBatcher: InboundBatcher
    /// The other gateways' members (from the membership fanout).
    let membership: Membership
    /// This gateway's consultation sockets per room and email (their named sockets are the registry's counts).
    let localOnline = Mutex<[String: [String: Int]]>([:])

    init(configuration: GatewayConfiguration, layer: AMQPChannelLayer, membership: Membership, logger: Logger) {
        self.configuration = configuration
        self.layer = layer
        self.membership = membership
        self.logger = logger
        self.inboundBatcher = InboundBatcher(connection: layer.connection, partitions: configuration.partitions)
    }

    func run() async throws {
        try await declareTopology()
        repeat {
            let heartbeat = MembershipEvent(kind: .heartbeat, gateway: configuration.gatewayID, rooms: layer.registry.memberCounts(),
                                            online: localOnline.withLock { $0 })
            publishMembership(heartbeat)
        } while await sleepUntilShutdown(for: configuration.heartbeatInterval)
        // Its sockets are closed by now (the server stops first): the others forget this gateway at once.
        publishMembership(MembershipEvent(kind: .stop, gateway: configuration.gatewayID))
    }

    /// Publishes a membership event to the fanout: every room service instance and every gateway gets it. Not
    /// awaited (a socket's join need not wait a broker round trip for it): publishes leave in the order they are
    /// made, and a lost event is mended by the next heartbeat.
    func publishMembership(_ event: MembershipEvent) {
        guard let body = try? encoder.encode(event) else { return }
        connection.publishPipelined([AMQPOutgoingMessage(exchange: ChatTopology.membershipExchange, routingKey: "", body: ByteBuffer(bytes: body))])
    }

    /// The presence frame of a room as this gateway sees it now: its own sockets and the other gateways'.
    func presenceFrame(_ group: String) -> String {
        let me = configuration.gatewayID
        if case .consult = ChatGroup(key: group) {
            var online = Set(membership.online(in: group, excluding: me).keys)
            online.formUnion(localOnline.withLock { $0[group]?.keys.map { $0 } ?? [] })
            return PresenceFrame.consult(online: Array(online))
        }
        let count = layer.registry.memberCount(group) + membership.members(of: group, excluding: me)
        return PresenceFrame.named(room: ChatGroup.displayName(ofKey: group), count: count)
    }

    /// Declares what the gateway publishes to, so a message is queued durably even before its consumer starts.
    func declareTopology() async throws {
        try await ChatTopology.declare(.gateway(id: configuration.gatewayID, partitions: configuration.partitions), on: connection)
    }

    /// Hands a client message to the persistence service. Messages from every socket of this gateway that arrive
    /// together go out as one AMQP message (a JSON array), which is what keeps the broker's cost per chat
    /// message low; a socket's messages keep their order. The confirmation (the broker has the batch on disk)
    /// is awaited apart.
    func submit(_ message: InboundChatMessage) -> AMQPConfirmation {
        inboundBatcher.add(message)
    }


    /// Asks the room service for the room (created on first use) and, once it is there, tells every instance
    /// that a socket joined (`email`: who, in a consultation room).
    func join(group: ChatGroup, email: String?) async throws -> RoomReply {
        let reply = try await roomRequest(.join(group: group))
        if case .joined = reply {
            if let email { localOnline.withLock { $0[group.key, default: [:]][email, default: 0] += 1 } }
            publishMembership(MembershipEvent(kind: .join, gateway: configuration.gatewayID, room: group.key, email: email))
        }
        return reply
    }

    func leave(group: String, email: String?) async {
        if let email {
            localOnline.withLock { online in
                guard let count = online[group]?[email] else { return }
                online[group]![email] = count > 1 ? count - 1 : nil
                if online[group]!.isEmpty { online[group] = nil }
            }
        }
        publishMembership(MembershipEvent(kind: .leave, gateway: configuration.gatewayID, room: group, email: email))
    }

    /// Stored frames of a room, oldest first, with the seq of the first.
    func history(group: String, limit: Int, beforeSeq: Int64? = nil) async throws -> (firstSeq: Int64?, frames: [ByteBuffer]) {
        let reply = try await request(HistoryRequest.messages(group: group, limit: limit, beforeSeq: beforeSeq), to: ChatTopology.historyQueue)
        let count = Int(reply.properties.headers[ChatTopology.countHeader]?.intValue ?? 0)
        guard count > 0 else { return (nil, []) }
        return (reply.properties.headers[ChatTopology.seqHeader]?.intValue, FrameBatch.split(reply.body))
    }

    // MARK: Consultation rooms (room service)

    func consultRoom(id: Int64) async -> Result<ConsultRoom?, any Error> {
        do {
            switch try await roomRequest(.consultGet(id: id)) {
            case .consultRoom(let room, _): return .success(room)
            case .notFound: return .success(nil)
            case let other: return .failure(Self.unexpected(other))
            }
        } catch {
            return .failure(error)
        }
    }

    /// The pair's room and whether this call created it; a refused pair throws ``ChatError/invalidFrame(_:)``.
    func createConsultRoom(shop: Email, visitor: Email) async throws -> (room: ConsultRoom, created: Bool) {
        switch try await roomRequest(.consultCreate(shop: shop, visitor: visitor)) {
        case .consultRoom(let room, let created): return (room, created)
        case .refused(let reason): throw ChatError.invalidFrame(reason)
        case let other: throw Self.unexpected(other)
        }
    }

    func consultRooms(of identity: Identity) async throws -> [ConsultRoom] {
        switch try await roomRequest(.consultList(email: identity.email, role: identity.role)) {
        case .consultRooms(let rooms): return rooms
        case let other: throw Self.unexpected(other)
        }
    }

    func markRead(roomID: Int64, email: Email, seq: Int64) async throws -> Int64 {
        switch try await roomRequest(.consultRead(roomID: roomID, email: email, seq: seq)) {
        case .readUpTo(let mark): return mark
        case let other: throw Self.unexpected(other)
        }
    }

    /// Last message and unread count per room (persistence service).
    func summaries(_ queries: [RoomSummaryQuery]) async throws -> [RoomSummary] {
        if queries.isEmpty { return [] }
        let reply = try await request(HistoryRequest.summaries(queries), to: ChatTopology.historyQueue)
        return try decoder.decode([RoomSummary].self, from: Data(buffer: reply.body))
    }

    private static func unexpected(_ reply: RoomReply) -> ChatError {
        switch reply {
        case .refused(let reason), .failed(let reason): .unavailable(reason)
        default: .unavailable("room service error")
        }
    }

    private func roomRequest(_ request: RoomRequest) async throws -> RoomReply {
        let reply = try await self.request(request, to: ChatTopology.roomsQueue)
        return try decoder.decode(RoomReply.self, from: Data(buffer: reply.body))
    }

    private func request<Request: Encodable>(_ request: Request, to queue: String) async throws -> AMQPDelivery {
        try await layer.requester.request(routingKey: queue, body: ByteBuffer(bytes: try encoder.encode(request)),
                                          timeout: configuration.requestTimeout)
    }
}

public enum GatewayConfigurationError: Error, CustomStringConvertible {
    case jwtSecretTooShort(Int)

    public var description: String {
        switch self {
        case .jwtSecretTooShort(let bytes): "CHAT_JWT_SECRET must be at least 32 bytes for HS256 (it has \(bytes))"
        }
    }
}

/// Coalesces the client messages of every socket of this gateway into one AMQP message (a JSON array) on
/// `chat.inbound`. The first message after a cut asks the AMQP connection to publish "when ready": the batch
/// is cut when its thread gets to that request, so it holds whatever arrived meanwhile, one message when the
/// gateway is quiet and hundreds under load, with no task or timer per batch. Cuts happen in order on that
/// thread, so a socket's messages keep their order; every message of a batch shares its confirmation.
final class InboundBatcher: Sendable {
    struct State {
        var messages: [InboundChatMessage] = []
        var confirmation: AMQPConfirmation?
        var requested = false
    }
    let connection: AMQPConnection
    let partitions: Int
    private let state = Mutex(State())

    init(connection: AMQPConnection, partitions: Int) {
        self.connection = connection
        self.partitions = partitions
    }

    func add(_ message: InboundChatMessage) -> AMQPConfirmation {
        let (confirmation, request) = state.withLock { s -> (AMQPConfirmation, Bool) in
            let confirmation = s.confirmation ?? AMQPConfirmation()
            s.confirmation = confirmation
            s.messages.append(message)
            if s.requested { return (confirmation, false) }
            s.requested = true
            return (confirmation, true)
        }
        if request { connection.publishWhenReady { [self] in cut() } }
        return confirmation
    }

    /// Takes everything gathered so far as one AMQP message (on the connection's thread).
    func cut() -> AMQPProducedBatch? {
        let (batch, confirmation) = state.withLock { s -> ([InboundChatMessage], AMQPConfirmation?) in
            s.requested = false
            defer {
                s.messages = []
                s.confirmation = nil
            }
            return (s.messages, s.confirmation)
        }
        guard let confirmation, !batch.isEmpty else { return nil }
        // One AMQP message per partition the batch touches (each keeps its messages' order), all sharing the
        // batch's confirmation.
        var byPartition: [Int: [InboundChatMessage]] = [:]
        var order: [Int] = []
        for message in batch {
            let partition = partitions == 1 ? 0 : ChatTopology.partition(of: message.group, count: partitions)
            if byPartition[partition] == nil { order.append(partition) }
            byPartition[partition, default: []].append(message)
        }
        return AMQPProducedBatch(messages: order.map { partition in
            let messages = byPartition[partition]!
            return AMQPOutgoingMessage(
                exchange: ChatTopology.inboundExchange, routingKey: ChatTopology.partitionRoutingKey(partition),
                body: ByteBuffer(string: Self.encode(messages)),
                properties: AMQPProperties(persistent: true, headers: [ChatTopology.countHeader: .int(Int64(messages.count))]),
                mandatory: true)
        }, confirmation: confirmation)
    }

    /// `[{"id","group","sender"?,"text","receivedAt"}, …]`: what `InboundChatMessage`'s Codable reads.
    static func encode(_ batch: [InboundChatMessage]) -> String {
        var out = "["
        for (index, message) in batch.enumerated() {
            if index > 0 { out.append(",") }
            var object = JSONWriter()
            object.beginObject()
            object.field("id", message.id)
            object.field("group", message.group)
            object.field("sender", message.sender)
            object.field("text", message.text)
            object.field("receivedAt", message.receivedAt)
            object.endObject()
            out.append(object.output)
        }
        out.append("]")
        return out
    }
}

/// Sends each room's presence to this gateway's sockets in it whenever it changes, at most once a second per
/// room (a joining socket gets the current one at once, see ``ChatSocketHandler``), and forgets other gateways
/// that stopped sending heartbeats.
struct PresenceNotifier: Service {
    let backend: GatewayBackend

    func run() async throws {
        var lastSent: [String: String] = [:]
        while await sleepUntilShutdown(for: .seconds(1)) {
            for gateway in backend.membership.expire() {
                backend.logger.info("gateway expired; its members leave the presence counts", metadata: ["chat.peer_gateway": "\(gateway)"])
            }
            let registry = backend.layer.registry
            var current: [String: String] = [:]
            for group in registry.memberCounts().keys {
                let frame = backend.presenceFrame(group)
                current[group] = frame
                if lastSent[group] != frame {
                    _ = registry.dispatch(ChannelMessage(body: ByteBuffer(string: frame), group: group), to: group)
                }
            }
            lastSent = current
        }
    }
}
