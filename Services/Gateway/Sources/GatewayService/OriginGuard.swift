import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Caps the gateway's WebSockets below the process's open-files limit: a Swift server that runs out of
/// file descriptors crashes inside libdispatch, so past the cap new upgrades get 503 and the sockets already
/// open keep being served.
final class ConnectionLimiter: Sendable {
    let maximum: Int
    private let active = Atomic<Int>(0)

    init(maximum: Int) {
        self.maximum = maximum
    }

    /// The default: the soft open-files limit less a reserve for the broker, HTTP requests and the runtime.
    static func defaultMaximum() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < UInt64(Int32.max) else { return 1_000_000 }
        return max(16, Int(limit.rlim_cur) - 512)
    }

    var count: Int { active.load(ordering: .relaxed) }
    var isFull: Bool { count >= maximum }
    func enter() { active.add(1, ordering: .relaxed) }
    func leave() { active.subtract(1, ordering: .relaxed) }
}

/// Answers a WebSocket upgrade from a foreign `Origin` with 403, as Django's AllowedHostsOriginValidator
/// does. hummingbird-websocket answers every refused upgrade with an empty 400, so this handler sits right
/// after the HTTP decoder and refuses the request before the upgrader sees it. Requests without an upgrade
/// pass through untouched. (The WebSocket routes check the Origin again.)
final class OriginGuardHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let policy: OriginPolicy
    let limiter: ConnectionLimiter
    private var refusing = false

    init(policy: OriginPolicy, limiter: ConnectionLimiter) {
        self.policy = policy
        self.limiter = limiter
    }

    private func refuse(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ message: String) {
        refusing = true
        let body = ByteBuffer(string: "{\"error\":\"\(message)\",\"status\":\(status.code)}")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: "\(body.readableBytes)")
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            let isUpgrade = head.headers["upgrade"].contains { $0.lowercased() == "websocket" }
            if isUpgrade && !policy.allows(head.headers["origin"].first) {
                refuse(context, head, .forbidden, "origin not allowed")
                return
            }
            if isUpgrade && limiter.isFull {
                refuse(context, head, .serviceUnavailable, "too many connections, try again later")
                return
            }
            // Only a connection's first request can be an upgrade (the upgrader looks at no other), and after an
            // upgrade the bytes are WebSocket frames: step out of the pipeline now.
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        case .body, .end:
            if !refusing { context.fireChannelRead(data) }
        }
    }
}

/// The gateway's HTTP/1 server channel. HTTP requests go to the Hummingbird router; an upgrade to one of the
/// two WebSocket paths installs NIO's frame codec, the fragment aggregator and a ``ChatSocketHandler`` and
/// leaves the socket to them (no task stays behind for it). The ``OriginGuardHandler`` sits after the HTTP
/// decoder and refuses foreign origins (403) and upgrades past the socket cap (503) before the upgrader sees them.
struct ChatServerChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        case webSocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let sockets: SocketServices
    let policy: OriginPolicy

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let sockets = self.sockets
            let hardLimit = sockets.configuration.hardFrameLimit
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: hardLimit,
                shouldUpgrade: { channel, head in
                    // Other paths are not upgraded: the router answers them (404).
                    channel.eventLoop.makeSucceededFuture(SocketEndpoint(uri: head.uri) == nil ? nil : HTTPHeaders())
                },
                upgradePipelineHandler: { channel, head in
                    channel.eventLoop.makeCompletedFuture {
                        guard let endpoint = SocketEndpoint(uri: head.uri) else { throw ChannelError.inappropriateOperationForState }
                        try channel.pipeline.syncOperations.addHandler(NIOWebSocketFrameAggregator(
                            minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: hardLimit))
                        try channel.pipeline.syncOperations.addHandler(ChatSocketHandler(services: sockets, endpoint: endpoint, head: head))
                        return .webSocket
                    }
                })
            let upgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration<UpgradeResult>(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
                        return .notUpgraded(try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true)))
                    }
                })
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: upgradeConfiguration)
            configuration.enablePipelining = false
            configuration.enableErrorHandling = false
            configuration.enableResponseHeaderValidation = false
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
            let decoder = try channel.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(OriginGuardHandler(policy: policy, limiter: sockets.limiter),
                                                           position: .after(decoder.handler))
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .webSocket:
                return  // the socket lives on in its handlers
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            }
        } catch {
            logger.debug("connection ended before a request", metadata: ["error": "\(error)"])
        }
    }
}
