import AMQPClient
import ChatProtocol
import ChatWire
import Foundation
import Logging
import Testing
@testable import GatewayService

/// How the gateway coalesces client messages on `chat.inbound`, cut by hand (the connection points at port 1,
/// where nothing listens, so the "when ready" request it queues is never served).
@Suite struct InboundBatcherTests {
    func batcher(partitions: Int) throws -> InboundBatcher {
        let connection = AMQPConnection(configuration: try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F", connectionName: "batcher"),
                                        logger: .quiet)
        Task { try await Task.sleep(for: .seconds(2)); await connection.close() }  // after the test has cut by hand
        return InboundBatcher(connection: connection, partitions: partitions)
    }

    func message(_ group: String, _ n: Int) -> InboundChatMessage {
        InboundChatMessage(id: "\(group)-\(n)", group: group, sender: n % 2 == 0 ? "v@example.com" : nil, text: "m\(n) \"quoted\" 안녕", receivedAt: Int64(n))
    }

    @Test func whatArrivesTogetherIsOneMessagePerPartitionInOrderSharingOneConfirmation() throws {
        let batcher = try batcher(partitions: 8)
        let groups = ["named:a", "named:b", "named:c", "consult:4"]
        let sent = (0..<40).map { message(groups[$0 % groups.count], $0) }
        let confirmations = sent.map { batcher.add($0) }
        #expect(confirmations.allSatisfy { $0 === confirmations[0] })
        let batch = try #require(batcher.cut())
        #expect(batch.confirmation === confirmations[0])
        var received: [InboundChatMessage] = []
        for amqp in batch.messages {
            guard case .messages(let messages) = try PartitionQueueMessage.decode(type: amqp.properties.type, body: amqp.body) else { return }
            // Transient: the store keeps an acked message, and a client sends an unacked one again.
            #expect(amqp.exchange == ChatTopology.inboundExchange && amqp.mandatory && !amqp.properties.persistent)
            // Every message of this AMQP message is of its partition.
            #expect(messages.allSatisfy { ChatTopology.partitionRoutingKey(ChatTopology.partition(of: $0.group, count: 8)) == amqp.routingKey })
            received += messages
        }
        #expect(Set(batch.messages.map(\.routingKey)).count == batch.messages.count)  // one per partition
        for group in groups {  // each room's messages keep their order
            #expect(received.filter { $0.group == group } == sent.filter { $0.group == group })
        }
        #expect(received.count == sent.count)
    }

    @Test func aCutTakesOnlyWhatCameSinceTheLastAndNothingIsNothing() throws {
        let batcher = try batcher(partitions: 1)
        let first = batcher.add(message("named:a", 1))
        #expect(try #require(batcher.cut()).messages.count == 1)
        #expect(batcher.cut() == nil)
        let second = batcher.add(message("named:a", 2))
        #expect(first !== second)
        let batch = try #require(batcher.cut())
        #expect(try PartitionQueueMessage.decode(type: batch.messages[0].properties.type, body: batch.messages[0].body) == .messages([message("named:a", 2)]))
        #expect(batch.messages[0].routingKey == ChatTopology.partitionRoutingKey(0))
    }
}
