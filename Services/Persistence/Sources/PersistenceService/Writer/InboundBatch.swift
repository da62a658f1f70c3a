import AMQPClient
import ChatProtocol
import ChatWire
import NIOCore

/// The writer's decoding stage: a gathered batch, decoded. The messages to store in delivery order, the
/// deliveries they came in (to acknowledge once handled) and a dead letter for each body that does not decode.
struct InboundBatch: Sendable {
    var messages: [InboundChatMessage] = []
    var deliveries: [AMQPDelivery] = []
    var undecodable: [AMQPOutgoingMessage] = []
    /// Whether a delivery came again: only then may the batch hold messages stored already.
    var redelivered = false
    /// Messages per partition (a delivery's messages are all of its partition's rooms).
    var countByPartition: [Int: Int] = [:]

    /// Decodes the deliveries of the consumers in `live`; those of a consumer released since are skipped (the
    /// broker has given them back to the queue).
    init(_ batch: [PartitionDelivery], live: Set<Int>) {
        for item in batch where live.contains(item.token) {
            let delivery = item.delivery
            deliveries.append(delivery)
            redelivered = redelivered || delivery.redelivered
            // A gateway sends the messages of one partition that arrived together as one AMQP message.
            do {
                switch try PartitionQueueMessage.decode(type: delivery.properties.type, body: delivery.body) {
                case .messages(let many):
                    messages += many
                    countByPartition[item.partition, default: 0] += many.count
                }
            } catch {
                undecodable.append(BatchPublisher.deadLetter(body: delivery.body, reason: "undecodable message: \(error)", group: nil))
            }
        }
    }

    var isEmpty: Bool { deliveries.isEmpty }
}
