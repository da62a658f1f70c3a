import AMQPClient
import ChatProtocol
import Foundation
import NIOCore
import NIOFoundationCompat
import Presence

/// Stored messages and acks that one persistence batch sends to the gateways: one AMQP message for the whole
/// batch, routed on `chat.groups` with its first key and the others in `CC` (RabbitMQ's sender-selected
/// distribution), so each gateway queue bound to any of its rooms, or named by one of its acks, gets it once.
package struct DeliveryBatch: Equatable, Sendable {
    /// Consecutive stored messages of one room: seqs `firstSeq`, `firstSeq + 1`, …; each frame is what sockets receive.
    package struct Run: Equatable, Sendable {
        package var group: String
        package var firstSeq: Int64
        package var frames: [ByteBuffer]

        package init(group: String, firstSeq: Int64, frames: [ByteBuffer]) {
            self.group = group
            self.firstSeq = firstSeq
            self.frames = frames
        }
    }

    /// The ack of a message sent with a `client_id`, for socket `socket` of the gateway whose queue is `gateway`.
    package struct Ack: Equatable, Sendable {
        package var gateway: String
        package var ack: MessageAck

        package init(gateway: String, ack: MessageAck) {
            self.gateway = gateway
            self.ack = ack
        }
    }

    package var runs: [Run]
    package var acks: [Ack]
    /// When a gateway received the batch's earliest message (ms since 1970), for the delivery latency metric.
    package var receivedAt: Int64?

    package init(runs: [Run], acks: [Ack] = [], receivedAt: Int64? = nil) {
        self.runs = runs
        self.acks = acks
        self.receivedAt = receivedAt
    }

    /// The routing keys on `chat.groups`: each room's, then each acked gateway's queue name, once each.
    package var routingKeys: [String] {
        var keys: [String] = []
        var seen = Set<String>()
        for key in runs.map({ ChatTopology.routingKey(forGroup: $0.group) }) + acks.map(\.gateway) where seen.insert(key).inserted {
            keys.append(key)
        }
        return keys
    }

    /// The one AMQP message of this batch (nil when it carries nothing).
    package func outgoing() -> AMQPOutgoingMessage? {
        let keys = routingKeys
        guard let first = keys.first else { return nil }
        let message = GatewayQueueMessage.deliveries(self)
        var headers: AMQPTable = [:]
        if keys.count > 1 { headers[ChatTopology.ccHeader] = .strings(Array(keys.dropFirst())) }
        return AMQPOutgoingMessage(exchange: ChatTopology.groupsExchange, routingKey: first, body: message.encode(),
                                   properties: AMQPProperties(contentType: nil, type: message.type, headers: headers))
    }
}

