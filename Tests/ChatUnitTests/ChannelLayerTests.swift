import ChannelLayer
import NIOCore
import Synchronization
import Testing

/// Pure logic of groups, on the in-process layer (the AMQP layer is tested against RabbitMQ).
@Suite struct InMemoryChannelLayerTests {
    func drain(_ channel: LocalChannel, _ count: Int) async -> [String] {
        var out: [String] = []
        for await m in channel.messages {
            out.append(String(buffer: m.body))
            if out.count == count { break }
        }
        return out
    }

    @Test func groupSendReachesEveryMemberAndNoOneElse() async throws {
        let layer = InMemoryChannelLayer()
        let a1 = layer.newChannel(), a2 = layer.newChannel(), b = layer.newChannel()
        try await layer.groupAdd("a", channel: a1)
        try await layer.groupAdd("a", channel: a2)
        try await layer.groupAdd("b", channel: b)
        try await layer.groupSend("a", message: ChannelMessage(body: ByteBuffer(string: "x")))
        try await layer.groupDiscard("a", channel: a2)
        try await layer.groupSend("a", message: ChannelMessage(body: ByteBuffer(string: "y")))
        try await layer.groupSend("b", message: ChannelMessage(body: ByteBuffer(string: "z")))
        #expect(await drain(a1, 2) == ["x", "y"])
        #expect(await drain(a2, 1) == ["x"])
        #expect(await drain(b, 1) == ["z"])
    }

    @Test func sendReachesOneChannelByName() async throws {
        let layer = InMemoryChannelLayer(processName: "p")
        let one = layer.newChannel(), two = layer.newChannel()
        try await layer.send(toChannel: two.name, message: ChannelMessage(body: ByteBuffer(string: "only you")))
        #expect(await drain(two, 1) == ["only you"])
        one.close()
        #expect(await drain(one, 1) == [])
    }

    @Test func bindingsAreReferenceCountedAndOrderedPerGroup() async throws {
        let registry = GroupRegistry(processName: "p", mailboxCapacity: 8)
        let events = EventLog()
        let channels = (0..<100).map { _ in registry.newChannel() }
        await withTaskGroup(of: Void.self) { group in
            for c in channels {
                group.addTask {
                    try? await registry.add("room", c) { events.append("bind") }
                }
            }
        }
        #expect(events.all == ["bind"])
        #expect(registry.memberCount("room") == 100)
        for c in channels.dropLast() {
            try await registry.remove("room", c) { events.append("unbind") }
        }
        #expect(events.all == ["bind"])
        try await registry.remove("room", channels.last!) { events.append("unbind") }
        try await registry.add("room", channels[0]) { events.append("bind") }
        #expect(events.all == ["bind", "unbind", "bind"])
    }

    @Test func aReaderThatFallsBehindOverflowsInsteadOfGrowing() async throws {
        let layer = InMemoryChannelLayer(mailboxCapacity: 4)
        let slow = layer.newChannel()
        try await layer.groupAdd("g", channel: slow)
        for i in 0..<10 { try await layer.groupSend("g", message: ChannelMessage(body: ByteBuffer(string: "\(i)"))) }
        #expect(slow.overflowed)
        #expect(await drain(slow, 10) == ["0", "1", "2", "3"])
    }
}

final class EventLog: Sendable {
    private let events = Mutex<[String]>([])
    func append(_ event: String) { events.withLock { $0.append(event) } }
    var all: [String] { events.withLock { $0 } }
}
