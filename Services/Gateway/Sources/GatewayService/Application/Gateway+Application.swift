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

/// Builds the gateway: its broker connection, its channel layer (one exclusive queue for this process),
/// the heartbeat to the room service, and the HTTP + WebSocket server.
package func buildApplication(_ configuration: GatewayConfiguration, logger: Logger) async throws -> ServiceApplication {
    var logger = logger
    logger[metadataKey: "chat.gateway"] = .string(configuration.gatewayID)
    GatewayMetrics.register()
    // Refused before anything starts: the AMQP connection's thread starts with it, and would be left running.
    guard configuration.jwtSecret.utf8.count >= 32 else {
        throw GatewayConfigurationError.jwtSecretTooShort(configuration.jwtSecret.utf8.count)
    }
    let connection = AMQPConnection(
        configuration: try AMQPConfiguration(url: configuration.amqpURL, connectionName: "gateway-\(configuration.gatewayID)",
                                         linger: configuration.amqpLinger),
        logger: logger)
    // Every gateway's joins, leaves and heartbeats, for the presence counts of this gateway's rooms (its own named
    // sockets are counted from the hub of its groups).
    let hub = Hub()
    let presence = MembershipPresence(gatewayID: configuration.gatewayID, hub: hub, expiry: configuration.gatewayExpiry)
    let userSockets = UserSockets()
    let layer = AMQPChannelLayer(connection: connection, processID: configuration.gatewayID, hub: hub, logger: logger,
                                 onMembershipEvent: { event in
                                     if event.kind == .disconnect, let user = event.user {
                                         userSockets.disconnect(user, reason: event.reason ?? "disconnected by the server")
                                     } else {
                                         presence.apply(event)
                                     }
                                 })
    let broker = AMQPGatewayBroker(layer: layer, gatewayID: configuration.gatewayID, partitions: configuration.partitions)
    let backend = GatewayBackend(configuration: configuration, broker: broker, presence: presence, logger: logger, userSockets: userSockets)
    let authenticator = await Authenticator(secret: configuration.jwtSecret)
    if configuration.serverAPIKey != nil {
        logger.info("the server API (/api/server/*) is on")
    }
    if configuration.devTokens {
        logger.warning("CHAT_DEV_TOKENS is on: POST /api/dev/token mints tokens for anyone (development only)")
    }
    let server = makeServer(configuration: configuration, backend: backend, authenticator: authenticator, connection: connection, logger: logger)
    return ServiceApplication(services: [connection, backend, layer, PresenceNotifier(backend: backend), server,
                                         MemoryTrimmer(interval: configuration.mallocTrimInterval)],
                              logger: logger)
}

func makeServer(configuration: GatewayConfiguration, backend: GatewayBackend, authenticator: Authenticator,
                connection: AMQPConnection, logger: Logger) -> some Service {
    let origins = OriginPolicy(allowed: configuration.allowedOrigins)
    let limiter = ConnectionLimiter(maximum: configuration.maxConnections ?? ConnectionLimiter.defaultMaximum())
    logger.info("WebSocket limit", metadata: ["chat.max_connections": "\(limiter.maximum)"])
    let router = Router()
    router.add(middleware: RequestLogMiddleware())
    HealthRoutes.add(to: router, service: "gateway", connection: connection)
    addRoutes(to: router, configuration: configuration, backend: backend, authenticator: authenticator, origins: origins)

    let rates = UserRateLimits(perSecond: configuration.ratePerSecond, burst: configuration.rateBurst)
    let connects = ConnectRateLimits(perSecond: configuration.connectRatePerSecond)
    logger.info("limits", metadata: ["chat.rate_per_second": "\(configuration.ratePerSecond)", "chat.rate_burst": "\(configuration.rateBurst)",
                                     "chat.connect_rate_per_second": "\(configuration.connectRatePerSecond)",
                                     "chat.max_sockets_per_user": "\(configuration.maxSocketsPerUser)"])
    let sockets = SocketServices(backend: backend, authenticator: authenticator, limiter: limiter, rates: rates, logger: logger)
    return Application(
        router: router,
        server: HTTPServerBuilder { responder in
            ChatServerChannel(responder: responder, sockets: sockets, policy: origins, connects: connects,
                              proxies: configuration.trustedProxies)
        },
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "swift-chat"),
        eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreads)),
        logger: logger)
}

/// The gateway's HTTP routes past health and metrics: the pages, the REST API and the WebSocket paths' answer
/// to a request that is not (or may not be) upgraded. Shared by the server and the router tests.
func addRoutes<Context: RequestContext>(to router: Router<Context>, configuration: GatewayConfiguration, backend: GatewayBackend,
                                        authenticator: Authenticator, origins: OriginPolicy) {
    Pages.add(to: router)
    API(backend: backend, authenticator: authenticator, configuration: configuration).add(to: router)
    // A WebSocket upgrade from a foreign Origin is not upgraded; it falls through to these routes, which say 403.
    for path in ["/ws/chat/:room", "/ws/room/:id/messages"] {
        router.get(RouterPath(path)) { request, _ -> Response in
            if !origins.allows(request.headers[.origin]) {
                throw APIError(.forbidden, "origin not allowed")
            }
            throw APIError(.upgradeRequired, "this is a WebSocket endpoint")
        }
    }
    router.add(middleware: MethodNotAllowedMiddleware<Context>(routes: router.routes))
}

/// A gateway configuration that cannot start.
package enum GatewayConfigurationError: Error, CustomStringConvertible {
    case jwtSecretTooShort(Int)

    package var description: String {
        switch self {
        case .jwtSecretTooShort(let bytes): "CHAT_JWT_SECRET must be at least 32 bytes for HS256 (it has \(bytes))"
        }
    }
}
