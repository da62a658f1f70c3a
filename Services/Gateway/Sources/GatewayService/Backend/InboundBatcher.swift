import AMQPClient
import ChatProtocol
import ChatWire
import NIOCore
import Synchronization

/// Coalesces the client messages of every socket of this gateway into one AMQP message per partition on
/// `chat.inbound` (``PartitionQueueMessage``). The first message after a cut asks the AMQP connection to publish "when ready": the batch
/// is cut when its thread gets to that request, so it holds whatever arrived meanwhile, one message when the
/// gateway is quiet and hundreds under load, with no task or timer per batch. Cuts happen in order on that
/// thread, so a socket's messages keep their order; every message of a batch shares its confirmation.
final class InboundBatcher: Sendable {
    struct State {
        var messages: [InboundChatMessage] = []
        var confirmation: AMQPConfirmation?
        var requested = false
    }
    let connection: AMQPConnection
    let partitions: Int
    private let state = Mutex(State())

    init(connection: AMQPConnection, partitions: Int) {
        self.connection = connection
        self.partitions = partitions
    }

    func add(_ message: InboundChatMessage) -> AMQPConfirmation {
        let (confirmation, request) = state.withLock { s -> (AMQPConfirmation, Bool) in
            let confirmation = s.confirmation ?? AMQPConfirmation()
            s.confirmation = confirmation
            s.messages.append(message)
            if s.requested { return (confirmation, false) }
            s.requested = true
            return (confirmation, true)
        }
        if request { connection.publishWhenReady { [self] in cut() } }
        return confirmation
    }

    /// Takes everything gathered so far as one AMQP message (on the connection's thread).
    func cut() -> AMQPProducedBatch? {
        let (batch, confirmation) = state.withLock { s -> ([InboundChatMessage], AMQPConfirmation?) in
            s.requested = false
            defer {
                s.messages = []
                s.confirmation = nil
            }
            return (s.messages, s.confirmation)
        }
        guard let confirmation, !batch.isEmpty else { return nil }
        // One AMQP message per partition the batch touches (each keeps its messages' order), all sharing the
        // batch's confirmation.
        var byPartition: [Int: [InboundChatMessage]] = [:]
        var order: [Int] = []
        for message in batch {
            let partition = partitions == 1 ? 0 : ChatTopology.partition(of: message.group, count: partitions)
            if byPartition[partition] == nil { order.append(partition) }
            byPartition[partition, default: []].append(message)
        }
        return AMQPProducedBatch(messages: order.map { partition in
            PartitionQueueMessage.messages(byPartition[partition]!).outgoing(partition: partition)
        }, confirmation: confirmation)
    }
}
