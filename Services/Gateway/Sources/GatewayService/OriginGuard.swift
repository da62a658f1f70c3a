import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1

/// Answers a WebSocket upgrade from a foreign `Origin` with 403, as Django's AllowedHostsOriginValidator
/// does. hummingbird-websocket answers every refused upgrade with an empty 400, so this handler sits right
/// after the HTTP decoder and refuses the request before the upgrader sees it. Requests without an upgrade
/// pass through untouched. (The WebSocket routes check the Origin again.)
final class OriginGuardHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let policy: OriginPolicy
    private var refusing = false

    init(policy: OriginPolicy) {
        self.policy = policy
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            let isUpgrade = head.headers["upgrade"].contains { $0.lowercased() == "websocket" }
            if isUpgrade && !policy.allows(head.headers["origin"].first) {
                refusing = true
                let body = ByteBuffer(string: "{\"error\":\"origin not allowed\",\"status\":403}")
                var headers = HTTPHeaders()
                headers.add(name: "content-type", value: "application/json")
                headers.add(name: "content-length", value: "\(body.readableBytes)")
                headers.add(name: "connection", value: "close")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .forbidden, headers: headers))), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
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

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<HTTP1WebSocketUpgradeChannel.Value> {
        base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let decoder = try channel.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(OriginGuardHandler(policy: policy), position: .after(decoder.handler))
            return value
        }
    }

    func handle(value: HTTP1WebSocketUpgradeChannel.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