/// What may arrive on a gateway's own queue `chat.gateway.<id>`, told apart by the AMQP `type` alone.
package enum GatewayQueueMessage: Sendable {
    /// A persistence batch: its rooms' stored messages and its acks (this gateway takes the ones naming it).
    case deliveries(DeliveryBatch)
    /// A frame for every member of a group (the channel layer's `group_send`: read receipts, which have no seq).
    case groupFrame(group: String, seq: Int64?, frame: ByteBuffer)
    /// A gateway's join, leave, heartbeat or stop, from the membership fanout (for presence).
    case membership(MembershipEvent)
    /// The answer to one of this process's requests: its body is the request's reply type
    /// (``RoomReply`` JSON, or history frames), matched by correlation id.
    case reply

    /// Every case's AMQP `type`, for the documentation test.
    package static let types = ["chat.deliveries", "chat.group-frame", MembershipWire.type, AMQPRequester.replyType]

    package var type: String {
        switch self {
        case .deliveries: "chat.deliveries"
        case .groupFrame: "chat.group-frame"
        case .membership: MembershipWire.type
        case .reply: AMQPRequester.replyType
        }
    }

    /// The body (a reply's is its own: this enum only names it).
    package func encode() -> ByteBuffer {
        switch self {
        case .deliveries(let batch):
            var writer = WireWriter(capacity: 64 + batch.runs.reduce(0) { $0 + 64 + $1.frames.reduce(0) { $0 + 4 + $1.readableBytes } })
            writer.write(UInt8(1))  // version
            writer.write(batch.receivedAt)
            writer.write(count: batch.runs.count)
            for run in batch.runs {
                writer.write(run.group)
                writer.write(run.firstSeq)
                writer.write(count: run.frames.count)
                for frame in run.frames { writer.write(bytes: frame) }
            }
            writer.write(count: batch.acks.count)
            for ack in batch.acks {
                writer.write(ack.gateway)
                writer.write(Int64(ack.ack.socket))
                writer.write(ack.ack.clientID)
                writer.write(ack.ack.id)
                writer.write(ack.ack.seq)
            }
            return writer.buffer
        case .groupFrame(let group, let seq, let frame):
            var writer = WireWriter(capacity: 32 + group.utf8.count + frame.readableBytes)
            writer.write(group)
            writer.write(seq)
            writer.write(bytes: frame)
            return writer.buffer
        case .membership(let event):
            return MembershipWire.encode(event)
        case .reply:
            return ByteBuffer()
        }
    }

    /// Reads a delivery's body by its `type`; frames are slices of `body`, not copies.
    package static func decode(type: String?, body: ByteBuffer) throws(WireError) -> Self {
        switch type {
        case "chat.deliveries":
            var reader = WireReader(body)
            guard try reader.readByte() == 1 else { throw .malformed("version") }
            let receivedAt = try reader.readOptionalInt64()
            var runs: [DeliveryBatch.Run] = []
            for _ in 0..<(try reader.readCount(minimumSize: 16)) {
                let group = try reader.readString(), firstSeq = try reader.readInt64()
                let count = try reader.readCount(minimumSize: 4)
                var frames: [ByteBuffer] = []
                frames.reserveCapacity(count)
                for _ in 0..<count { frames.append(try reader.readBytes()) }
                runs.append(DeliveryBatch.Run(group: group, firstSeq: firstSeq, frames: frames))
            }
            var acks: [DeliveryBatch.Ack] = []
            for _ in 0..<(try reader.readCount(minimumSize: 28)) {
                let gateway = try reader.readString(), socket = try reader.readInt64(), clientID = try reader.readString()
                let id = try reader.readString(), seq = try reader.readInt64()
                acks.append(DeliveryBatch.Ack(gateway: gateway, ack: MessageAck(socket: Int(truncatingIfNeeded: socket), clientID: clientID, id: id, seq: seq)))
            }
            try reader.finish()
            return .deliveries(DeliveryBatch(runs: runs, acks: acks, receivedAt: receivedAt))
        case "chat.group-frame":
            var reader = WireReader(body)
            let group = try reader.readString(), seq = try reader.readOptionalInt64(), frame = try reader.readBytes()
            try reader.finish()
            return .groupFrame(group: group, seq: seq, frame: frame)
        case MembershipWire.type:
            return .membership(try MembershipWire.decode(body))
        case AMQPRequester.replyType:
            return .reply
        default:
            throw .unknownType(type)
        }
    }
}

extension GatewayQueueMessage {
    /// The channel layer's `group_send` of `frame` to `group`, on `chat.groups` with the group's key.
    package static func groupSend(_ group: String, seq: Int64? = nil, frame: ByteBuffer) -> AMQPOutgoingMessage {
        let message = GatewayQueueMessage.groupFrame(group: group, seq: seq, frame: frame)
        return AMQPOutgoingMessage(exchange: ChatTopology.groupsExchange, routingKey: ChatTopology.routingKey(forGroup: group),
                                   body: message.encode(), properties: AMQPProperties(contentType: nil, type: message.type))
    }
}

/// What may arrive on a room service instance's queue `chat.rooms.instance.<id>`: the membership fanout.
package enum RoomsInstanceQueueMessage: Sendable {
    /// A gateway's join, leave, heartbeat or stop.
    case membership(MembershipEvent)

    /// Every case's AMQP `type`, for the documentation test.
    package static let types = [MembershipWire.type]

    package static func decode(type: String?, body: ByteBuffer) throws(WireError) -> Self {
        switch type {
        case MembershipWire.type: .membership(try MembershipWire.decode(body))
        default: throw .unknownType(type)
        }
    }
}

/// A membership event on the fanout `chat.rooms.membership`: its ``MembershipEvent`` as JSON (a few per second
/// per gateway, off the hot path), AMQP `type` `chat.membership`.
package enum MembershipWire {
    package static let type = "chat.membership"

    package static func encode(_ event: MembershipEvent) -> ByteBuffer {
        // A MembershipEvent holds strings and integers only: encoding cannot fail.
        ByteBuffer(bytes: (try? JSONEncoder().encode(event)) ?? Data())
    }

    package static func decode(_ body: ByteBuffer) throws(WireError) -> MembershipEvent {
        do {
            return try JSONDecoder().decode(MembershipEvent.self, from: Data(buffer: body))
        } catch {
            throw .malformed("membership event: \(error)")
        }
    }

    package static func outgoing(_ event: MembershipEvent) -> AMQPOutgoingMessage {
        AMQPOutgoingMessage(exchange: ChatTopology.membershipExchange, routingKey: "", body: encode(event),
                            properties: AMQPProperties(type: type))
    }
}
