import ChatProtocol
import Foundation
import Hummingbird
import NIOCore

/// The REST API of the consultation chat (docs/openapi.yaml). The gateway reaches the data only over AMQP.
/// Every error is `{"error": "<text>", "status": <code>}`.
struct API: Sendable {
    let backend: GatewayBackend
    let authenticator: Authenticator
    let configuration: GatewayConfiguration

    static let maxPageSize = 200
    static let defaultPageSize = 50

    func add<Context: RequestContext>(to router: Router<Context>) {
        router.post("/api/dev/token") { request, context in await handle { try await devToken(request, context) } }
        router.post("/api/rooms") { request, context in await handle { try await createRoom(request, context) } }
        router.get("/api/rooms") { request, _ in await handle { try await listRooms(request) } }
        router.get("/api/rooms/:id/messages") { request, context in
            await handle { try await messages(request, id: context.parameters.get("id") ?? "") }
        }
    }

    struct Failure: Error {
        let status: HTTPResponse.Status
        let message: String
        init(_ status: HTTPResponse.Status, _ message: String) {
            self.status = status
            self.message = message
        }
    }

    private func handle(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let failure as Failure {
            return Self.error(failure.status, failure.message)
        } catch let error as AuthError {
            return Self.error(.unauthorized, error.description)
        } catch {
            backend.logger.warning("API request failed", metadata: ["error": "\(error)"])
            return Self.error(.serviceUnavailable, "a backing service did not answer, try again")
        }
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("error", message)
        writer.field("status", Int64(status.code))
        writer.endObject()
        return json(status, writer.output)
    }

    static func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The JSON object body of a request, within the size limit.
    private func jsonObject<Context: RequestContext>(_ request: Request, _ context: Context) async throws -> [String: Any] {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        } catch {
            throw Failure(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        }
        do throws(ChatError) {
            return try ClientFrame.parseObject(buffer.readableBytesView)
        } catch {
            throw Failure(.badRequest, error.description)
        }
    }

    private func email(_ object: [String: Any], _ key: String) throws -> Email {
        guard let raw = object[key] else { throw Failure(.unprocessableContent, "missing field '\(key)'") }
        guard let string = raw as? String, !(raw is NSNumber) else { throw Failure(.unprocessableContent, "'\(key)' must be a string") }
        do throws(ChatError) {
            return try Email(validating: string)
        } catch {
            throw Failure(.unprocessableContent, "'\(key)': \(error.description)")
        }
    }

    // MARK: Endpoints

    func devToken<Context: RequestContext>(_ request: Request, _ context: Context) async throws -> Response {
        guard configuration.devTokens else { throw Failure(.notFound, "not found") }
        let body = try await jsonObject(request, context)
        let email = try email(body, "email")
        guard let raw = body["role"] as? String, let role = UserRole(rawValue: raw) else {
            throw Failure(.unprocessableContent, "'role' must be 'shop' or 'visitor'")
        }
        let token = try await authenticator.mint(email: email, role: role)
        return Self.json(.ok, "{\"token\":\(JSONWriter.quoted(token)),\"email\":\(JSONWriter.quoted(email.value)),\"role\":\"\(role.rawValue)\"}")
    }

    func createRoom<Context: RequestContext>(_ request: Request, _ context: Context) async throws -> Response {
        let identity = try await authenticator.identify(request)
        let body = try await jsonObject(request, context)
        let shop = try email(body, "shop_user_email"), visitor = try email(body, "visitor_user_email")
        let mine = identity.role == .shop ? shop : visitor
        guard mine == identity.email else {
            throw Failure(.forbidden, "you can only open rooms you take part in as \(identity.role.rawValue) \(identity.email.value)")
        }
        let room: ConsultRoom, created: Bool
        do {
            (room, created) = try await backend.createConsultRoom(shop: shop, visitor: visitor)
        } catch ChatError.invalidFrame(let reason) {
            throw Failure(.unprocessableContent, reason)
        }
        return Self.json(created ? .created : .ok, Self.roomJSON(room, summary: nil))
    }

    func listRooms(_ request: Request) async throws -> Response {
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
        return Self.json(.ok, "{\"rooms\":[" + ordered.map { Self.roomJSON($0, summary: byGroup[$0.group]) }.joined(separator: ",") + "]}")
    }

    func messages(_ request: Request, id rawID: String) async throws -> Response {
        let identity = try await authenticator.identify(request)
        guard let id = Int64(rawID), id > 0 else { throw Failure(.badRequest, "room id must be a positive integer") }
        let query = request.uri.queryParameters
        var limit = Self.defaultPageSize
        if let raw = query.get("limit") {
            guard let value = Int(raw), value > 0 else { throw Failure(.badRequest, "'limit' must be a positive integer") }
            limit = min(value, Self.maxPageSize)
        }
        var before: Int64? = nil
        if let raw = query.get("before") {
            guard let value = Int64(raw), value > 0 else { throw Failure(.badRequest, "'before' must be a positive integer") }
            before = value
        }
        guard case .success(let found) = await backend.consultRoom(id: id) else {
            throw Failure(.serviceUnavailable, "room service unavailable, try again")
        }
        guard let room = found else { throw Failure(.notFound, "room \(id) does not exist") }
        guard room.hasParticipant(identity.email.value, role: identity.role) else {
            throw Failure(.forbidden, "you are not a participant of room \(id)")
        }
        let page = try await backend.history(group: room.group, limit: limit, beforeSeq: before)
        let frames = page.frames.map { String(buffer: $0) }
        let next = page.firstSeq.flatMap { $0 > 1 ? String($0) : nil } ?? "null"
        return Self.json(.ok, "{\"room_id\":\(id),\"messages\":[" + frames.joined(separator: ",") + "],\"next_before\":\(next)}")
    }

    static func roomJSON(_ room: ConsultRoom, summary: RoomSummary?) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("id", room.id)
        writer.field("shop_user_email", room.shopUserEmail)
        writer.field("visitor_user_email", room.visitorUserEmail)
        writer.field("created_at", Timestamp.iso8601(millis: room.createdAt))
        if let summary {
            writer.field("unread_count", Int64(summary.unread))
            if let last = summary.lastMessage {
                writer.rawElement("\"last_message\":" + last.clientFrame)
            } else {
                writer.rawElement("\"last_message\":null")
            }
        }
        writer.endObject()
        return writer.output
    }
}
