import AMQPClient
import ChannelLayer
import ChatProtocol
import Testing

/// Every role's declarations from ``ChatTopology/declarations(for:)``, against the real broker: the roles agree
/// with one another (a declare that differs from what the broker holds is refused), and drift is caught.
@Suite(.serialized) struct TopologyTests {
    /// Every role, with fresh process ids (a process's exclusive queue belongs to its one connection).
    static var roles: [ChatTopology.Role] { [
        .gateway(id: TestBroker.uniqueName("g"), partitions: 2), .persistenceWriter(partitions: 2),
        .persistenceWorker(id: TestBroker.uniqueName("w")), .historyResponder, .roomsResponder,
        .roomsInstance(id: TestBroker.uniqueName("r")), .channelLayer(queue: TestBroker.uniqueName("chat.gateway.t"), membershipEvents: false),
    ] }

    @Test func eachRoleDeclaresWhatItBindsBeforeItBindsIt() {
        for role in Self.roles {
            var exchanges: Set<String> = [""], queues: Set<String> = []
            for declaration in ChatTopology.declarations(for: role) {
                switch declaration {
                case .exchange(let name, _): exchanges.insert(name)
                case .queue(let name, _, _, _): queues.insert(name)
                case .binding(let queue, let exchange, _):
                    #expect(queues.contains(queue) && exchanges.contains(exchange), "\(role): \(declaration)")
                }
            }
        }
    }

    @Test func everyRoleDeclaresOnTheBrokerAndTheRolesAgree() async throws {
        let first = await TestBroker.connect("topology-1"), second = await TestBroker.connect("topology-2")
        for role in Self.roles { try await ChatTopology.declare(role, on: first) }
        // Again, as other processes on another connection and in the other order: what one role declared durably, the
        // others declare alike.
        for role in Self.roles.reversed() { try await ChatTopology.declare(role, on: second) }
        let listing = try TestBroker.rabbitmqctl("list_queues", "name", "durable", "arguments")
        let partition = listing.split(separator: "\n").first { $0.hasPrefix(ChatTopology.partitionQueue(0) + "\t") }
        #expect(partition?.contains("x-single-active-consumer") == true, "\(listing)")
        #expect(partition?.contains("true") == true)

        // Drift: the same queue without single active consumer is refused by the broker, and the connection recovers.
        await #expect(throws: AMQPError.self) {
            try await first.declareQueue(ChatTopology.partitionQueue(0), durable: true)
        }
        await first.waitUntilConnected()
        try await ChatTopology.declare(.historyResponder, on: first)

        for queue in [ChatTopology.partitionQueue(0), ChatTopology.partitionQueue(1)] { try await first.deleteQueue(queue) }
        await first.close()
        await second.close()
    }
}
