import AMQPClient
import ChatProtocol
import ChatWire
import Logging
import NIOCore
import Testing
@testable import ChannelLayer
@testable import PersistenceService

/// The one AMQP message persistence sends per stored batch (``DeliveryBatch``), and the gateway's reading of
/// it, without a broker.
@Suite struct BroadcastRunsTests {
    func stored(_ group: String, _ seq: Int64, at time: Int64 = 1_000, id: String? = nil) -> StoredChatMessage {
        StoredChatMessage(id: id ?? "\(group)-\(seq)", group: group, seq: seq, sender: nil, text: "\(group) \(seq)", createdAt: time)
    }

    func inbound(_ row: StoredChatMessage, id: String? = nil, clientID: String? = nil, gateway: String? = nil, socket: Int? = nil) -> InboundChatMessage {
        InboundChatMessage(id: id ?? row.id, group: row.group, sender: nil, text: row.text, receivedAt: row.createdAt,
                           clientID: clientID, replyTo: gateway, socket: socket)
    }

    func taken(_ rows: [StoredChatMessage]) -> [(message: InboundChatMessage, row: StoredChatMessage)] {
        rows.map { (inbound($0), $0) }
    }

    func batch(_ message: AMQPOutgoingMessage) throws -> DeliveryBatch {
        guard case .deliveries(let batch) = try GatewayQueueMessage.decode(type: message.properties.type, body: message.body) else {
            Issue.record("not a delivery batch")
            return DeliveryBatch(runs: [])
        }
        return batch
    }

    func summary(_ batch: DeliveryBatch) -> [String] { batch.runs.map { "\($0.group) \($0.firstSeq) \($0.frames.count)" } }

    @Test func aBatchOfSeveralRoomsIsOneMessageWithARunPerRoomAndItsAcks() throws {
        let rows = [stored("named:a", 1, at: 5), stored("named:a", 2), stored("named:b", 7, at: 3), stored("named:a", 3), stored("named:b", 8)]
        var taken = taken(rows)
        taken[1].message = inbound(rows[1], clientID: "c1", gateway: "chat.gateway.g2", socket: 9)
        let messages = BatchPublisher.deliveries(taken, receivedAt: 3)
        #expect(messages.count == 1)
        let decoded = try batch(messages[0])
        #expect(summary(decoded) == ["named:a 1 3", "named:b 7 2"])
        #expect(messages[0].routingKey == "named:a" && messages[0].exchange == ChatTopology.groupsExchange)
        // The acked gateway's queue is a key too: the ack travels with the broadcast.
        #expect(messages[0].properties.headers[ChatTopology.ccHeader] == .strings(["named:b", "chat.gateway.g2"]))
        #expect(decoded.receivedAt == 3)
        #expect(decoded.acks == [DeliveryBatch.Ack(gateway: "chat.gateway.g2", ack: MessageAck(socket: 9, clientID: "c1", id: rows[1].id, seq: 2))])
        let frames = decoded.runs.flatMap(\.frames).map { String(buffer: $0) }
        #expect(frames == [rows[0], rows[1], rows[3], rows[2], rows[4]].map(\.clientFrame))  // room a's run, then b's
    }

    @Test func aResendIsBroadcastAgainWithItsStoredRowAndAcked() throws {
        // A resend (new message id, same client id) finds the row stored earlier (seq 4) while seq 9 is new.
        let old = stored("named:a", 4, id: "first"), new = stored("named:a", 9)
        let taken = [(inbound(new), new), (inbound(old, id: "resend", clientID: "c", gateway: "chat.gateway.g1", socket: 1), old)]
        let decoded = try batch(try #require(BatchPublisher.deliveries(taken, receivedAt: nil).first))
        #expect(summary(decoded) == ["named:a 4 1", "named:a 9 1"])  // seq order within the room
        #expect(decoded.acks.map(\.ack.seq) == [4])
    }

    @Test func aGapInARoomsSeqsStartsANewRun() throws {
        let messages = BatchPublisher.deliveries(taken([stored("named:a", 1), stored("named:a", 3), stored("named:a", 4)]), receivedAt: nil)
        #expect(messages.count == 1)
        #expect(try summary(batch(messages[0])) == ["named:a 1 1", "named:a 3 2"])
    }

    @Test func manyRoomsAreCutIntoMessagesOfAtMostRunsPerMessageWithTheAcksInTheLast() throws {
        let rows = (0..<300).map { stored("named:r\($0)", 1) }
        var taken = taken(rows)
        taken[0].message = inbound(rows[0], clientID: "c", gateway: "chat.gateway.g1", socket: 1)
        let messages = BatchPublisher.deliveries(taken, receivedAt: 7)
        #expect(try messages.map { try batch($0).runs.count } == [256, 44])
        #expect(try messages.map { try batch($0).acks.count } == [0, 1])
        #expect(BatchPublisher.deliveries([], receivedAt: nil).isEmpty)
    }

    func layer() throws -> (AMQPChannelLayer, AMQPConnection) {
        let connection = AMQPConnection(configuration: try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F", connectionName: "runs"),
                                        logger: .quiet)  // port 1, where nothing listens: routing reads no socket
        return (AMQPChannelLayer(connection: connection, processID: "g1", logger: Logger(label: "test")), connection)
    }

    @Test func aGatewayDispatchesEachRunToItsRoomsLocalMembersOnly() async throws {
        let (layer, connection) = try layer()
        defer { Task { await connection.close() } }
        let inA = Mailbox(id: 1)
        try await layer.hub.add("named:a", inA, onFirstMember: {})
        let message = BatchPublisher.deliveries(taken([stored("named:b", 1), stored("named:a", 4), stored("named:a", 5)]), receivedAt: nil)[0]
        layer.deliver(try batch(message))
        var received: [ChannelMessage] = []
        for await delivered in inA.messages {
            received.append(delivered)
            if received.count == 2 { break }
        }
        #expect(received.map(\.seq) == [4, 5])
        #expect(received.map { String(buffer: $0.body) } == [stored("named:a", 4).clientFrame, stored("named:a", 5).clientFrame])
        #expect(layer.hub.memberCount("named:b") == 0)
    }

    @Test func anUnreadableOrUnknownMessageIsDroppedWhole() throws {
        var cut = GatewayQueueMessage.deliveries(DeliveryBatch(runs: [.init(group: "named:a", firstSeq: 1, frames: [ByteBuffer(string: "{}")])])).encode()
        cut.moveWriterIndex(to: cut.writerIndex - 3)
        #expect(throws: WireError.self) { try GatewayQueueMessage.decode(type: "chat.deliveries", body: cut) }
        #expect(throws: WireError.unknownType("x-runs")) { try GatewayQueueMessage.decode(type: "x-runs", body: ByteBuffer()) }
        #expect(throws: WireError.unknownType(nil)) { try GatewayQueueMessage.decode(type: nil, body: ByteBuffer(string: "{}")) }
    }
}
