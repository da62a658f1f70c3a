import AMQPClient
import ChatProtocol
import Foundation
import Hummingbird
import NIOCore

/// The REST API of the consultation chat (docs/openapi.yaml). The gateway reaches the data only over AMQP.
/// Bodies are Codable types (APIBodies.swift); every error is an ``APIError``.
struct API: Sendable {
    let backend: GatewayBackend
    let authenticator: Authenticator
    let configuration: GatewayConfiguration

    static let maxPageSize = 200
    static let defaultPageSize = 50

    func add<Context: RequestContext>(to router: Router<Context>) {
        addServerRoutes(to: router)
        router.post("/api/dev/token") { request, context in try await failures { try await devToken(request, context) } }
        router.post("/api/rooms") { request, context in try await failures { try await createRoom(request, context) } }
        router.get("/api/rooms") { request, _ in try await failures { try await listRooms(request) } }
        router.get("/api/rooms/:id/messages") { request, context in
            try await failures { try await messages(request, id: context.parameters.get("id") ?? "") }
        }
        router.get("/api/chat/:room/messages") { request, context in
            try await failures { try await namedMessages(request, room: context.parameters.get("room") ?? "") }
        }
    }

    /// Turns what is not an ``APIError`` into one, by kind: a bad token is 401; the broker, or a service that
    /// did not answer or could not serve, 503; anything else is a bug here, 500, logged as an error.
    func failures<Result>(_ body: () async throws -> Result) async throws -> Result {
        do {
            return try await body()
        } catch let error as APIError {
            throw error
        } catch let error as AuthError {
            throw APIError(.unauthorized, error.description)
        } catch let error as ChatError {
            if case .unavailable = error { throw unavailable(error) }
            throw APIError(.unprocessableContent, error.description)
        } catch let error as AMQPError {
            throw unavailable(error)
        } catch let error as ServiceFailure {
            throw unavailable(error)
        } catch {
            backend.logger.error("API request failed unexpectedly", metadata: ["error": "\(error)"])
            throw APIError(.internalServerError, "internal error")
        }
    }

    private func unavailable(_ error: any Error) -> APIError {
        backend.logger.warning("API request failed", metadata: ["error": "\(error)"])
        return APIError(.serviceUnavailable, "a backing service did not answer, try again")
    }

