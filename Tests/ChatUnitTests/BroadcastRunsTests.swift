import AMQPClient
import ChatProtocol
import Logging
import NIOCore
import Testing
@testable import ChannelLayer
@testable import PersistenceService

/// The runs persistence builds from a stored batch, and the gateway's reading of them, without a broker.
@Suite struct BroadcastRunsTests {
    func stored(_ group: String, _ seq: Int64, at time: Int64 = 1_000) -> StoredChatMessage {
        StoredChatMessage(id: "\(group)-\(seq)", group: group, seq: seq, sender: nil, text: "\(group) \(seq)", createdAt: time)
    }

    func runs(_ message: AMQPOutgoingMessage) -> String? { message.properties.headers[ChatTopology.runsHeader]?.stringValue }

    @Test func aBatchOfSeveralRoomsIsOneMessageWithARunPerRoom() {
        let batch = [stored("named:a", 1, at: 5), stored("named:a", 2), stored("named:b", 7, at: 3), stored("named:a", 3), stored("named:b", 8)]
        let messages = MessageWriter.broadcasts(of: batch)
        #expect(messages.count == 1)
        #expect(runs(messages[0]) == "named:a\t1\t3\nnamed:b\t7\t2\n")
        #expect(messages[0].routingKey == "named:a")
        #expect(messages[0].properties.headers[ChatTopology.ccHeader] == .strings(["named:b"]))
        #expect(messages[0].properties.headers[ChatTopology.receivedAtHeader] == .int(3))
        let frames = FrameBatch.split(messages[0].body).map { String(buffer: $0) }
        let expected: [String] = [batch[0], batch[1], batch[3], batch[2], batch[4]].map(\.clientFrame)  // room a's run, then b's
        #expect(frames == expected)
    }

    @Test func aGapInARoomsSeqsStartsANewRun() {
        let messages = MessageWriter.broadcasts(of: [stored("named:a", 1), stored("named:a", 3), stored("named:a", 4)])
        #expect(messages.count == 1 && runs(messages[0]) == "named:a\t1\t1\nnamed:a\t3\t2\n")
    }

    @Test func manyRoomsAreCutIntoMessagesOfAtMostRunsPerMessage() {
        let batch = (0..<300).map { stored("named:r\($0)", 1, at: Int64(2_000 - $0)) }
        let messages = MessageWriter.broadcasts(of: batch)
        #expect(messages.map { runs($0)?.split(separator: "\n").count } == [256, 44])
        let earliest: [AMQPFieldValue?] = messages.map { $0.properties.headers[ChatTopology.receivedAtHeader] }
        let expected: [AMQPFieldValue?] = [.int(1_745), .int(1_701)]  // the latest-numbered room of each chunk came first
        #expect(earliest == expected)
        #expect(MessageWriter.broadcasts(of: []).isEmpty)
    }

    @Test func aGatewayDispatchesEachRunToItsRoomsLocalMembersOnly() async throws {
        let connection = AMQPConnection(configuration: try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F", connectionName: "runs"),
                                        logger: .quiet)  // port 1, where nothing listens: routing reads no socket
        defer { Task { await connection.close() } }
        let layer = AMQPChannelLayer(connection: connection, processID: "g1", logger: Logger(label: "test"))
        let inA = Mailbox(id: 1)
        try await layer.registry.add("named:a", inA, onFirstMember: {})
        let message = MessageWriter.broadcasts(of: [stored("named:b", 1), stored("named:a", 4), stored("named:a", 5)])[0]
        layer.routeRuns(runs(message)!, body: message.body, receivedAt: nil)
        var received: [ChannelMessage] = []
        for await delivered in inA.messages {
            received.append(delivered)
            if received.count == 2 { break }
        }
        #expect(received.map(\.seq) == [4, 5])
        #expect(received.map { String(buffer: $0.body) } == [stored("named:a", 4).clientFrame, stored("named:a", 5).clientFrame])
        #expect(layer.registry.memberCount("named:b") == 0)
    }

    @Test func aMalformedRunsHeaderIsDroppedWhole() async throws {
        let connection = AMQPConnection(configuration: try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F", connectionName: "runs"),
                                        logger: .quiet)
        defer { Task { await connection.close() } }
        let layer = AMQPChannelLayer(connection: connection, processID: "g1", logger: Logger(label: "test"))
        let member = Mailbox(id: 1)
        try await layer.registry.add("named:a", member, onFirstMember: {})
        layer.routeRuns("named:a\t1\t5\n", body: ByteBuffer(string: "only one frame"), receivedAt: nil)  // 5 claimed, 1 there
        layer.routeRuns("named:a\tx\t1\n", body: ByteBuffer(string: "{}"), receivedAt: nil)
        layer.registry.dispatch(ChannelMessage(body: ByteBuffer(string: "marker")), to: "named:a")
        #expect(await member.next(1) == ["marker"])
    }
}
