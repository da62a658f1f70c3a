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

/// Answers a WebSocket upgrade from a foreign `Origin` with 403, as Django's AllowedHostsOriginValidator
/// does. NIO's upgrader has no way to answer a refused upgrade with a status of our choosing, so this handler
/// sits right after the HTTP decoder and refuses the request before the upgrader sees it. Requests without an upgrade
/// pass through untouched. (The WebSocket routes check the Origin again.) It also refuses upgrades past the
/// socket cap (503) and past the client address's connection rate (429 with `Retry-After`).
final class OriginGuardHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let policy: OriginPolicy
    let limiter: ConnectionLimiter
    let connects: ConnectRateLimits?
    let proxies: TrustedProxies
    private var refusing = false

    init(policy: OriginPolicy, limiter: ConnectionLimiter, connects: ConnectRateLimits? = nil, proxies: TrustedProxies = .init()) {
        self.policy = policy
        self.limiter = limiter
        self.connects = connects
        self.proxies = proxies
    }

    private func refuse(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ message: String,
                        retryAfterSeconds: Int? = nil) {
        refusing = true
        let body = ByteBuffer(string: "{\"error\":\"\(message)\",\"status\":\(status.code)}")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: "\(body.readableBytes)")
        headers.add(name: "connection", value: "close")
        if let retryAfterSeconds { headers.add(name: "retry-after", value: "\(retryAfterSeconds)") }
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
            if isUpgrade, let connects {
                let address = proxies.clientAddress(peer: context.channel.remoteAddress?.ipAddress, forwardedFor: head.headers["x-forwarded-for"])
                if case .refused(let wait) = connects.take(address) {
                    refuse(context, head, .tooManyRequests, "too many new connections from your address, try again later",
                           retryAfterSeconds: max(1, (wait + 999) / 1000))
                    return
                }
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
