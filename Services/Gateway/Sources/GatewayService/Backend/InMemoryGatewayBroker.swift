import AMQPClient
import ChannelLayer
import ChatProtocol
import NIOCore
import Presence
import Synchronization

/// A gateway broker inside one process, for unit tests: groups on an ``InMemoryChannelLayer``, requests
/// answered by `respond` (the test plays the room and persistence services), submitted messages kept in
/// ``submitted`` and confirmed at once, membership events kept in ``membershipEvents``.
final class InMemoryGatewayBroker: GatewayBroker {
    typealias Responder = @Sendable (_ queue: String, _ body: ByteBuffer) async throws -> BrokerReply
    private let layer = InMemoryChannelLayer()
    private let respond: Responder
    private let state = Mutex<(submitted: [InboundChatMessage], events: [MembershipEvent])>(([], []))

    init(respond: @escaping Responder) {
        self.respond = respond
    }

    var hub: Hub { layer.hub }
    let replyQueue = "chat.gateway.memory"
    var submitted: [InboundChatMessage] { state.withLock { $0.submitted } }
    var membershipEvents: [MembershipEvent] { state.withLock { $0.events } }

    func declareTopology() async throws {}
    func groupAdd(_ group: String, channel: any GroupMember) async throws { try await layer.groupAdd(group, channel: channel) }
    func groupDiscard(_ group: String, channel: any GroupMember) async throws { try await layer.groupDiscard(group, channel: channel) }
    func groupSend(_ group: String, message: ChannelMessage) async throws { try await layer.groupSend(group, message: message) }

    func request(_ body: ByteBuffer, to queue: String, timeout: Duration) async throws -> BrokerReply {
        try await respond(queue, body)
    }

    func publishMembership(_ event: MembershipEvent) {
        state.withLock { $0.events.append(event) }
    }

    func submit(_ message: InboundChatMessage) -> AMQPConfirmation {
        state.withLock { $0.submitted.append(message) }
        let confirmation = AMQPConfirmation()
        confirmation.complete(.success(()))
        return confirmation
    }
}
