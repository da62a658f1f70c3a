import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
@testable import GatewayService
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import Presence
import Testing

/// The socket handler in a NIO pipeline (NIO's `NIOAsyncTestingChannel`, the thread-safe embedded channel:
/// the handler's opening task hops back to its loop), on an ``InMemoryGatewayBroker`` that answers as the
/// room and persistence services would: frames in, frames out, and what reached the broker.
@Suite struct ChatSocketHandlerTests {
    static let visitor = try! Email(validating: "visitor@example.com")
    static let room = ConsultRoom(id: 7, shopUserEmail: "shop@example.com", visitorUserEmail: visitor.value, createdAt: 0)

    static func respond(_ queue: String, _ body: ByteBuffer) async throws -> BrokerReply {
        if queue == ChatTopology.historyQueue { return BrokerReply(headers: [ChatTopology.countHeader: .int(0)], body: ByteBuffer()) }
        let reply: RoomReply = switch try JSONDecoder().decode(RoomRequest.self, from: Data(buffer: body)) {
        case .consultGet(let id): id == room.id ? .consultRoom(room: room, created: false) : .notFound
        default: .joined(roomID: nil, created: false)
        }
        return BrokerReply(headers: [:], body: ByteBuffer(bytes: try JSONEncoder().encode(reply)))
    }

    /// One socket in its pipeline, opened.
    struct Socket {
        let channel: NIOAsyncTestingChannel
        let broker: InMemoryGatewayBroker

        init(uri: String, mailboxCapacity: Int = 1024, maxFrameBytes: Int = 65536, token: (Authenticator) async throws -> String? = { _ in nil }) async throws {
            var configuration = GatewayConfiguration(maxFrameBytes: maxFrameBytes, mailboxCapacity: mailboxCapacity, allowAnonymous: true)
            configuration.gatewayID = "g1"
            broker = InMemoryGatewayBroker(respond: ChatSocketHandlerTests.respond)
            let backend = GatewayBackend(configuration: configuration, broker: broker,
                                         presence: MembershipPresence(gatewayID: "g1", hub: broker.hub, expiry: .seconds(15)),
                                         logger: Logger(label: "test"))
            let authenticator = await Authenticator(secret: configuration.jwtSecret)
            let services = SocketServices(backend: backend, authenticator: authenticator, limiter: ConnectionLimiter(maximum: 100),
                                          rates: nil, logger: Logger(label: "test"))
            var headers = HTTPHeaders()
            if let token = try await token(authenticator) { headers.add(name: "authorization", value: "Bearer " + token) }
            let endpoint = SocketEndpoint(uri: uri)!
            let channel = NIOAsyncTestingChannel()
            self.channel = channel
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: headers)
            try await channel.testingEventLoop.executeInContext {
                try channel.pipeline.syncOperations.addHandler(ChatSocketHandler(services: services, endpoint: endpoint, head: head))
            }
            // Open once the presence frame (the last of the opening) is out.
            let first = try await next()
            #expect(first.contains(#""type":"presence""#))
        }

        /// The next frame the socket wrote (text, or a close frame as `close <code> <reason>`).
        func next() async throws -> String {
            for _ in 0..<500 {
                await channel.testingEventLoop.run()
                if let frame = try await channel.readOutbound(as: WebSocketFrame.self) {
                    var data = frame.unmaskedData
                    if frame.opcode == .connectionClose {
                        let code = data.readInteger(as: UInt16.self).map(String.init) ?? "-"
                        return "close \(code) \(data.readString(length: data.readableBytes) ?? "")"
                    }
                    return (frame.opcode == .pong ? "pong " : "") + String(buffer: data)
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            Issue.record("no frame written")
            return ""
        }

        func send(_ text: String) async throws {
            try await channel.writeInbound(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)))
        }

        func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer = ByteBuffer()) async throws {
            try await channel.writeInbound(WebSocketFrame(fin: true, opcode: opcode, data: data))
        }

        var isClosed: Bool {
            get async { (try? await channel.closeFuture.get()) != nil || !channel.isActive }
        }
    }

    @Test func theCloseHandshakeEchoesTheClientsCodeAndClosesTheChannel() async throws {
        let socket = try await Socket(uri: "/ws/chat/lobby/")
        try await socket.send(.ping, ByteBuffer(string: "p"))
        #expect(try await socket.next() == "pong p")
        var code = ByteBuffer()
        code.write(webSocketErrorCode: .normalClosure)
        try await socket.send(.connectionClose, code)
        #expect(try await socket.next() == "close 1000 ")
        await socket.channel.testingEventLoop.run()
        #expect(await socket.isClosed)
    }

    @Test func aDrainingSocketClosesOnceItsMessageIsAcked() async throws {
        let socket = try await Socket(uri: "/ws/chat/lobby/")
        try await socket.send(#"{"message":"hi","client_id":"c1"}"#)
        await socket.channel.testingEventLoop.run()
        #expect(socket.broker.submitted.map(\.text) == ["hi"])
        socket.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try await socket.send(#"{"message":"late","client_id":"c2"}"#)
        #expect(try await socket.next().contains("server shutting down"))
        #expect(socket.broker.submitted.count == 1)
        let member = try #require(socket.broker.submitted.first?.socket)
        socket.broker.hub.acknowledge([MessageAck(socket: member, clientID: "c1", id: "i1", seq: 1)])
        #expect(try await socket.next().contains(#""type":"ack","client_id":"c1""#))
        #expect(try await socket.next() == "close 1001 server shutting down")
    }

    @Test func aClientThatStopsReadingIsClosed4008() async throws {
        let socket = try await Socket(uri: "/ws/chat/lobby/", mailboxCapacity: 3)
        socket.channel.isWritable = false
        for seq in 1...5 {
            socket.broker.hub.dispatch(ChannelMessage(body: ByteBuffer(string: "m\(seq)"), seq: Int64(seq)), to: "named:lobby")
        }
        var frames: [String] = []
        for _ in 0..<5 { frames.append(try await socket.next()) }
        #expect(frames == ["m1", "m2", "m3", "m4", "close 4008 too slow"])
    }

    @Test func anOversizeFrameGetsAnErrorAndTheSocketGoesOn() async throws {
        let socket = try await Socket(uri: "/ws/chat/lobby/", maxFrameBytes: 32)
        try await socket.send(#"{"message":"\#(String(repeating: "x", count: 40))"}"#)
        #expect(try await socket.next() == #"{"error":"frame is larger than the limit of 32 bytes"}"#)
        try await socket.send(#"{"message":"ok"}"#)
        await socket.channel.testingEventLoop.run()
        #expect(socket.broker.submitted.map(\.text) == ["ok"])
        // One NIO's aggregator refused: an error frame, then 1009.
        socket.channel.pipeline.fireErrorCaught(NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge)
        #expect(try await socket.next().contains("larger than the limit"))
        #expect(try await socket.next() == "close 1009 message too large")
    }

    @Test func aConsultationSocketSendsOnlyForItsOwnPair() async throws {
        let socket = try await Socket(uri: "/ws/room/7/messages") { try await $0.mint(email: Self.visitor, role: .visitor) }
        try await socket.send(#"{"message":"hi","shop_user_email":"other@example.com","visitor_user_email":"visitor@example.com"}"#)
        #expect(try await socket.next() == #"{"error":"shop_user_email and visitor_user_email do not match room 7"}"#)
        try await socket.send(#"{"message":"hi","shop_user_email":"shop@example.com","visitor_user_email":"visitor@example.com"}"#)
        await socket.channel.testingEventLoop.run()
        #expect(socket.broker.submitted.map(\.sender) == ["visitor@example.com"])
    }
}
