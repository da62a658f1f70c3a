import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle

/// Builds the gateway: its broker connection, its channel layer (one exclusive queue for this process),
/// the heartbeat to the room service, and the HTTP + WebSocket server.
public func buildApplication(_ configuration: GatewayConfiguration, logger: Logger) async throws -> ServiceApplication {
    var logger = logger
    logger[metadataKey: "chat.gateway"] = .string(configuration.gatewayID)
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "gateway-\(configuration.gatewayID)"),
        logger: logger)
    let layer = AMQPChannelLayer(connection: connection, processID: configuration.gatewayID,
                                 mailboxCapacity: configuration.mailboxCapacity, logger: logger)
    let backend = GatewayBackend(configuration: configuration, layer: layer, logger: logger)
    let server = makeServer(configuration: configuration, backend: backend, logger: logger)
    return ServiceApplication(services: [connection, backend, layer, server], logger: logger)
}

func makeServer(configuration: GatewayConfiguration, backend: GatewayBackend, logger: Logger) -> some Service {
    let router = Router()
    HealthRoutes.add(to: router, service: "gateway", connection: backend.connection)
    Pages.add(to: router)

    let sockets = Router(context: BasicWebSocketRequestContext.self)
    sockets.ws("/ws/chat/:room") { _, _ in
        .upgrade([:])
    } onUpgrade: { inbound, outbound, context in
        let raw = context.requestContext.parameters.get("room") ?? ""
        let session = ChatSession(backend: backend, rawRoom: raw, outbound: outbound, logger: context.logger)
        await session.run(inbound: inbound)
    }
    return Application(
        router: router,
        server: .http1WebSocketUpgrade(
            webSocketRouter: sockets,
            configuration: .init(ws: WebSocketServerConfiguration(
                maxFrameSize: configuration.hardFrameLimit, autoPing: .enabled(timePeriod: .seconds(30))))),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "swift-chat"),
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

    init(configuration: GatewayConfiguration, layer: AMQPChannelLayer, logger: Logger) {
        self.configuration = configuration
        self.layer = layer
        self.logger = logger
    }

    func run() async throws {
        try await declareTopology()
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            let heartbeat = RoomRequest(op: .heartbeat, gateway: configuration.gatewayID, rooms: layer.registry.memberCounts())
            try? await publish(heartbeat, to: ChatTopology.roomsQueue)
        }
    }

    /// Declares what the gateway publishes to, so a message is queued durably even before its consumer starts.
    func declareTopology() async throws {
        try await layer.declareTopology()
        try await connection.declareExchange(ChatTopology.inboundExchange, type: .direct, durable: true)
        try await connection.declareQueue(ChatTopology.inboundQueue, durable: true, arguments: ["x-single-active-consumer": .bool(true)])
        try await connection.bindQueue(ChatTopology.inboundQueue, exchange: ChatTopology.inboundExchange, routingKey: ChatTopology.inboundRoutingKey)
        try await connection.declareQueue(ChatTopology.historyQueue, durable: true)
        try await connection.declareQueue(ChatTopology.roomsQueue, durable: true)
    }

    /// Hands a client message to the persistence service; returns once the broker has it on disk.
    func submit(_ message: InboundChatMessage) async throws {
        let body = try encoder.encode(message)
        try await connection.publish(AMQPOutgoingMessage(
            exchange: ChatTopology.inboundExchange, routingKey: ChatTopology.inboundRoutingKey, body: ByteBuffer(bytes: body),
            properties: AMQPProperties(messageID: message.id, persistent: true), mandatory: true))
    }

    func join(group: String) async throws -> RoomReply {
        let reply = try await request(RoomRequest(op: .join, gateway: configuration.gatewayID, room: group), to: ChatTopology.roomsQueue)
        return try decoder.decode(RoomReply.self, from: Data(buffer: reply.body))
    }

    func leave(group: String) async {
        try? await publish(RoomRequest(op: .leave, gateway: configuration.gatewayID, room: group), to: ChatTopology.roomsQueue)
    }

    /// Stored frames of a room, oldest first, with the seq of the first.
    func history(group: String, limit: Int, beforeSeq: Int64? = nil) async throws -> (firstSeq: Int64?, frames: [ByteBuffer]) {
        let reply = try await request(HistoryRequest(group: group, limit: limit, beforeSeq: beforeSeq), to: ChatTopology.historyQueue)
        let count = Int(reply.properties.headers[ChatTopology.countHeader]?.intValue ?? 0)
        guard count > 0 else { return (nil, []) }
        var body = reply.body
        var frames: [ByteBuffer] = []
        frames.reserveCapacity(count)
        while body.readableBytes > 0 {
            let end = body.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) ?? body.writerIndex
            frames.append(body.readSlice(length: end - body.readerIndex)!)
            body.moveReaderIndex(forwardBy: min(1, body.readableBytes))
        }
        return (reply.properties.headers[ChatTopology.seqHeader]?.intValue, frames)
    }

    private func request<Request: Encodable>(_ request: Request, to queue: String) async throws -> AMQPDelivery {
        try await layer.requester.request(routingKey: queue, body: ByteBuffer(bytes: try encoder.encode(request)),
                                          timeout: configuration.requestTimeout)
    }

    private func publish<Message: Encodable>(_ message: Message, to queue: String) async throws {
        try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(bytes: try encoder.encode(message))))
    }
}
