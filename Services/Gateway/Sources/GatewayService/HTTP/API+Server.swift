import ChannelLayer
import ChatProtocol
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Presence
import Synchronization

/// The server API for back ends (docs/openapi.yaml, `/api/server/*`): publish into a room, disconnect a user
/// everywhere, presence and history. Enabled by `CHAT_SERVER_API_KEY`, sent as `X-Chat-Api-Key`; without the
/// setting the routes answer 404, with a wrong or missing key 401.
extension API {
    static let apiKeyHeader = HTTPField.Name("X-Chat-Api-Key")!

    func addServerRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/api/server/publish") { request, context in
            try await failures { try authorizeServer(request); return try await serverPublish(request, context) }
        }
        router.post("/api/server/disconnect") { request, context in
            try await failures { try authorizeServer(request); return try await serverDisconnect(request, context) }
        }
        router.get("/api/server/presence") { request, _ in
            try await failures { try authorizeServer(request); return try await serverPresence(request) }
        }
        router.get("/api/server/rooms/:room/messages") { request, context in
            try await failures {
                try authorizeServer(request)
                return try await namedHistory(request, room: context.parameters.get("room") ?? "")
            }
        }
    }

    /// 404 without `CHAT_SERVER_API_KEY`; 401 unless the request carries it (compared in constant time).
    func authorizeServer(_ request: Request) throws {
        guard let key = configuration.serverAPIKey else { throw APIError(.notFound, "not found") }
        guard let given = request.headers[Self.apiKeyHeader], Self.constantTimeEqual(Array(given.utf8), Array(key.utf8)) else {
            throw APIError(.unauthorized, "a valid X-Chat-Api-Key header is required")
        }
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// The group a server request names: `room` (a named room) or `room_id` (a consultation, which must exist).
    func serverGroup(room: String?, roomID: Int64?) async throws -> (group: String, consult: ConsultRoom?) {
        switch (room, roomID) {
        case (let name?, nil):
            do throws(ChatError) {
                return (ChatGroup.named(try RoomName(validating: name)).key, nil)
            } catch {
                throw APIError(.unprocessableContent, error.description)
            }
        case (nil, let id?):
            guard id > 0 else { throw APIError(.unprocessableContent, "'room_id' must be a positive integer") }
            guard case .success(let found) = await backend.consultRoom(id: id) else {
                throw APIError(.serviceUnavailable, "room service unavailable, try again")
            }
            guard let consult = found else { throw APIError(.notFound, "room \(id) does not exist") }
            return (consult.group, consult)
        default:
            throw APIError(.unprocessableContent, "give exactly one of 'room' and 'room_id'")
        }
    }

    func serverPublish(_ request: Request, _ context: some RequestContext) async throws -> PublishedBody {
        let body = try await self.body(ServerPublishRequest.self, request, context)
        let text: String
        do throws(ChatError) {
            text = try ClientFrame.chatMessage(in: ["message": body.message])
        } catch {
            throw APIError(.unprocessableContent, error.description)
        }
        if let sender = body.sender, sender.isEmpty || sender.count > 128 || MessageText.firstRefusedScalar(in: sender) != nil {
            throw APIError(.unprocessableContent, "'sender' must be 1 to 128 characters, none of them a control character")
        }
        if let key = body.idempotencyKey {
            do throws(ChatError) {
                _ = try ClientFrame.clientID(in: ["client_id": key])
            } catch {
                throw APIError(.unprocessableContent, "'idempotency_key' must be 1 to 64 characters, none of them a control character")
            }
        }
        let (group, _) = try await serverGroup(room: body.room, roomID: body.roomID)
        let ack = try await backend.publishAsServer(group: group, sender: body.sender, text: text, idempotencyKey: body.idempotencyKey)
        return PublishedBody(id: ack.id, seq: ack.seq)
    }

    func serverDisconnect(_ request: Request, _ context: some RequestContext) async throws -> EditedResponse<AcceptedBody> {
        let body = try await self.body(ServerDisconnectRequest.self, request, context)
        let email = try self.email(body.user, "user")
        let reason = body.reason ?? "disconnected by the server"
        guard !reason.isEmpty, reason.count <= 200, MessageText.firstRefusedScalar(in: reason) == nil else {
            throw APIError(.unprocessableContent, "'reason' must be 1 to 200 characters, none of them a control character")
        }
        backend.disconnectEverywhere(user: email.value, reason: reason)
        return EditedResponse(status: .accepted, response: AcceptedBody(user: email.value, reason: reason))
    }

    func serverPresence(_ request: Request) async throws -> ServerPresenceBody {
        let query = request.uri.queryParameters
        var roomID: Int64? = nil
        if let raw = query.get("room_id") {
            guard let id = Int64(raw) else { throw APIError(.badRequest, "'room_id' must be a positive integer") }
            roomID = id
        }
        let (group, consult) = try await serverGroup(room: query.get("room").map { String($0) }, roomID: roomID)
        let presence = try await backend.roomPresence(group)
        return ServerPresenceBody(room: consult == nil ? ChatGroup.displayName(ofKey: group) : nil, roomID: consult?.id,
                                  count: presence.count, online: consult == nil ? nil : presence.online.sorted())
    }
}

/// `POST /api/server/publish`'s body.
struct ServerPublishRequest: Decodable {
    var room: String?
    var roomID: Int64?
    var message: String
    var sender: String?
    var idempotencyKey: String?

    enum CodingKeys: String, CodingKey {
        case room, roomID = "room_id", message, sender, idempotencyKey = "idempotency_key"
    }
}

/// `POST /api/server/publish`'s answer: the stored message (the original one for a repeated idempotency key).
struct PublishedBody: ResponseEncodable {
    var id: String
    var seq: Int64
}

/// `POST /api/server/disconnect`'s body.
struct ServerDisconnectRequest: Decodable {
    var user: String
    var reason: String?
}

/// `POST /api/server/disconnect`'s answer (202: every gateway is told; their sockets close within 2 s).
struct AcceptedBody: ResponseEncodable {
    var user: String
    var reason: String
}

/// `GET /api/server/presence`'s answer.
struct ServerPresenceBody: ResponseEncodable {
    var room: String?
    var roomID: Int64?
    var count: Int
    var online: [String]?

    enum CodingKeys: String, CodingKey {
        case room, roomID = "room_id", count, online
    }
}