    /// A JSON object body within the size limit, decoded: malformed JSON is 400, a missing or mistyped field 422.
    func body<Body: Decodable>(_ type: Body.Type, _ request: Request, _ context: some RequestContext) async throws -> Body {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        } catch {
            throw APIError(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        }
        do {
            return try JSONDecoder().decode(Body.self, from: Data(buffer: buffer))
        } catch DecodingError.keyNotFound(let key, let context) where context.codingPath.isEmpty {
            throw APIError(.unprocessableContent, "missing field '\(key.stringValue)'")
        } catch DecodingError.valueNotFound(_, let context) where context.codingPath.count == 1 {
            throw APIError(.unprocessableContent, "'\(context.codingPath[0].stringValue)' must be a string")
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == 1 {
            throw APIError(.unprocessableContent, "'\(context.codingPath[0].stringValue)' must be a string")
        } catch {
            throw APIError(.badRequest, "the request body must be a JSON object")
        }
    }

    func email(_ raw: String, _ key: String) throws -> Email {
        do throws(ChatError) {
            return try Email(validating: raw)
        } catch {
            throw APIError(.unprocessableContent, "'\(key)': \(error.description)")
        }
    }

    // MARK: Endpoints

    func devToken(_ request: Request, _ context: some RequestContext) async throws -> TokenBody {
        guard configuration.devTokens else { throw APIError(.notFound, "not found") }
        let body = try await body(TokenRequest.self, request, context)
        let email = try email(body.email, "email")
        guard let role = UserRole(rawValue: body.role) else {
            throw APIError(.unprocessableContent, "'role' must be 'shop' or 'visitor'")
        }
        return TokenBody(token: try await authenticator.mint(email: email, role: role), email: email.value, role: role)
    }

    func createRoom(_ request: Request, _ context: some RequestContext) async throws -> EditedResponse<RoomBody> {
        let identity = try await authenticator.identify(request)
        let body = try await body(CreateRoomRequest.self, request, context)
        let shop = try email(body.shopUserEmail, "shop_user_email"), visitor = try email(body.visitorUserEmail, "visitor_user_email")
        let mine = identity.role == .shop ? shop : visitor
        guard mine == identity.email else {
            throw APIError(.forbidden, "you can only open rooms you take part in as \(identity.role.rawValue) \(identity.email.value)")
        }
        let room: ConsultRoom, created: Bool
        do {
            (room, created) = try await backend.createConsultRoom(shop: shop, visitor: visitor)
        } catch ChatError.invalidFrame(let reason) {
            throw APIError(.unprocessableContent, reason)
        }
        return EditedResponse(status: created ? .created : .ok, response: RoomBody(room: room))
    }

    func listRooms(_ request: Request) async throws -> RoomListBody {
        let identity = try await authenticator.identify(request)
        let rooms = try await backend.consultRooms(of: identity)
        let summaries = try await backend.summaries(rooms.map {
            RoomSummaryQuery(group: $0.group, afterSeq: $0.readSeq ?? 0, reader: identity.email.value)
        })
        let byGroup = Dictionary(summaries.map { ($0.group, $0) }, uniquingKeysWith: { a, _ in a })
        // Newest activity first: the last message's time, or the room's creation for a room without messages.
        let ordered = rooms.sorted { a, b in
            let ta = byGroup[a.group]?.lastMessage?.createdAt ?? a.createdAt
            let tb = byGroup[b.group]?.lastMessage?.createdAt ?? b.createdAt
            return ta != tb ? ta > tb : a.id > b.id
        }
        return RoomListBody(rooms: ordered.map { room in
            RoomBody(room: room, summary: byGroup[room.group] ?? RoomSummary(group: room.group, lastSeq: 0, lastMessage: nil, unread: 0))
        })
    }

    /// `limit` (default 50, at most 200) and `before` of a page request.
    func page(_ request: Request) throws -> (limit: Int, before: Int64?) {
        let query = request.uri.queryParameters
        var limit = Self.defaultPageSize
        if let raw = query.get("limit") {
            guard let value = Int(raw), value > 0 else { throw APIError(.badRequest, "'limit' must be a positive integer") }
            limit = min(value, Self.maxPageSize)
        }
        var before: Int64? = nil
        if let raw = query.get("before") {
            guard let value = Int64(raw), value > 0 else { throw APIError(.badRequest, "'before' must be a positive integer") }
            before = value
        }
        return (limit, before)
    }

    /// A page of a stored room's messages, read back from the frames persistence encoded for the sockets.
    func messagePage(group: String, limit: Int, before: Int64?) async throws -> (messages: [MessageBody], nextBefore: Int64?) {
        let page = try await backend.history(group: group, limit: limit, beforeSeq: before)
        let decoder = JSONDecoder()
        let messages = try page.frames.map { try decoder.decode(MessageBody.self, from: Data(buffer: $0)) }
        return (messages, page.firstSeq.flatMap { $0 > 1 ? $0 : nil })
    }

    /// A named room's history, for a client that resumed with a reset: anyone who may open its socket may read it.
    func namedMessages(_ request: Request, room rawRoom: String) async throws -> NamedMessagePageBody {
        do throws(AuthError) {
            _ = try await authenticator.identify(request)
        } catch {
            if error != .missing || !configuration.allowAnonymous { throw APIError(.unauthorized, error.description) }
        }
        return try await namedHistory(request, room: rawRoom)
    }

    /// A page of a named room's history (the caller checked who may read it).
    func namedHistory(_ request: Request, room rawRoom: String) async throws -> NamedMessagePageBody {
        let room: RoomName
        do throws(ChatError) {
            room = try RoomName(pathSegment: rawRoom)
        } catch {
            throw APIError(.badRequest, error.description)
        }
        let (limit, before) = try page(request)
        let (messages, next) = try await messagePage(group: ChatGroup.named(room).key, limit: limit, before: before)
        return NamedMessagePageBody(room: room.value, messages: messages, nextBefore: next)
    }

    func messages(_ request: Request, id rawID: String) async throws -> MessagePageBody {
        let identity = try await authenticator.identify(request)
        guard let id = Int64(rawID), id > 0 else { throw APIError(.badRequest, "room id must be a positive integer") }
        let (limit, before) = try page(request)
        guard case .success(let found) = await backend.consultRoom(id: id) else {
            throw APIError(.serviceUnavailable, "room service unavailable, try again")
        }
        guard let room = found else { throw APIError(.notFound, "room \(id) does not exist") }
        guard room.hasParticipant(identity.email.value, role: identity.role) else {
            throw APIError(.forbidden, "you are not a participant of room \(id)")
        }
        let (messages, next) = try await messagePage(group: room.group, limit: limit, before: before)
        return MessagePageBody(roomID: id, messages: messages, nextBefore: next)
    }
}
