import ChannelLayer
import ChatProtocol
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOWebSocket
import Synchronization
import Testing

/// The gateway's ``Hub``: one owner of open sockets and groups, broadcasts in one hop per event loop with the
/// frames encoded once, and acks to their sockets.
@Suite struct HubTests {
    /// A member on an event loop that records what it is handed, and on which loop.
    final class LoopMember: GroupMember {
        let memberID: Int
        let loop: any EventLoop
        let got = Mutex<(messages: [ChannelMessage], calls: Int, acks: [[MessageAck]], offLoop: Int)>(([], 0, [], 0))
        init(id: Int, loop: any EventLoop) {
            memberID = id
            self.loop = loop
        }
        var deliveryLoop: (any EventLoop)? { loop }
        func deliver(_ messages: [ChannelMessage]) {
            let off = loop.inEventLoop ? 0 : 1
            got.withLock { $0.messages += messages; $0.calls += 1; $0.offLoop += off }
        }
        func acknowledge(_ acks: [MessageAck]) {
            got.withLock { $0.acks.append(acks) }
        }
    }

    @Test func aBroadcastOfSeveralRoomsReachesEachMemberOnItsLoopInOneCallWithTheSameBytes() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let loops = [group.next(), group.next()]
        let hub = Hub()
        let members = (0..<6).map { LoopMember(id: hub.allocateID(), loop: loops[$0 % 2]) }
        for (index, member) in members.enumerated() {
            try await hub.add(index < 3 ? "named:a" : "named:b", member, onFirstMember: {})
        }
        let frames = ["{\"message\":\"1\"}", "{\"message\":\"2\"}"].map { ByteBuffer(string: $0) }
        let wires = WebSocketWire.textFrames(frames)
        let counted = Mutex(0)
        let broadcasts = ["named:a", "named:b", "named:none"].map { room in
            Hub.Broadcast(group: room, messages: frames.enumerated().map { ChannelMessage(body: $1, group: room, seq: Int64($0 + 1), wire: wires[$0]) },
                          delivered: { n in counted.withLock { $0 += n } })
        }
        #expect(hub.deliver(broadcasts) == 12)
        for _ in 0..<200 where counted.withLock({ $0 }) < 6 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(counted.withLock { $0 } == 6)
        for member in members {
            let got = member.got.withLock { $0 }
            #expect(got.calls == 1 && got.offLoop == 0)
            #expect(got.messages.map(\.seq) == [1, 2])
            // Every member holds the same bytes: one encoding, not one per socket.
            #expect(got.messages[0].wire == wires[0])
            got.messages[0].wire!.withUnsafeReadableBytes { mine in
                wires[0].withUnsafeReadableBytes { original in #expect(mine.baseAddress == original.baseAddress) }
            }
        }
    }

    @Test func acksReachOpenMembersOnlyAllOfAMembersAcksInOneCall() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let hub = Hub()
        let open = LoopMember(id: hub.allocateID(), loop: group.next()), closed = LoopMember(id: hub.allocateID(), loop: group.next())
        hub.register(open)
        hub.register(closed)
        hub.unregister(closed)
        #expect(hub.openCount == 1)
        hub.acknowledge([MessageAck(socket: open.memberID, clientID: "a", id: "1", seq: 1),
                         MessageAck(socket: closed.memberID, clientID: "b", id: "2", seq: 2),
                         MessageAck(socket: open.memberID, clientID: "c", id: "3", seq: 3)])
        for _ in 0..<200 where open.got.withLock({ $0.acks.isEmpty }) { try await Task.sleep(for: .milliseconds(5)) }
        #expect(open.got.withLock { $0.acks.map { $0.map(\.clientID) } } == [["a", "c"]])
        #expect(closed.got.withLock { $0.acks.isEmpty })
    }

    /// The hand-written frames are byte for byte what NIO's own encoder writes, for each length form.
    @Test(arguments: [0, 5, 125, 126, 200, 65_535, 65_536, 70_000])
    func encodedFramesMatchNIOsEncoder(length: Int) throws {
        let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 % 250 + 1) })
        let channel = EmbeddedChannel(handler: WebSocketFrameEncoder())
        try channel.writeOutbound(WebSocketFrame(fin: true, opcode: .text, data: payload))
        var expected = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { expected.writeBuffer(&part) }
        let ours = WebSocketWire.textFrames([payload, payload])
        #expect(ours.count == 2)
        #expect(ours[0] == expected && ours[1] == expected)
        _ = try channel.finish()
    }
}
