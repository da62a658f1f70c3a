import ChannelLayer
import NIOCore
import Synchronization
import Testing

/// Pure logic of groups, on the in-process layer (the AMQP layer is tested against RabbitMQ).
@Suite struct InMemoryChannelLayerTests {
    @Test func groupSendReachesEveryMemberAndNoOneElse() async throws {
        let layer = InMemoryChannelLayer()
        let a1 = Mailbox(id: 1), a2 = Mailbox(id: 2), b = Mailbox(id: 3)
        try await layer.groupAdd("a", channel: a1)
        try await layer.groupAdd("a", channel: a2)
        try await layer.groupAdd("b", channel: b)
        try await layer.groupSend("a", message: ChannelMessage(body: ByteBuffer(string: "x")))
        try await layer.groupDiscard("a", channel: a2)
        try await layer.groupSend("a", message: ChannelMessage(body: ByteBuffer(string: "y")))
        try await layer.groupSend("b", message: ChannelMessage(body: ByteBuffer(string: "z")))
        #expect(await a1.next(2) == ["x", "y"])
        #expect(await a2.next(1) == ["x"])
        #expect(await b.next(1) == ["z"])
    }

    @Test func bindingsAreReferenceCountedAndOrderedPerGroup() async throws {
        let hub = Hub()
        let events = EventLog()
        let channels = (0..<100).map { Mailbox(id: $0) }
        await withTaskGroup(of: Void.self) { group in
            for c in channels {
                group.addTask {
                    try? await hub.add("room", c) { events.append("bind") }
                }
            }
        }
        #expect(events.all == ["bind"])
        #expect(hub.memberCount("room") == 100)
        for c in channels.dropLast() {
            try await hub.remove("room", c) { events.append("unbind") }
        }
        #expect(events.all == ["bind"])
        try await hub.remove("room", channels.last!) { events.append("unbind") }
        try await hub.add("room", channels[0]) { events.append("bind") }
        #expect(events.all == ["bind", "unbind", "bind"])
    }
}

final class EventLog: Sendable {
    private let events = Mutex<[String]>([])
    func append(_ event: String) { events.withLock { $0.append(event) } }
    var all: [String] { events.withLock { $0 } }
}
