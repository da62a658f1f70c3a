import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1
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

/// The HTTP/1 + WebSocket server channel with the origin guard in its pipeline.
struct OriginGuardedChannel: ServerChildChannel {
    let base: HTTP1WebSocketUpgradeChannel
    let policy: OriginPolicy
    let limiter: ConnectionLimiter

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<HTTP1WebSocketUpgradeChannel.Value> {
        base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let decoder = try channel.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(OriginGuardHandler(policy: policy, limiter: limiter), position: .after(decoder.handler))
            return value
        }
    }

    func handle(value: HTTP1WebSocketUpgradeChannel.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
