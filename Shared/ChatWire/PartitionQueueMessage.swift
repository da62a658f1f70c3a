import AMQPClient
import ChatProtocol
import NIOCore

/// What may arrive on a partition queue `chat.persistence.p<i>`: written by gateways, read by the persistence
/// worker that owns the partition.
package enum PartitionQueueMessage: Equatable, Sendable {
    /// Client messages of one partition that a gateway received together, in the order it received them.
    case messages([InboundChatMessage])

    /// Every case's AMQP `type`, for the documentation test.
    package static let types = ["chat.messages"]

    package var type: String {
        switch self {
        case .messages: "chat.messages"
        }
    }

    package func encode() -> ByteBuffer {
        switch self {
        case .messages(let messages):
            var writer = WireWriter(capacity: 64 + messages.count * 160)
            writer.write(UInt8(1))  // version
            writer.write(count: messages.count)
            for message in messages {
                writer.write(message.id)
                writer.write(message.group)
                writer.write(message.sender)
                writer.write(message.text)
                writer.write(message.receivedAt)
                writer.write(message.clientID)
                writer.write(message.replyTo)
                writer.write(message.socket.map(Int64.init))
            }
            return writer.buffer
        }
    }

    package static func decode(type: String?, body: ByteBuffer) throws(WireError) -> Self {
        switch type {
        case "chat.messages":
            var reader = WireReader(body)
            guard try reader.readByte() == 1 else { throw .malformed("version") }
            // A message is at least its four length prefixes, its time and four presence bytes.
            let count = try reader.readCount(minimumSize: 28)
            var messages: [InboundChatMessage] = []
            messages.reserveCapacity(count)
            for _ in 0..<count {
                let id = try reader.readString(), group = try reader.readString(), sender = try reader.readOptionalString()
                let text = try reader.readString(), receivedAt = try reader.readInt64()
                let clientID = try reader.readOptionalString(), replyTo = try reader.readOptionalString()
                let socket = try reader.readOptionalInt64()
                messages.append(InboundChatMessage(id: id, group: group, sender: sender, text: text, receivedAt: receivedAt,
                                                   clientID: clientID, replyTo: replyTo, socket: socket.map { Int(truncatingIfNeeded: $0) }))
            }
            try reader.finish()
            return .messages(messages)
        default:
            throw .unknownType(type)
        }
    }

    /// The AMQP message on `chat.inbound` for partition `partition`: transient (the store, not the broker, keeps
    /// a message; an unacked one is sent again by its client), mandatory and confirmed.
    package func outgoing(partition: Int) -> AMQPOutgoingMessage {
        AMQPOutgoingMessage(exchange: ChatTopology.inboundExchange, routingKey: ChatTopology.partitionRoutingKey(partition),
                            body: encode(), properties: AMQPProperties(contentType: nil, type: type), mandatory: true)
    }
}
