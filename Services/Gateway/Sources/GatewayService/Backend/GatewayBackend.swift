import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import Presence
import ServiceKit
import ServiceLifecycle
import Synchronization

/// What sessions use to reach the other services, through the ``GatewayBroker``; also declares the topology
/// and sends this gateway's heartbeats (its member counts) to the room service.
final class GatewayBackend: Service {
    let configuration: GatewayConfiguration
    let broker: any GatewayBroker
    let logger: Logger
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()

    /// The other gateways' members (from the membership fanout).
    let membership: Membership
    /// This gateway's consultation sockets per room and email (their named sockets are the registry's counts).
    let localOnline = Mutex<[String: [String: Int]]>([:])

    init(configuration: GatewayConfiguration, broker: any GatewayBroker, membership: Membership, logger: Logger) {
        self.configuration = configuration
        self.broker = broker
        self.membership = membership
        self.logger = logger
    }

    func run() async throws {
        try await broker.declareTopology()
        repeat {
            let heartbeat = MembershipEvent(kind: .heartbeat, gateway: configuration.gatewayID, rooms: broker.registry.memberCounts(),
                                            online: localOnline.withLock { $0 })
            publishMembership(heartbeat)
        } while await sleepUntilShutdown(for: configuration.heartbeatInterval)
        // Its sockets are closed by now (the server stops first): the others forget this gateway at once.
        publishMembership(MembershipEvent(kind: .stop, gateway: configuration.gatewayID))
    }

    /// Publishes a membership event to the fanout: every room service instance and every gateway gets it. Not
    /// awaited (a socket's join need not wait a broker round trip for it): publishes leave in the order they are
    /// made, and a lost event is mended by the next heartbeat.
    func publishMembership(_ event: MembershipEvent) {
        guard let body = try? encoder.encode(event) else { return }
        broker.publishMembership(ByteBuffer(bytes: body))
    }

    /// The presence frame of a room as this gateway sees it now: its own sockets and the other gateways'.
    func presenceFrame(_ group: String) -> String {
        let me = configuration.gatewayID
        if case .consult = ChatGroup(key: group) {
            var online = Set(membership.online(in: group, excluding: me).keys)
            online.formUnion(localOnline.withLock { $0[group]?.keys.map { $0 } ?? [] })
            return PresenceFrame.consult(online: Array(online))
        }
        let count = broker.registry.memberCount(group) + membership.members(of: group, excluding: me)
        return PresenceFrame.named(room: ChatGroup.displayName(ofKey: group), count: count)
    }

    /// Hands a client message to the persistence service. Messages from every socket of this gateway that arrive
    /// together go out as one AMQP message (a JSON array), which is what keeps the broker's cost per chat
    /// message low; a socket's messages keep their order. The confirmation (the broker has the batch on disk)
    /// is awaited apart.
    func submit(_ message: InboundChatMessage) -> AMQPConfirmation {
        broker.submit(message)
    }


    /// Asks the room service for the room (created on first use) and, once it is there, tells every instance
    /// that a socket joined (`email`: who, in a consultation room).
    func join(group: ChatGroup, email: String?) async throws -> RoomReply {
        let reply = try await roomRequest(.join(group: group))
        if case .joined = reply {
            if let email { localOnline.withLock { $0[group.key, default: [:]][email, default: 0] += 1 } }
            publishMembership(MembershipEvent(kind: .join, gateway: configuration.gatewayID, room: group.key, email: email))
        }
        return reply
    }

    func leave(group: String, email: String?) async {
        if let email {
            localOnline.withLock { online in
                guard let count = online[group]?[email] else { return }
                online[group]![email] = count > 1 ? count - 1 : nil
                if online[group]!.isEmpty { online[group] = nil }
            }
        }
        publishMembership(MembershipEvent(kind: .leave, gateway: configuration.gatewayID, room: group, email: email))
    }

    /// Stored frames of a room, oldest first, with the seq of the first.
    func history(group: String, limit: Int, beforeSeq: Int64? = nil) async throws -> (firstSeq: Int64?, frames: [ByteBuffer]) {
        let reply = try await request(HistoryRequest.messages(group: group, limit: limit, beforeSeq: beforeSeq), to: ChatTopology.historyQueue)
        let count = Int(reply.headers[ChatTopology.countHeader]?.intValue ?? 0)
        guard count > 0 else { return (nil, []) }
        return (reply.headers[ChatTopology.seqHeader]?.intValue, FrameBatch.split(reply.body))
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
        try await broker.request(ByteBuffer(bytes: try encoder.encode(request)), to: queue, timeout: configuration.requestTimeout)
    }
}
