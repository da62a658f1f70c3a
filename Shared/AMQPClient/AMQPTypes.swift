import NIOCore

/// Errors at the edge of the AMQP client.
public enum AMQPError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidURL(String)
    /// The connection dropped before the broker answered; the operation may or may not have taken effect.
    case connectionLost
    /// The broker refused an operation (channel or connection exception).
    case brokerRefused(code: Int, text: String)
    /// The broker negatively acknowledged a published message.
    case nacked
    /// A mandatory message could not be routed to any queue.
    case unroutable(exchange: String, routingKey: String)
    /// The connection was closed by its owner.
    case closed
    case timeout

    public var description: String {
        switch self {
        case .invalidURL(let url): "invalid AMQP URL: \(url)"
        case .connectionLost: "AMQP connection lost"
        case .brokerRefused(let code, let text): "broker refused (\(code)): \(text)"
        case .nacked: "broker nacked the message"
        case .unroutable(let exchange, let key): "unroutable message (exchange '\(exchange)', routing key '\(key)')"
        case .closed: "AMQP connection closed"
        case .timeout: "AMQP operation timed out"
        }
    }
}

/// A value in an AMQP field table (queue arguments, message headers).
public enum AMQPFieldValue: Sendable, Equatable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    /// An array of strings (sent only; e.g. RabbitMQ's `CC` header).
    case strings([String])

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var intValue: Int64? { if case .int(let i) = self { i } else { nil } }
}

public typealias AMQPTable = [String: AMQPFieldValue]

public enum AMQPExchangeType: String, Sendable {
    case direct, fanout, topic, headers
    case consistentHash = "x-consistent-hash"
}

/// The basic properties of a message that this system uses.
public struct AMQPProperties: Sendable, Equatable {
    public var contentType: String?
    public var correlationID: String?
    public var replyTo: String?
    public var messageID: String?
    public var type: String?
    public var expiration: String?
    /// Delivery mode 2: the broker writes the message to disk in a durable queue.
    public var persistent: Bool
    public var headers: AMQPTable

    public init(
        contentType: String? = "application/json",
        correlationID: String? = nil,
        replyTo: String? = nil,
        messageID: String? = nil,
        type: String? = nil,
        expiration: String? = nil,
        persistent: Bool = false,
        headers: AMQPTable = [:]
    ) {
        self.contentType = contentType
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.messageID = messageID
        self.type = type
        self.expiration = expiration
        self.persistent = persistent
        self.headers = headers
    }
}

/// A message to publish.
public struct AMQPOutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var body: ByteBuffer
    public var properties: AMQPProperties
    /// When set, a message that reaches no queue is returned and its publish fails with ``AMQPError/unroutable``.
    public var mandatory: Bool

    public init(exchange: String, routingKey: String, body: ByteBuffer, properties: AMQPProperties = .init(), mandatory: Bool = false) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
    }
}

/// A message delivered to a consumer. Acknowledge it with ``ack()`` (or ``reject(requeue:)``) once handled:
/// until then the broker keeps it and redelivers it if this connection drops.
public struct AMQPDelivery: Sendable {
    public let body: ByteBuffer
    public let exchange: String
    public let routingKey: String
    public let properties: AMQPProperties
    public let redelivered: Bool
    public let deliveryTag: UInt64
    let channel: UInt16
    /// Which opening of `channel` it came on (unique per connection and channel): an ack for a channel
    /// closed since, or of an earlier connection, is dropped rather than sent to a channel reusing the number.
    let channelEpoch: UInt64
    let connection: AMQPConnection?

    public init(body: ByteBuffer, exchange: String = "", routingKey: String = "", properties: AMQPProperties = .init(), redelivered: Bool = false) {
        self.body = body
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.redelivered = redelivered
        self.deliveryTag = 0
        self.channel = 0
        self.channelEpoch = 0
        self.connection = nil
    }

    init(body: ByteBuffer, exchange: String, routingKey: String, properties: AMQPProperties, redelivered: Bool,
         deliveryTag: UInt64, channel: UInt16, channelEpoch: UInt64, connection: AMQPConnection) {
        self.body = body
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.redelivered = redelivered
        self.deliveryTag = deliveryTag
        self.channel = channel
        self.channelEpoch = channelEpoch
        self.connection = connection
    }

    /// Acknowledges this delivery; with `multiple`, every earlier unacknowledged delivery of its consumer too.
    public func ack(multiple: Bool = false) {
        connection?.enqueueAck(channel: channel, epoch: channelEpoch, deliveryTag: deliveryTag, multiple: multiple)
    }

    /// The consumer channel it came on, as an opaque key: deliveries with the same key share acknowledgements
    /// (a multiple ack covers the earlier ones of the same key only).
    public var consumerKey: UInt64 { channelEpoch }

    /// Rejects this delivery; the broker requeues it when `requeue` is true and drops (or dead-letters) it otherwise.
    public func reject(requeue: Bool) {
        connection?.enqueueNack(channel: channel, epoch: channelEpoch, deliveryTag: deliveryTag, requeue: requeue)
    }
}

extension Sequence<AMQPDelivery> {
    /// Acknowledges every delivery here, wherever they came from: one multiple ack per consumer channel, on
    /// its latest delivery. Only for deliveries that are all handled, with none of the same channel left
    /// unhandled before them.
    public func acknowledgeAll() {
        var latest: [UInt64: AMQPDelivery] = [:]
        for delivery in self where latest[delivery.channelEpoch].map({ $0.deliveryTag < delivery.deliveryTag }) ?? true {
            latest[delivery.channelEpoch] = delivery
        }
        for delivery in latest.values { delivery.ack(multiple: true) }
    }
}
