import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatWire
import Foundation
import Logging
import NIOCore
import Presence
import ServiceKit
import ServiceLifecycle

/// What sessions use to reach the other services, through the ``GatewayBroker``; also declares the topology
/// and sends this gateway's heartbeats (its member counts) to the room service.
final class GatewayBackend: Service {
    let configuration: GatewayConfiguration
    let broker: any GatewayBroker
    let logger: Logger
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()

    /// Who is in which room, here and on the other gateways.
    let presence: any PresenceManager

    /// Signed-in sockets by user (the server API's disconnect).
    let userSockets: UserSockets

    init(configuration: GatewayConfiguration, broker: any GatewayBroker, presence: any PresenceManager, logger: Logger,
         userSockets: UserSockets = UserSockets()) {
        self.userSockets = userSockets
        self.configuration = configuration
        self.broker = broker
        self.presence = presence
        self.logger = logger
    }

    // MARK: Sockets and groups

    /// This gateway's sockets: which are open and which room each is in.
    var hub: Hub { broker.hub }
    /// Where persistence sends the acks of this gateway's sockets.
    var replyQueue: String { broker.replyQueue }

    /// Adds a socket to its room's group: once this returns, every broadcast to the room reaches it.
    func addToGroup(_ group: String, _ member: any GroupMember) async throws {
        try await broker.groupAdd(group, channel: member)
    }

    /// Takes a socket out of its room's group.
    func removeFromGroup(_ group: String, _ member: any GroupMember) async throws {
        try await broker.groupDiscard(group, channel: member)
    }

    /// Sends a frame to every socket of a room, on every gateway (read receipts).
    func sendToGroup(_ group: String, frame: ByteBuffer) async throws {
        try await broker.groupSend(group, message: ChannelMessage(body: frame))
    }

    func run() async throws {
        try await broker.declareTopology()
        repeat {
            publishMembership(presence.heartbeat(gateway: configuration.gatewayID))
        } while await sleepUntilShutdown(for: configuration.heartbeatInterval)
        // Its sockets are closed by now (the server stops first): the others forget this gateway at once.
        publishMembership(MembershipEvent(kind: .stop, gateway: configuration.gatewayID))
    }

    /// Publishes a membership event to the fanout: every room service instance and every gateway gets it. Not
    /// awaited (a socket's join need not wait a broker round trip for it): publishes leave in the order they are
    /// made, and a lost event is mended by the next heartbeat.
    func publishMembership(_ event: MembershipEvent) {
        broker.publishMembership(event)
    }

    /// The presence frame of a room as this gateway sees it now: its own sockets and the other gateways'.
    func presenceFrame(_ group: String) -> String { presence.frame(for: group) }

    /// Hands a client message to the persistence service. Messages from every socket of this gateway that arrive
    /// together go out as one AMQP message per partition (``PartitionQueueMessage``), which is what keeps the
    /// broker's cost per chat message low; a socket's messages keep their order. The confirmation (the broker
    /// routed the batch) is awaited apart; the client's ack comes from persistence once the message is stored.
    func submit(_ message: InboundChatMessage) -> AMQPConfirmation {
        broker.submit(message)
    }


    /// Asks the room service for the room (created on first use) and, once it is there, tells every instance
    /// that a socket joined (`email`: who, in a consultation room).
    /// (`user`: the signed-in user, counted by ``reserveSocket(ofUser:)`` already; other gateways count it from the event.)
    func join(group: ChatGroup, email: String?, user: String? = nil) async throws -> RoomReply {
        let reply = try await roomRequest(.join(group: group))
        if case .joined = reply {
            presence.joined(group.key, email: email)
            publishMembership(MembershipEvent(kind: .join, gateway: configuration.gatewayID, room: group.key, email: email, user: user))
        }
        return reply
    }

    func leave(group: String, email: String?, user: String? = nil) async {
        presence.left(group, email: email)
        if let user { presence.releaseSocket(ofUser: user) }
        publishMembership(MembershipEvent(kind: .leave, gateway: configuration.gatewayID, room: group, email: email, user: user))
    }

    /// Counts a signed-in user's socket here unless the user has `CHAT_MAX_SOCKETS_PER_USER` on every gateway.
    func reserveSocket(ofUser user: String) -> Bool {
        presence.reserveSocket(ofUser: user, limit: configuration.maxSocketsPerUser)
    }

    func releaseSocket(ofUser user: String) { presence.releaseSocket(ofUser: user) }

    /// A room's sockets on every gateway and who is online in it.
    /// Who is in a room across every gateway, as the room service (the membership's authority) has it.
    func roomPresence(_ group: String) async throws -> (count: Int, online: [String]) {
        switch try await roomRequest(.presence(group: group)) {
        case .presence(let count, let online): return (count, online)
        case let other: throw Self.unexpected(other)
        }
    }

    /// Asks every gateway (this one too, through the fanout) to close the user's sockets.
    func disconnectEverywhere(user: String, reason: String) {
        publishMembership(MembershipEvent(kind: .disconnect, gateway: configuration.gatewayID, user: user, reason: reason))
    }

    /// Server API keys are stored as client ids behind a control character, which a client's `client_id` may
    /// not contain: a browser cannot take a key a back end will use.
    static let serverClientIDPrefix = "\u{1F}server:"

