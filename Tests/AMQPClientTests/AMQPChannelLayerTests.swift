import AMQPClient
import ChannelLayer
import Logging
import NIOCore
import Testing

/// The channel layer on the real broker: groups are bindings, reference-counted per process.
@Suite(.serialized) struct AMQPChannelLayerTests {
    func bindings(_ queue: String) throws -> [String] {
        try TestBroker.rabbitmqctl("list_bindings", "source_name", "destination_name", "routing_key")
            .split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
            .filter { $0.count == 3 && $0[0] == "chat.groups" && $0[1] == queue && $0[2] != queue }.map { $0[2] }  // not its own acks' key
    }

    @Test func groupsAcrossTwoProcessesWithOneBindingPerGroupPerProcess() async throws {
        let c1 = await TestBroker.connect("layer-1"), c2 = await TestBroker.connect("layer-2")
        let p1 = AMQPChannelLayer(connection: c1, processID: TestBroker.uniqueName("p1"), logger: Logger(label: "p1"))
        let p2 = AMQPChannelLayer(connection: c2, processID: TestBroker.uniqueName("p2"), logger: Logger(label: "p2"))
        let runners = Task { try await withThrowingTaskGroup(of: Void.self) { g in
            g.addTask { try await p1.run() }
            g.addTask { try await p2.run() }
            try await g.waitForAll()
        } }
        try await p1.declareTopology()
        try await p2.declareTopology()
        let group = "named:" + TestBroker.uniqueName("g")

        let locals = (0..<1000).map { Recorder(id: $0) }
        for channel in locals { try await p1.groupAdd(group, channel: channel) }
        let remote = Recorder(id: 1)
        try await p2.groupAdd(group, channel: remote)
        #expect(try bindings(p1.queueName) == [group])  // 1,000 sockets, one binding
        #expect(try bindings(p2.queueName) == [group])

        try await p2.groupSend(group, message: ChannelMessage(body: ByteBuffer(string: "to all"), seq: 1))
        #expect(try await remote.first(1).map(\.seq) == [1])
        for channel in [locals[0], locals[999]] {
            #expect(try await channel.first(1).map { String(buffer: $0.body) } == ["to all"])
        }

        for channel in locals.dropLast() { try await p1.groupDiscard(group, channel: channel) }
        #expect(try bindings(p1.queueName) == [group])
        try await p1.groupDiscard(group, channel: locals.last!)
        #expect(try bindings(p1.queueName) == [])

        runners.cancel()
        await c1.close()
        await c2.close()
    }
}
