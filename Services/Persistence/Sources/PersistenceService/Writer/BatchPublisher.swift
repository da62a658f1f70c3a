import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatWire
import Foundation
import NIOCore

/// The writer's publishing stage: what a stored batch sends, in one pass of the broker: its ``DeliveryBatch``
/// (every row it took, and the acks of its messages for their gateways) and a dead letter for each message
/// that could not be decoded or was refused by the database.
struct BatchPublisher: Sendable {
    let broker: any PersistenceBroker

    /// Publishes the batch's broadcasts and dead letters; the confirmation completes once the broker has them.
    func publish(_ stored: StoredBatch, undecodable: [AMQPOutgoingMessage]) -> AMQPConfirmation {
        let broadcasts = Self.deliveries(stored.taken, receivedAt: stored.taken.lazy.map(\.message.receivedAt).min())
        return broker.publish(broadcasts + undecodable + Self.deadLetters(stored.refused))
    }

    /// The dead letters of messages the database refused: their JSON, the reason and the room in headers.
    static func deadLetters(_ refused: [(message: InboundChatMessage, reason: String)]) -> [AMQPOutgoingMessage] {
        refused.map { message, reason in
            // A refused message is still one the gateway decoded, so it encodes; an empty body would only lose its text.
            let body = ByteBuffer(bytes: (try? JSONEncoder().encode(message)) ?? Data())
            return deadLetter(body: body, reason: reason, group: message.group)
        }
    }

    /// What a stored batch sends to the gateways: every stored row it took, once (a resend's earlier row too, so a
    /// broadcast lost before its ack is mended by the resend; gateways skip a seq they have delivered), in runs
    /// of consecutive seqs per room, and the acks of the messages sent with a `client_id` (for their gateways'
    /// queues). One AMQP message for up to `runsPerMessage` runs; the acks ride in the last, so a gateway that
    /// gets an ack has been routed every broadcast before it.
    static func deliveries(_ taken: [(message: InboundChatMessage, row: StoredChatMessage)], receivedAt: Int64?,
                           runsPerMessage: Int = 256) -> [AMQPOutgoingMessage] {
        var seen = Set<String>()
        var rows = taken.compactMap { seen.insert($0.row.id).inserted ? $0.row : nil }
        // Seq order within each room (a resend's earlier row may come after newer ones); rooms keep their first order.
        var firstIndex: [String: Int] = [:]
        for (index, row) in rows.enumerated() where firstIndex[row.group] == nil { firstIndex[row.group] = index }
        rows.sort { ($0.group == $1.group) ? $0.seq < $1.seq : firstIndex[$0.group]! < firstIndex[$1.group]! }
        var runs: [DeliveryBatch.Run] = []
        var openRun: [String: Int] = [:]
        for row in rows {
            let frame = ByteBuffer(string: row.clientFrame)
            if let index = openRun[row.group], runs[index].firstSeq + Int64(runs[index].frames.count) == row.seq {
                runs[index].frames.append(frame)
            } else {
                openRun[row.group] = runs.count
                runs.append(DeliveryBatch.Run(group: row.group, firstSeq: row.seq, frames: [frame]))
            }
        }
        let acks = taken.compactMap { message, row -> DeliveryBatch.Ack? in
            guard let clientID = message.clientID, let replyTo = message.replyTo, let socket = message.socket else { return nil }
            return DeliveryBatch.Ack(gateway: replyTo, ack: MessageAck(socket: socket, clientID: clientID, id: row.id, seq: row.seq))
        }
        let chunks = stride(from: 0, to: max(runs.count, 1), by: runsPerMessage).map { runs[$0..<min($0 + runsPerMessage, runs.count)] }
        return chunks.enumerated().compactMap { index, chunk in
            DeliveryBatch(runs: Array(chunk), acks: index == chunks.count - 1 ? acks : [], receivedAt: receivedAt).outgoing()
        }
    }

    /// A message for `chat.dead-letters`, persistent and mandatory: the broker keeps it, the store does not.
    static func deadLetter(body: ByteBuffer, reason: String, group: String?) -> AMQPOutgoingMessage {
        var headers: AMQPTable = [ChatTopology.reasonHeader: .string(reason)]
        if let group { headers[ChatTopology.groupHeader] = .string(group) }
        return AMQPOutgoingMessage(exchange: "", routingKey: ChatTopology.deadLetterQueue, body: body,
                                   properties: AMQPProperties(persistent: true, headers: headers), mandatory: true)
    }
}