    /// Stores and broadcasts a message as a socket's would be, and waits for persistence's ack: with the same
    /// idempotency key again, the room stores nothing new and the original id and seq come back.
    func publishAsServer(group: String, sender: String?, text: String, idempotencyKey: String?) async throws -> MessageAck {
        let waiter = AckWaiter(memberID: hub.allocateID())
        hub.register(waiter)
        defer { hub.unregister(waiter) }
        let message = InboundChatMessage(id: MessageID.timeOrdered(), group: group, sender: sender, text: text,
                                         receivedAt: Timestamp.nowMillis(),
                                         clientID: Self.serverClientIDPrefix + (idempotencyKey ?? MessageID.timeOrdered()),
                                         replyTo: replyQueue, socket: waiter.memberID)
        submit(message).onFailure { error in waiter.finish(.failure(error)) }
        return try await waiter.wait(timeout: configuration.requestTimeout)
    }

    /// Stored frames of a room, oldest first, with the seq of the first.
    func history(group: String, limit: Int, beforeSeq: Int64? = nil) async throws -> (firstSeq: Int64?, frames: [ByteBuffer]) {
        let reply = try await request(HistoryRequest.messages(group: group, limit: limit, beforeSeq: beforeSeq), to: ChatTopology.historyQueue)
        let count = Int(reply.headers[ChatTopology.countHeader]?.intValue ?? 0)
        guard count > 0 else { return (nil, []) }
        return (reply.headers[ChatTopology.seqHeader]?.intValue, FrameBatch.split(reply.body))
    }

    /// What a socket resuming after `afterSeq` missed: the stored frames (at most `limit`), or a reset to the
    /// room's last seq when it missed more or knows of seqs the room does not have.
    func resume(group: String, afterSeq: Int64, limit: Int) async throws -> OpeningHistory {
        let reply = try await request(HistoryRequest.after(group: group, afterSeq: afterSeq, limit: limit), to: ChatTopology.historyQueue)
        let last = reply.headers[ChatTopology.lastSeqHeader]?.intValue ?? 0
        let count = Int(reply.headers[ChatTopology.countHeader]?.intValue ?? 0)
        // More missed than the cap, or seqs the room never had. (A room whose last seq moved past `afterSeq` while
        // the reply was read is no reset: the socket's group holds that broadcast, or fills the gap.)
        if reply.headers[ChatTopology.truncatedHeader] != nil || (count == 0 && last < afterSeq) { return OpeningHistory(reset: last) }
        let frames = count > 0 ? FrameBatch.split(reply.body) : []
        return OpeningHistory(frames: frames, firstSeq: reply.headers[ChatTopology.seqHeader]?.intValue, after: afterSeq)
    }

    // MARK: Consultation rooms (room service)

    func consultRoom(id: Int64) async -> Result<ConsultRoom?, any Error> {
        do {
            switch try await roomRequest(.consultGet(id: id)) {
            case .consultRoom(let room, _): return .success(room)
            case .notFound: return .success(nil)
            case let other: return .failure(Self.unexpected(other))
            }
        } catch {
            return .failure(error)
        }
    }

    /// The pair's room and whether this call created it; a refused pair throws ``ChatError/invalidFrame(_:)``.
    func createConsultRoom(shop: Email, visitor: Email) async throws -> (room: ConsultRoom, created: Bool) {
        switch try await roomRequest(.consultCreate(shop: shop, visitor: visitor)) {
        case .consultRoom(let room, let created): return (room, created)
        case .refused(let reason): throw ChatError.invalidFrame(reason)
        case let other: throw Self.unexpected(other)
        }
    }

    func consultRooms(of identity: Identity) async throws -> [ConsultRoom] {
        switch try await roomRequest(.consultList(email: identity.email, role: identity.role)) {
        case .consultRooms(let rooms): return rooms
        case let other: throw Self.unexpected(other)
        }
    }

    func markRead(roomID: Int64, email: Email, seq: Int64) async throws -> Int64 {
        switch try await roomRequest(.consultRead(roomID: roomID, email: email, seq: seq)) {
        case .readUpTo(let mark): return mark
        case let other: throw Self.unexpected(other)
        }
    }

    /// Last message and unread count per room (persistence service).
    func summaries(_ queries: [RoomSummaryQuery]) async throws -> [RoomSummary] {
        if queries.isEmpty { return [] }
        let reply = try await request(HistoryRequest.summaries(queries), to: ChatTopology.historyQueue)
        return try decoder.decode([RoomSummary].self, from: Data(buffer: reply.body))
    }

    private static func unexpected(_ reply: RoomReply) -> ChatError {
        switch reply {
        case .refused(let reason), .failed(let reason): .unavailable(reason)
        default: .unavailable("room service error")
        }
    }

    private func roomRequest(_ request: RoomRequest) async throws -> RoomReply {
        let reply = try await self.request(request, to: ChatTopology.roomsQueue)
        return try decoder.decode(RoomReply.self, from: Data(buffer: reply.body))
    }

    private func request<Request: Encodable>(_ request: Request, to queue: String) async throws -> BrokerReply {
        let reply = try await broker.request(ByteBuffer(bytes: try encoder.encode(request)), to: queue, timeout: configuration.requestTimeout)
        if case .string(let reason)? = reply.headers[ChatTopology.failureHeader] { throw ServiceFailure(reason: reason) }
        return reply
    }
}

/// A service answered a request with a failure (``ChatTopology/failureHeader``) rather than a result.
struct ServiceFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}
