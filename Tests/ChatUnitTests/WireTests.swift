import AMQPClient
import ChatProtocol
import ChatWire
import Foundation
import NIOCore
import Presence
import Testing

/// The typed wire protocol between the services (ChatWire): every case read back as written, a cut or forged
/// body refused (never a crash, never a partial read), and every case documented in docs/amqp-topology.md.
@Suite struct WireTests {
    let messages = [
        InboundChatMessage(id: "m1", group: "named:lobby", sender: nil, text: "hi \"there\" 안녕 \u{0}", receivedAt: 1_700_000_000_123),
        InboundChatMessage(id: "m2", group: "consult:7", sender: "v@example.com", text: "", receivedAt: -1,
                           clientID: "c-1", replyTo: "chat.gateway.g1", socket: 42),
    ]

    var deliveries: DeliveryBatch {
        DeliveryBatch(runs: [.init(group: "named:lobby", firstSeq: 9, frames: [ByteBuffer(string: #"{"message":"a"}"#), ByteBuffer(string: "b")]),
                             .init(group: "consult:7", firstSeq: 1, frames: [ByteBuffer(string: "c")])],
                      acks: [.init(gateway: "chat.gateway.g1", ack: MessageAck(socket: 42, clientID: "c-1", id: "m2", seq: 1))],
                      receivedAt: 5)
    }

    @Test func aPartitionBatchIsReadBackAsWritten() throws {
        let message = PartitionQueueMessage.messages(messages)
        #expect(try PartitionQueueMessage.decode(type: message.type, body: message.encode()) == message)
        let outgoing = message.outgoing(partition: 3)
        #expect(outgoing.routingKey == "p3" && !outgoing.properties.persistent && outgoing.mandatory)
    }

    @Test func aDeliveryBatchIsReadBackAsWritten() throws {
        let message = GatewayQueueMessage.deliveries(deliveries)
        guard case .deliveries(let read) = try GatewayQueueMessage.decode(type: message.type, body: message.encode()) else {
            Issue.record("not deliveries")
            return
        }
        #expect(read == deliveries)
        let outgoing = try #require(deliveries.outgoing())
        #expect(outgoing.routingKey == "named:lobby")
        #expect(outgoing.properties.headers[ChatTopology.ccHeader] == .strings(["consult:7", "chat.gateway.g1"]))
    }

    @Test func aGroupFrameAndAMembershipEventAreReadBack() throws {
        let frame = GatewayQueueMessage.groupSend("named:a", frame: ByteBuffer(string: #"{"type":"read"}"#))
        guard case .groupFrame(let group, let seq, let body) = try GatewayQueueMessage.decode(type: frame.properties.type, body: frame.body) else {
            Issue.record("not a group frame")
            return
        }
        #expect(group == "named:a" && seq == nil && String(buffer: body) == #"{"type":"read"}"#)
        let event = MembershipEvent(kind: .heartbeat, gateway: "g1", rooms: ["named:a": 2], online: ["consult:7": ["v@example.com": 1]])
        let outgoing = MembershipWire.outgoing(event)
        guard case .membership(let read) = try GatewayQueueMessage.decode(type: outgoing.properties.type, body: outgoing.body),
              case .membership(let readByRooms) = try RoomsInstanceQueueMessage.decode(type: outgoing.properties.type, body: outgoing.body) else {
            Issue.record("not membership")
            return
        }
        #expect(read == event && readByRooms == event)
    }

    /// Every prefix of a valid body, and every body with one byte flipped to 0xFF, is refused or read whole.
    @Test func aCutOrCorruptedBodyIsRefusedNeverReadInPart() throws {
        let bodies: [(String, ByteBuffer)] = [("chat.messages", PartitionQueueMessage.messages(messages).encode()),
                                             ("chat.deliveries", GatewayQueueMessage.deliveries(deliveries).encode())]
        for (type, body) in bodies {
            for length in 0..<body.readableBytes {
                let cut = body.getSlice(at: body.readerIndex, length: length)!
                #expect(throws: WireError.self) {
                    if type == "chat.messages" { _ = try PartitionQueueMessage.decode(type: type, body: cut) } else { _ = try GatewayQueueMessage.decode(type: type, body: cut) }
                }
            }
            for index in 0..<body.readableBytes {
                var corrupted = body
                corrupted.setInteger(UInt8(0xFF), at: body.readerIndex + index)
                // Either an error or a whole read: never a trap or a read past the end.
                if type == "chat.messages" { _ = try? PartitionQueueMessage.decode(type: type, body: corrupted) } else { _ = try? GatewayQueueMessage.decode(type: type, body: corrupted) }
            }
        }
    }

    @Test func aHostileCountIsRefusedBeforeAnythingIsAllocated() {
        var body = ByteBuffer()
        body.writeInteger(UInt8(1))
        body.writeInteger(UInt32.max)
        #expect(throws: WireError.self) { try PartitionQueueMessage.decode(type: "chat.messages", body: body) }
        #expect(throws: WireError.unknownType("application/json")) { try PartitionQueueMessage.decode(type: "application/json", body: body) }
    }

    /// docs/amqp-topology.md names every AMQP `type` of every queue's enum.
    @Test func everyCaseIsDocumented() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/amqp-topology.md"), encoding: .utf8)
        for type in PartitionQueueMessage.types + GatewayQueueMessage.types + RoomsInstanceQueueMessage.types {
            #expect(text.contains("`\(type)`"), "docs/amqp-topology.md does not name `\(type)`")
        }
    }
}
