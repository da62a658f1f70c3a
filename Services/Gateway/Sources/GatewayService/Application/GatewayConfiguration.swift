import AMQPClient
import ChatProtocol
import Foundation
import ServiceKit
import NIOCore

/// Configuration of the gateway, read from the environment in one place (README.md lists them).
package struct GatewayConfiguration: Sendable {
    /// `CHAT_GATEWAY_HOST` / `CHAT_GATEWAY_PORT`: where HTTP and WebSockets are served (default 127.0.0.1:8000).
    package var host: String
    package var port: Int
    /// `CHAT_AMQP_URL`, default ``AMQPConfiguration/defaultURL``.
    package var amqpURL: String
    /// `CHAT_GATEWAY_ID`: names this process's queue (default: random).
    package var gatewayID: String
    /// `CHAT_MAX_FRAME_BYTES` (default 65536): a larger client message gets an error frame; one over four
    /// times this (at least 1 MiB) closes the socket with 1009.
    package var maxFrameBytes: Int
    /// `CHAT_HISTORY_LIMIT` (default 50): messages a socket receives on join.
    package var historyLimit: Int
    /// `CHAT_RESUME_LIMIT` (default 500, at most 1000): the most messages a socket resuming with `?since=` is
    /// sent; one that missed more gets `{"type":"reset"}` and pages back through REST.
    package var resumeLimit: Int = 500
    /// `CHAT_REQUEST_TIMEOUT_MS` (default 5000): how long to wait for the room and persistence services.
    package var requestTimeout: Duration
    /// `CHAT_MAILBOX_CAPACITY` (default 1024): undelivered messages a socket may fall behind before it is
    /// disconnected with 4008.
    package var mailboxCapacity: Int
    /// `CHAT_HEARTBEAT_SECONDS` (default 5): how often the gateway reports its members to the room service.
    package var heartbeatInterval: Duration
    /// `CHAT_JWT_SECRET`: the HS256 secret of the tokens (default: a random one per process, so tokens are
    /// valid on that gateway only; set the same secret on every gateway).
    package var jwtSecret: String
    /// `CHAT_DEV_TOKENS=1` enables `POST /api/dev/token` (development only; 404 otherwise).
    package var devTokens: Bool
    /// `CHAT_ALLOW_ANONYMOUS=1` lets sockets without a token into the named (tutorial) rooms.
    package var allowAnonymous: Bool
    /// `CHAT_ALLOWED_ORIGINS`: comma-separated hosts, origins or `*` a WebSocket's `Origin` must match
    /// (default: the gateway's own host, `localhost`, `127.0.0.1`, `[::1]`).
    package var allowedOrigins: [String]
    /// `CHAT_MAX_BODY_BYTES` (default 16384): larger REST request bodies get 413.
    package var maxBodyBytes: Int
    /// `CHAT_MAX_CONNECTIONS`: WebSockets this process holds; past it upgrades get 503 (default: the
    /// open-files limit less 512).
    package var maxConnections: Int?
    /// `CHAT_MALLOC_TRIM_SECONDS` (default 10; 0 turns it off): how often freed heap is handed back to the
    /// system, so that resident memory follows the sockets held rather than the last burst.
    package var mallocTrimInterval: Duration = .seconds(10)
    /// `CHAT_GATEWAY_THREADS` (default: half the cores, at least 1): event loop threads serving HTTP and
    /// WebSockets. Fewer loops mean fewer thread hops per broadcast; the other cores go to the AMQP thread, the
    /// broker and the other services when they share the machine (on 2 cores one loop measured best).
    package var eventLoopThreads: Int = Self.defaultEventLoopThreads
    /// Half the cores, at least one.
    package static var defaultEventLoopThreads: Int { max(1, System.coreCount / 2) }
    /// `CHAT_AMQP_LINGER_US` (default ``defaultAMQPLinger``): the AMQP thread's linger once woken, so the client
    /// messages of several sockets go as one publish at moderate load.
    package var amqpLinger: Duration = Self.defaultAMQPLinger
    package static let defaultAMQPLinger: Duration = .microseconds(500)
    /// `CHAT_PERSIST_PARTITIONS` (default 2): the partitions of `chat.inbound`; the same in every gateway and
    /// persistence worker (a room's messages go to the partition its name hashes to).
    package var partitions: Int = ChatTopology.defaultPartitions
    /// `CHAT_GATEWAY_EXPIRY_SECONDS` (default 15): another gateway not heard from for this long has its members
    /// dropped from the presence counts (the room service uses the same variable).
    package var gatewayExpiry: Duration = .seconds(15)
    /// `CHAT_RATE_PER_SECOND` (default 10) and `CHAT_RATE_BURST` (default 30): client frames a user may send
    /// on this gateway, a token bucket shared by the user's sockets; 0 turns the limit off.
    package var ratePerSecond: Int = 10
    package var rateBurst: Int = 30
    /// `CHAT_CONNECT_RATE_PER_SECOND` (default 50, burst twice that): WebSocket upgrades per client address;
    /// past it 429 with `Retry-After`. 0 turns it off.
    package var connectRatePerSecond: Int = 50
    /// `CHAT_TRUSTED_PROXIES`: reverse proxies whose `X-Forwarded-For` names the client (default: none).
    package var trustedProxies = TrustedProxies()
    /// `CHAT_MAX_SOCKETS_PER_USER` (default 16; 0 turns it off): one user's sockets across every gateway.
    package var maxSocketsPerUser: Int = 16
    /// `CHAT_SERVER_API_KEY` (at least 32 bytes): enables `/api/server/*` for back ends, which send it as
    /// `X-Chat-Api-Key`; without it those routes answer 404.
    package var serverAPIKey: String?

    package init(host: String = "127.0.0.1", port: Int = 8000, amqpURL: String = AMQPConfiguration.defaultURL,
                gatewayID: String = GatewayConfiguration.randomID(), maxFrameBytes: Int = 65536, historyLimit: Int = 50,
                requestTimeout: Duration = .seconds(5), mailboxCapacity: Int = 1024, heartbeatInterval: Duration = .seconds(5),
                jwtSecret: String = UUID().uuidString + UUID().uuidString, devTokens: Bool = false, allowAnonymous: Bool = false,
                allowedOrigins: [String]? = nil, maxBodyBytes: Int = 16384, maxConnections: Int? = nil) {
        self.host = host
        self.port = port
        self.amqpURL = amqpURL
        self.gatewayID = gatewayID
        self.maxFrameBytes = maxFrameBytes
        self.historyLimit = historyLimit
        self.requestTimeout = requestTimeout
        self.mailboxCapacity = mailboxCapacity
        self.heartbeatInterval = heartbeatInterval
        self.jwtSecret = jwtSecret
        self.devTokens = devTokens
        self.allowAnonymous = allowAnonymous
        self.allowedOrigins = allowedOrigins ?? [host, "localhost", "127.0.0.1", "[::1]"]
        self.maxBodyBytes = maxBodyBytes
        self.maxConnections = maxConnections
    }

    /// Reads every `CHAT_*` setting of the gateway; a malformed or out-of-range value is refused, naming it.
    package static func fromEnvironment(_ env: EnvironmentReader = .init()) throws -> Self {
        Self(
            host: env.string("CHAT_GATEWAY_HOST", default: "127.0.0.1"),
            port: try env.int("CHAT_GATEWAY_PORT", default: 8000, in: 0...65535),
            amqpURL: env.string("CHAT_AMQP_URL", default: AMQPConfiguration.defaultURL),
            gatewayID: env.string("CHAT_GATEWAY_ID", default: randomID()),
            maxFrameBytes: try env.int("CHAT_MAX_FRAME_BYTES", default: 65536, in: 16...(16 << 20)),
            historyLimit: try env.int("CHAT_HISTORY_LIMIT", default: 50, in: 0...1000),
            requestTimeout: .milliseconds(try env.int("CHAT_REQUEST_TIMEOUT_MS", default: 5000, in: 100...600_000)),
            mailboxCapacity: try env.int("CHAT_MAILBOX_CAPACITY", default: 1024, in: 1...1_000_000),
            heartbeatInterval: .seconds(try env.int("CHAT_HEARTBEAT_SECONDS", default: 5, in: 1...3600)),
            jwtSecret: env.string("CHAT_JWT_SECRET", default: UUID().uuidString + UUID().uuidString),
            devTokens: try env.bool("CHAT_DEV_TOKENS", default: false),
            allowAnonymous: try env.bool("CHAT_ALLOW_ANONYMOUS", default: false),
            allowedOrigins: env.string("CHAT_ALLOWED_ORIGINS", default: "").split(separator: ",")
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.nilIfEmpty,
            maxBodyBytes: try env.int("CHAT_MAX_BODY_BYTES", default: 16384, in: 256...(16 << 20)),
            maxConnections: try env.int("CHAT_MAX_CONNECTIONS", default: 0, in: 0...10_000_000).nonZero)
            .with(\.mallocTrimInterval, .seconds(try env.int("CHAT_MALLOC_TRIM_SECONDS", default: 10, in: 0...86400)))
            .with(\.eventLoopThreads, try env.int("CHAT_GATEWAY_THREADS", default: Self.defaultEventLoopThreads, in: 1...256))
            .with(\.partitions, try env.int("CHAT_PERSIST_PARTITIONS", default: ChatTopology.defaultPartitions, in: 1...256))
            .with(\.gatewayExpiry, .seconds(try env.int("CHAT_GATEWAY_EXPIRY_SECONDS", default: 15, in: 1...3600)))
            .with(\.resumeLimit, try env.int("CHAT_RESUME_LIMIT", default: 500, in: 1...1000))
            .with(\.amqpLinger, try env.amqpLinger(default: Int(Self.defaultAMQPLinger / .microseconds(1))))
            .with(\.ratePerSecond, try env.int("CHAT_RATE_PER_SECOND", default: 10, in: 0...1_000_000))
            .with(\.rateBurst, try env.int("CHAT_RATE_BURST", default: 30, in: 1...1_000_000))
            .with(\.connectRatePerSecond, try env.int("CHAT_CONNECT_RATE_PER_SECOND", default: 50, in: 0...1_000_000))
            .with(\.trustedProxies, try TrustedProxies(parsing: env.string("CHAT_TRUSTED_PROXIES", default: "")))
            .with(\.maxSocketsPerUser, try env.int("CHAT_MAX_SOCKETS_PER_USER", default: 16, in: 0...1_000_000))
            .with(\.serverAPIKey, try env.secret("CHAT_SERVER_API_KEY", minimumBytes: 32))
    }

    func with<Value>(_ key: WritableKeyPath<Self, Value>, _ value: Value) -> Self {
        var copy = self
        copy[keyPath: key] = value
        return copy
    }

    /// A short random id for a gateway that was given none.
    package static func randomID() -> String {
        String(UUID().uuidString.lowercased().prefix(8)) + "-\(ProcessInfo.processInfo.processIdentifier)"
    }

    /// Frames up to this size are read whole; larger ones close the socket (1009).
    var hardFrameLimit: Int { max(maxFrameBytes * 4, 1 << 20) }
}

extension Array {
    var nilIfEmpty: Self? { isEmpty ? nil : self }
}

extension Int {
    /// Nil for 0 ("not set" in a setting where 0 means the default).
    var nonZero: Int? { self == 0 ? nil : self }
}
