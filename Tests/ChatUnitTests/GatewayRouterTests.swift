import AMQPClient
import ChatProtocol
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Presence
import Testing
@testable import GatewayService
import ServiceKit

/// The gateway's REST routes through Hummingbird's test client, on an ``InMemoryGatewayBroker`` whose requests
/// the test answers as the room and persistence services would. End-to-end, the same API runs on RabbitMQ in
/// Tests/integration.
@Suite struct GatewayRouterTests {
    static let shop = try! Email(validating: "shop@example.com")
    static let visitor = try! Email(validating: "visitor@example.com")
    static let room = ConsultRoom(id: 7, shopUserEmail: shop.value, visitorUserEmail: visitor.value, createdAt: 1_700_000_000_000)

    /// What the in-memory room and persistence services answer.
    static func respond(_ queue: String, _ body: ByteBuffer) async throws -> BrokerReply {
        let data = Data(buffer: body)
        if queue == ChatTopology.historyQueue {
            guard case .messages(let group, _, _) = try JSONDecoder().decode(HistoryRequest.self, from: data), group == room.group else {
                return BrokerReply(headers: [ChatTopology.countHeader: .int(0)], body: ByteBuffer())
            }
            let frame = StoredChatMessage(id: "m1", group: group, seq: 1, sender: visitor.value, text: "hello", createdAt: 1_700_000_000_500).clientFrame
            return BrokerReply(headers: [ChatTopology.countHeader: .int(1), ChatTopology.seqHeader: .int(1)], body: ByteBuffer(string: frame))
        }
        let reply: RoomReply = switch try JSONDecoder().decode(RoomRequest.self, from: data) {
        case .consultCreate(let shop, let visitor) where shop == Self.shop && visitor == Self.visitor: .consultRoom(room: room, created: true)
        case .consultCreate: .refused(reason: "not this pair")
        case .consultGet(let id): id == room.id ? .consultRoom(room: room, created: false) : .notFound
        case .consultList: .consultRooms([room])
        default: .failed(reason: "unexpected")
        }
        return BrokerReply(headers: [:], body: ByteBuffer(bytes: try JSONEncoder().encode(reply)))
    }

    /// A router with the gateway's routes on an in-memory broker, and a token for `email` in `role`.
    func withRouter(respond: @escaping InMemoryGatewayBroker.Responder = Self.respond,
                    _ body: @escaping @Sendable (any TestClientProtocol, Authenticator) async throws -> Void) async throws {
        let configuration = GatewayConfiguration(maxBodyBytes: 1024)
        let broker = InMemoryGatewayBroker(respond: respond)
        let backend = GatewayBackend(configuration: configuration, broker: broker,
                                     presence: MembershipPresence(gatewayID: "g1", hub: broker.hub, expiry: .seconds(15)),
                                     logger: Logger(label: "test"))
        let authenticator = await Authenticator(secret: configuration.jwtSecret)
        let router = Router()
        addRoutes(to: router, configuration: configuration, backend: backend, authenticator: authenticator,
                  origins: OriginPolicy(allowed: configuration.allowedOrigins))
        try await Application(router: router).test(.router) { client in try await body(client, authenticator) }
    }

    func bearer(_ authenticator: Authenticator, _ email: Email, _ role: UserRole) async throws -> HTTPFields {
        [.authorization: "Bearer " + (try await authenticator.mint(email: email, role: role)), .contentType: "application/json"]
    }

    static let pair = #"{"shop_user_email":"shop@example.com","visitor_user_email":"visitor@example.com"}"#

    @Test func aParticipantCreatesARoomAndReadsItsMessages() async throws {
        try await withRouter { client, auth in
            let headers = try await bearer(auth, Self.visitor, .visitor)
            try await client.execute(uri: "/api/rooms", method: .post, headers: headers, body: ByteBuffer(string: Self.pair)) { response in
                #expect(response.status == .created)
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                #expect(object?["id"] as? Int == 7 && object?["visitor_user_email"] as? String == "visitor@example.com")
            }
            try await client.execute(uri: "/api/rooms/7/messages?limit=10", method: .get, headers: headers) { response in
                #expect(response.status == .ok)
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                let messages = object?["messages"] as? [[String: Any]]
                #expect(messages?.map { $0["message"] as? String } == ["hello"])
                #expect(object?["next_before"] is NSNull)
            }
        }
    }

    @Test func badRequestsGetTheDocumentedStatus() async throws {
        try await withRouter { client, auth in
            let visitor = try await bearer(auth, Self.visitor, .visitor)
            let stranger = try await bearer(auth, try Email(validating: "other@example.com"), .visitor)
            func status(_ uri: String, _ method: HTTPRequest.Method = .get, _ headers: HTTPFields, _ body: String? = nil) async throws -> HTTPResponse.Status {
                try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { $0.status }
            }
            #expect(try await status("/api/rooms", .post, [:], Self.pair) == .unauthorized)
            #expect(try await status("/api/rooms", .post, visitor, "{") == .badRequest)
            #expect(try await status("/api/rooms", .post, visitor, String(repeating: "x", count: 2000)) == .contentTooLarge)
            #expect(try await status("/api/rooms", .post, visitor, #"{"shop_user_email":"shop@example.com"}"#) == .unprocessableContent)
            #expect(try await status("/api/rooms", .post, stranger, Self.pair) == .forbidden)
            #expect(try await status("/api/rooms/0/messages", .get, visitor) == .badRequest)
            #expect(try await status("/api/rooms/7/messages?limit=x", .get, visitor) == .badRequest)
            #expect(try await status("/api/rooms/8/messages", .get, visitor) == .notFound)
            #expect(try await status("/api/rooms/7/messages", .get, stranger) == .forbidden)
            #expect(try await status("/api/dev/token", .post, [:], #"{"email":"a@b.io","role":"shop"}"#) == .notFound)  // dev tokens off
            #expect(try await status("/ws/chat/lobby/", .get, [.origin: "http://127.0.0.1:8000"]) == .upgradeRequired)
            #expect(try await status("/ws/chat/lobby/", .get, [:]) == .forbidden)  // no Origin: refused, as Django's validator does
            try await client.execute(uri: "/api/rooms", method: .delete, headers: visitor) { response in
                #expect(response.status == .methodNotAllowed && response.headers[.allow] == "GET, POST")
            }
            #expect(try await status("/api/rooms/7/messages", .trace, [:]) == .methodNotAllowed)
            #expect(try await status("/api/nothing", .get, [:]) == .notFound)
            #expect(try await status("/ws/chat/lobby/", .get, [.origin: "https://evil.example"]) == .forbidden)
        }
    }

