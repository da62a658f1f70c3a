import NIOCore

/// Errors at the edge of the AMQP client.
package enum AMQPError: Error, Equatable, Sendable, CustomStringConvertible {
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

    package var description: String {
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
package enum AMQPFieldValue: Sendable, Equatable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    /// An array of strings (sent only; e.g. RabbitMQ's `CC` header).
    case strings([String])

    /// The value when it is a string.
    package var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    /// The value when it is an integer.
    package var intValue: Int64? { if case .int(let i) = self { i } else { nil } }
}

/// An AMQP field table: message headers and declare arguments.
package typealias AMQPTable = [String: AMQPFieldValue]

/// The kinds of exchange the services declare.
package enum AMQPExchangeType: String, Sendable {
    case direct, fanout, topic, headers
}

/// The basic properties of a message that this system uses.
package struct AMQPProperties: Sendable, Equatable {
    package var contentType: String?
    package var correlationID: String?
    package var replyTo: String?
    package var messageID: String?
    package var type: String?
    package var expiration: String?
    /// Delivery mode 2: the broker writes the message to disk in a durable queue.
    package var persistent: Bool
    package var headers: AMQPTable

    package init(
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
package struct AMQPOutgoingMessage: Sendable {
    package var exchange: String
    package var routingKey: String
    package var body: ByteBuffer
    package var properties: AMQPProperties
    /// When set, a message that reaches no queue is returned and its publish fails with ``AMQPError/unroutable``.
    package var mandatory: Bool

    package init(exchange: String, routingKey: String, body: ByteBuffer, properties: AMQPProperties = .init(), mandatory: Bool = false) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
    }
}

/// A message delivered to a consumer. Acknowledge it with ``ack()`` (or ``reject(requeue:)``) once handled:
/// until then the broker keeps it and redelivers it if this connection drops.
package struct AMQPDelivery: Sendable {
    package let body: ByteBuffer
    package let exchange: String
    package let routingKey: String
    package let properties: AMQPProperties
    package let redelivered: Bool
    package let deliveryTag: UInt64
    let channel: UInt16
    /// Which opening of `channel` it came on (unique per connection and channel): an ack for a channel
    /// closed since, or of an earlier connection, is dropped rather than sent to a channel reusing the number.
    let channelEpoch: UInt64
    let connection: AMQPConnection?

    package init(body: ByteBuffer, exchange: String = "", routingKey: String = "", properties: AMQPProperties = .init(), redelivered: Bool = false) {
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
    package func ack(multiple: Bool = false) {
        connection?.enqueueAck(channel: channel, epoch: channelEpoch, deliveryTag: deliveryTag, multiple: multiple)
    }

    /// Rejects this delivery; the broker requeues it when `requeue` is true and drops (or dead-letters) it otherwise.
    package func reject(requeue: Bool) {
        connection?.enqueueNack(channel: channel, epoch: channelEpoch, deliveryTag: deliveryTag, requeue: requeue)
    }
}

extension Sequence<AMQPDelivery> {
    /// Acknowledges every delivery here, wherever they came from: one multiple ack per consumer channel, on
    /// its latest delivery. Only for deliveries that are all handled, with none of the same channel left
    /// unhandled before them.
    package func acknowledgeAll() {
        var latest: [UInt64: AMQPDelivery] = [:]
        for delivery in self where latest[delivery.channelEpoch].map({ $0.deliveryTag < delivery.deliveryTag }) ?? true {
            latest[delivery.channelEpoch] = delivery
        }
        for delivery in latest.values { delivery.ack(multiple: true) }
    }
}
