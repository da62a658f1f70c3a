import AMQPClient
import ChatProtocol
import ChatStorage
import CoreMetrics
import Foundation
import Logging
import NIOCore
import Presence
import ServiceKit
import ServiceLifecycle

/// Answers the gateways on `chat.rooms.requests`.
final class RoomRequestResponder: Service {
    let connection: AMQPConnection
    let store: RoomStore
    /// The whole membership, from the gateways' fanout (``MembershipListener``): presence is answered from it.
    let membership: Membership
    let readiness: Readiness
    let logger: Logger
    let decoder = JSONDecoder()
    let encoder = JSONEncoder()

    init(connection: AMQPConnection, store: RoomStore, membership: Membership, readiness: Readiness, logger: Logger) {
        self.membership = membership
        self.connection = connection
        self.store = store
        self.readiness = readiness
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.roomsQueue)
        self.logger = logger
    }

    func run() async throws {
        do {
            let store = self.store
            try await retryUntilDone("database", readiness: readiness, logger: logger) { try await store.migrate() }
        } catch {
            return  // shut down while waiting
        }
        try await ChatTopology.declare(.roomsResponder, on: connection)
        logger.info("room service consuming")
        let consumer = connection.consume(queue: ChatTopology.roomsQueue, prefetch: 256)
        // Answered concurrently: a burst of joins of new rooms (each an insert) must not queue behind one another.
        await answerConcurrently(consumer, maxConcurrent: Self.maxConcurrent) { delivery in await self.handle(delivery) }
    }

    static let maxConcurrent = 64

    /// `chat_rooms_requests_total{op}`: room requests served, by operation (a handful of values).
    static func requests(op: String) -> Counter {
        Counter(label: "chat_rooms_requests_total", dimensions: [("op", op)])
    }

    func handle(_ delivery: AMQPDelivery) async {
        guard let request = try? decoder.decode(RoomRequest.self, from: Data(buffer: delivery.body)) else {
            // Answered, not dropped: the asking gateway learns at once that its request was malformed.
            Self.requests(op: "malformed").increment()
            await reply(to: delivery, .refused(reason: "malformed request"))
            return
        }
        Self.requests(op: request.operation).increment()
        do {
            await reply(to: delivery, try await answer(request))
        } catch let error as ChatError {
            await reply(to: delivery, .refused(reason: error.description))
        } catch {
            logger.error("room request failed", metadata: ["error": "\(error)", "op": "\(request.operation)"])
            await reply(to: delivery, .failed(reason: "room service error"))
        }
    }

    func answer(_ request: RoomRequest) async throws -> RoomReply {
        switch request {
        case .join(.consult):
            // Consultation rooms exist before anyone joins; the gateway has checked the participant.
            return .joined(roomID: nil, created: false)
        case .join(.named(let name)):
            let (room, created) = try await store.getOrCreate(kind: "named", name: name.value)
            if created { logger.info("room created", metadata: ["chat.room": "\(name.value)", "chat.room_id": "\(room.id)"]) }
            return .joined(roomID: room.id, created: created)
        case .consultCreate(let shop, let visitor):
            let (room, created) = try await store.getOrCreateConsultRoom(shopEmail: shop.value, visitorEmail: visitor.value)
            if created { logger.info("consultation room created", metadata: ["chat.room_id": "\(room.id)"]) }
            return .consultRoom(room: room, created: created)
        case .consultGet(let id):
            guard let room = try await store.consultRoom(id: id) else { return .notFound }
            return .consultRoom(room: room, created: false)
        case .consultList(let email, let role):
            return .consultRooms(try await store.consultRooms(email: email.value, role: role))
        case .presence(let group):
            return .presence(count: membership.members(of: group), online: membership.online(in: group).keys.sorted())
        case .consultRead(let roomID, let email, let seq):
            return .readUpTo(seq: try await store.markRead(roomID: roomID, email: email.value, seq: seq))
        }
    }

    func reply(to delivery: AMQPDelivery, _ reply: RoomReply) async {
        let body: Data
        do {
            body = try encoder.encode(reply)
        } catch {
            logger.error("a room reply could not be encoded; the gateway's request will time out", metadata: ["error": "\(error)"])
            return
        }
        connection.sendReply(AMQPRequester.reply(to: delivery, body: ByteBuffer(bytes: body)), logger: logger)
    }
}