    @Test func aRoomServiceThatDoesNotAnswerIsA503() async throws {
        try await withRouter(respond: { _, _ in throw ChatError.unavailable("timeout") }) { client, auth in
            let headers = try await bearer(auth, Self.visitor, .visitor)
            try await client.execute(uri: "/api/rooms", method: .get, headers: headers) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/api/rooms/7/messages", method: .get, headers: headers) { #expect($0.status == .serviceUnavailable) }
        }
    }

    /// Errors are told apart by kind: the broker's is a 503 as a silent service's is; one nobody expected is a
    /// bug here, a 500 (it used to be a 503 too, which hid it).
    @Test func aBrokerFailureIsA503AndAnUnexpectedErrorA500() async throws {
        try await withRouter(respond: { _, _ in throw AMQPError.timeout }) { client, auth in
            let headers = try await bearer(auth, Self.visitor, .visitor)
            try await client.execute(uri: "/api/rooms", method: .get, headers: headers) { #expect($0.status == .serviceUnavailable) }
        }
        struct Unexpected: Error {}
        try await withRouter(respond: { _, _ in throw Unexpected() }) { client, auth in
            let headers = try await bearer(auth, Self.visitor, .visitor)
            try await client.execute(uri: "/api/rooms", method: .get, headers: headers) { response in
                #expect(response.status == .internalServerError)
                #expect(String(buffer: response.body).contains("internal error"))
            }
        }
    }

    @Test func anErrorAnswerCarriesTheRequestIDToo() async throws {
        let configuration = GatewayConfiguration()
        let broker = InMemoryGatewayBroker(respond: Self.respond)
        let backend = GatewayBackend(configuration: configuration, broker: broker,
                                     presence: MembershipPresence(gatewayID: "g1", hub: broker.hub, expiry: .seconds(15)),
                                     logger: Logger(label: "test"))
        let router = Router()
        router.add(middleware: RequestLogMiddleware())
        addRoutes(to: router, configuration: configuration, backend: backend, authenticator: await Authenticator(secret: configuration.jwtSecret),
                  origins: OriginPolicy(allowed: configuration.allowedOrigins))
        try await Application(router: router).test(.router) { client in
            try await client.execute(uri: "/api/rooms", method: .get, headers: [HTTPField.Name("X-Request-ID")!: "req-1"]) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[HTTPField.Name("X-Request-ID")!] == "req-1")
                #expect(String(buffer: response.body).contains(#""status":401"#))
            }
        }
    }

    /// Every route under /api and /health is in docs/openapi.yaml with its method, and every documented one is
    /// served; the rest (pages, WebSocket paths) are docs/protocol.md's.
    @Test func theRoutesAreTheOpenAPIDocument() async throws {
        let configuration = GatewayConfiguration()
        // Port 1, where nothing listens: the health routes only read whether it is connected.
        let connection = AMQPConnection(configuration: try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F", connectionName: "routes"),
                                        logger: .quiet)
        defer { Task { await connection.close() } }
        let broker = InMemoryGatewayBroker(respond: Self.respond)
        let backend = GatewayBackend(configuration: configuration, broker: broker,
                                     presence: MembershipPresence(gatewayID: "g1", hub: broker.hub, expiry: .seconds(15)),
                                     logger: Logger(label: "test"))
        let router = Router()
        HealthRoutes.add(to: router, service: "gateway", connection: connection)
        addRoutes(to: router, configuration: configuration, backend: backend, authenticator: await Authenticator(secret: configuration.jwtSecret),
                  origins: OriginPolicy(allowed: []))
        let served = Set(router.routes.map { "\($0.method.rawValue.lowercased()) \($0.path)" })
        let documented = Self.documentedOperations()
        let api = served.filter { $0.split(separator: " ")[1].hasPrefix("/api") || $0.split(separator: " ")[1].hasPrefix("/health") }
        #expect(!documented.isEmpty)
        #expect(api == documented, "served \(api.subtracting(documented).sorted()), documented only \(documented.subtracting(api).sorted())")
    }

    /// `get /api/rooms/{id}/messages`, … from docs/openapi.yaml's `paths` (two-space paths, four-space methods).
    static func documentedOperations() -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = (try? String(contentsOf: root.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)) ?? ""
        var operations = Set<String>(), path: String?, inPaths = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") && !line.isEmpty { inPaths = line.hasPrefix("paths:") }
            guard inPaths else { continue }
            if line.hasPrefix("  /") { path = String(line.dropFirst(2).dropLast()) }
            for method in ["get", "post", "put", "patch", "delete"] where line == "    \(method):" {
                if let path { operations.insert("\(method) \(path)") }
            }
        }
        return operations
    }
}
