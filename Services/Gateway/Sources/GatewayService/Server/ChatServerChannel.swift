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
    let connects: ConnectRateLimits?
    let proxies: TrustedProxies

    /// Each connection keeps its last receive buffer for the next read: NIO's first size (2,048 bytes) was a
    /// fifth of an idle socket's memory, while chat frames are small; a larger read still grows it.
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let sockets = self.sockets
            try channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: Self.receiveBuffers)
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
            try channel.pipeline.syncOperations.addHandler(OriginGuardHandler(policy: policy, limiter: sockets.limiter,
                                                                              connects: connects, proxies: proxies),
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
