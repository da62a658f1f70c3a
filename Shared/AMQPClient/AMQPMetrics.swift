import CoreMetrics

/// What a broker connection counts, for `/metrics` (swift-metrics; a no-op until the process bootstraps a backend).
enum AMQPMetrics {
    static let publishes = Counter(label: "chat_amqp_publishes_total")
    static let confirms = Counter(label: "chat_amqp_confirms_total")
    static let nacks = Counter(label: "chat_amqp_nacks_total")
    static let returns = Counter(label: "chat_amqp_returns_total")
    static let deliveries = Counter(label: "chat_amqp_deliveries_total")
    static let redeliveries = Counter(label: "chat_amqp_redeliveries_total")
    static let reconnects = Counter(label: "chat_amqp_reconnects_total")
    static let connectionsLost = Counter(label: "chat_amqp_connections_lost_total")
    static let topologyRefusals = Counter(label: "chat_amqp_topology_refusals_total")
}
