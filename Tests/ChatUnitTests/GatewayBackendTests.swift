import ChatProtocol
import Foundation
import Logging
import NIOCore
import Presence
import Testing
@testable import GatewayService

/// What a gateway tells the others and what it shows as presence, on an ``InMemoryGatewayBroker``.
@Suite struct GatewayBackendTests {
    func backend(gatewayID: String = "g1") -> (GatewayBackend, InMemoryGatewayBroker) {
        let broker = InMemoryGatewayBroker { _, _ in
            BrokerReply(headers: [:], body: ByteBuffer(bytes: try JSONEncoder().encode(RoomReply.joined(roomID: nil, created: false))))
        }
        let presence = MembershipPresence(gatewayID: gatewayID, hub: broker.hub, expiry: .seconds(15))
        let backend = GatewayBackend(configuration: GatewayConfiguration(gatewayID: gatewayID), broker: broker, presence: presence,
                                     logger: Logger(label: "test"))
        return (backend, broker)
    }

    func events(_ broker: InMemoryGatewayBroker) throws -> [MembershipEvent] {
        broker.membershipEvents
    }

    @Test func aConsultationJoinAndLeaveAreToldToEveryoneAndShownAsPresence() async throws {
        let (backend, broker) = backend()
        let group = ChatGroup.consult(id: 9)
        #expect(try await backend.join(group: group, email: "v@example.com") == .joined(roomID: nil, created: false))
        // Another gateway's participant, as the membership fanout brings it.
        backend.presence.apply(MembershipEvent(kind: .join, gateway: "g2", room: group.key, email: "s@example.com"))
        #expect(backend.presenceFrame(group.key) == #"{"type":"presence","online":["s@example.com","v@example.com"]}"#)
        await backend.leave(group: group.key, email: "v@example.com")
        #expect(backend.presenceFrame(group.key) == #"{"type":"presence","online":["s@example.com"]}"#)
        #expect(try events(broker).map(\.kind) == [.join, .leave])
        #expect(try events(broker).allSatisfy { $0.gateway == "g1" && $0.room == group.key && $0.email == "v@example.com" })
    }

    @Test func aNamedRoomCountsThisGatewaysSocketsAndTheOthers() async throws {
        let (backend, broker) = backend()
        let group = "named:lobby"
        let local = (0..<2).map { Mailbox(id: $0) }
        for member in local { try await broker.groupAdd(group, channel: member) }
        backend.presence.apply(MembershipEvent(kind: .heartbeat, gateway: "g2", rooms: [group: 3]))
        backend.presence.apply(MembershipEvent(kind: .heartbeat, gateway: "g1", rooms: [group: 99]))  // its own echo: not counted twice
        #expect(backend.presenceFrame(group) == #"{"type":"presence","room":"lobby","count":5}"#)
        #expect(backend.presence.heartbeat(gateway: "g1").rooms == [group: 2])
    }

    @Test func aMessageIsHandedToPersistenceWithItsRoomAndSender() async throws {
        let (backend, broker) = backend()
        let message = InboundChatMessage(id: "id1", group: "named:lobby", sender: nil, text: "hi", receivedAt: 1)
        try await backend.submit(message).wait()
        #expect(broker.submitted == [message])
    }
}
