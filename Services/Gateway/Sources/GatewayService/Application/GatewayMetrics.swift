import ChannelLayer
import CoreMetrics

/// What a gateway counts, for `/metrics` (deliveries and their latency are the channel layer's).
enum GatewayMetrics {
    static let socketsOpen = Meter(label: "chat_gateway_sockets_open")
    static let joins = Counter(label: "chat_gateway_joins_total")
    static let leaves = Counter(label: "chat_gateway_leaves_total")
    /// Chat messages taken from sockets and handed to the broker.
    static let messagesIn = Counter(label: "chat_gateway_messages_in_total")
    /// Error frames sent (bad frames, refused messages, …).
    static let errorFrames = Counter(label: "chat_gateway_error_frames_total")
    /// Client frames refused by the per-user rate limit.
    static let rateLimited = Counter(label: "chat_gateway_rate_limited_total")

    /// Makes every series exist from the start (a scrape of a gateway that has had no socket yet shows zeros).
    static func register() {
        socketsOpen.set(0)
        for counter in [joins, leaves, messagesIn, errorFrames, rateLimited] { counter.increment(by: 0) }
        ChannelLayerMetrics.register()
    }
}
