import CoreMetrics
import Foundation

/// Registers the channel layer's series at start, so that they are scraped as zeros before any delivery.
package enum ChannelLayerMetrics {
    /// Registers the metrics at start, so that `/metrics` lists them before the first delivery.
    package static func register() {
        ChannelMetrics.delivered.increment(by: 0)
        _ = ChannelMetrics.deliveryLatency
    }
}

/// What the channel layer counts in a gateway, for `/metrics`.
enum ChannelMetrics {
    /// Messages written to sockets (a message to a room of n local sockets counts n).
    static let delivered = Counter(label: "chat_gateway_messages_delivered_total")
    /// From the gateway that received a message to its frames written to this gateway's sockets: one sample
    /// per broadcast and event loop, timed from the broadcast's earliest message (received times are whole
    /// milliseconds, so a sample is up to 1 ms long).
    static let deliveryLatency = Timer(label: "chat_gateway_delivery_latency_seconds")

    /// Counts a broadcast's deliveries and their latency, as ``Hub/dispatch(_:to:delivered:)`` reports them.
    static func recorder(messages: Int, receivedAt: Int64?) -> @Sendable (Int) -> Void {
        { members in
            delivered.increment(by: members * messages)
            if let receivedAt {
                let nanoseconds = Int64(Date().timeIntervalSince1970 * 1e9) - receivedAt * 1_000_000
                deliveryLatency.recordNanoseconds(max(0, nanoseconds))
            }
        }
    }
}
