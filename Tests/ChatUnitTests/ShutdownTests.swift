import AMQPClient
import ChannelLayer
import ChatProtocol
import ChatWire
import Foundation
@testable import GatewayService
import Logging
import NIOCore
@testable import PersistenceService
@testable import RoomService
import ServiceKit
import ServiceLifecycle
import ServiceLifecycleTestKit
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Each service, built by its own `buildApplication` against the test run's RabbitMQ, shuts down gracefully
/// (swift-service-lifecycle's ``testGracefulShutdown(operation:)``): `run()` returns without an error, says
/// goodbye on the broker before its connection closes, and stops serving.
@Suite(.serialized) struct ShutdownTests {
    static var amqpURL: String {
        guard let url = ProcessInfo.processInfo.environment["CHAT_TEST_AMQP_URL"] else {
            fatalError("CHAT_TEST_AMQP_URL is not set: run the tests through ./scripts/test, which starts RabbitMQ")
        }
        return url
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// The status of `GET path` on 127.0.0.1:`port`, or nil when nothing answers.
    static func status(port: Int, path: String) -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, 0) == request.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 12 else { return nil }
        return Int(String(decoding: buffer[9..<12], as: UTF8.self))
    }

    static func waitUntilReady(port: Int) async throws {
        for _ in 0..<200 {
            if status(port: port, path: "/health/ready") == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("not ready on port \(port) within 10 s")
    }

    /// A queue of the test's own, bound to `exchange`, to see what a service says on it.
    static func listen(on exchange: String, _ connection: AMQPConnection) async throws -> String {
        let queue = "test.shutdown.\(UUID().uuidString.prefix(8))"
        try await connection.declareQueue(queue, durable: false, exclusive: true, autoDelete: true)
        try await connection.bindQueue(queue, exchange: exchange, routingKey: "")
        return queue
    }

    /// What reached `queue` (read for a second).
    static func bodies(of queue: String, _ connection: AMQPConnection) async throws -> [ByteBuffer] {
        let received = Mutex<[ByteBuffer]>([])
        let consumer = connection.consume(queue: queue, prefetch: 1_000, autoAck: true) { batch in
            received.withLock { $0 += batch.map(\.body) }
        }
        try await Task.sleep(for: .seconds(1))
        consumer.cancel()
        return received.withLock { $0 }
    }

    static let logger: Logger = {
        var logger = Logger(label: "test.shutdown")
        logger.logLevel = .warning
        return logger
    }()

    /// Runs `application` until its health port says ready, shuts it down gracefully, and checks that it
    /// returned without an error and stopped serving.
    static func runAndShutDown(_ application: ServiceApplication, port: Int) async throws {
        try await testGracefulShutdown { shutdown in
            async let running: Void = application.run()
            try await waitUntilReady(port: port)
            shutdown.triggerGracefulShutdown()
            try await running
        }
        #expect(status(port: port, path: "/health") == nil, "the port is closed after shutdown")
    }

    /// A connection of the test's own, to look at the broker.
    static func observer() async throws -> AMQPConnection {
        let observer = AMQPConnection(configuration: try AMQPConfiguration(url: amqpURL, connectionName: "test-observer"), logger: logger)
        await observer.waitUntilConnected()
        return observer
    }

    /// A fresh id, a free port, and a directory for an SQLite database (removed after `body`).
    static func withInstance(_ body: (_ id: String, _ port: Int, _ directory: String) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chat-shutdown-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await body("shutdown-\(UUID().uuidString.prefix(6))", freePort(), directory.path)
    }

    @Test func theGatewayStopsServingAndTellsTheOthersItIsGone() async throws {
        try await Self.withInstance { id, port, _ in
            let configuration = try GatewayConfiguration.fromEnvironment(EnvironmentReader([
                "CHAT_AMQP_URL": Self.amqpURL, "CHAT_GATEWAY_PORT": "\(port)", "CHAT_GATEWAY_ID": id, "CHAT_ALLOW_ANONYMOUS": "1",
            ]))
            let observer = try await Self.observer()
            try await ChatTopology.declare(.roomsInstance(id: "observer-\(id)"), on: observer)
            let queue = try await Self.listen(on: ChatTopology.membershipExchange, observer)
            try await Self.runAndShutDown(try await buildApplication(configuration, logger: Self.logger), port: port)
            let events = try await Self.bodies(of: queue, observer).compactMap { try? MembershipWire.decode($0) }.filter { $0.gateway == id }
            #expect(events.contains { $0.kind == .heartbeat })
            #expect(events.last?.kind == .stop, "its last word on the broker is that it stopped")
            await observer.close()
        }
    }

    @Test func aPersistenceWorkerHandsItsPartitionsBackAsItLeaves() async throws {
        try await Self.withInstance { id, port, directory in
            let configuration = try PersistenceConfiguration.fromEnvironment(EnvironmentReader([
                "CHAT_AMQP_URL": Self.amqpURL, "CHAT_HEALTH_PORT": "\(port)", "CHAT_PERSIST_WORKER_ID": id,
                "CHAT_DATABASE_URL": "sqlite:\(directory)/messages.sqlite",
            ]))
            let observer = try await Self.observer()
            try await ChatTopology.declare(.persistenceWorker(id: "observer-\(id)"), on: observer)
            let queue = try await Self.listen(on: ChatTopology.workersExchange, observer)
            try await Self.runAndShutDown(try await buildApplication(configuration, logger: Self.logger), port: port)
            let said = try await Self.bodies(of: queue, observer).map { String(buffer: $0) }.filter { $0.hasSuffix(id) }
            #expect(said.first == id, "it announced itself")
            #expect(said.last == "-" + id, "and said it was leaving, so the others take its partitions at once")
            await observer.close()
        }
    }

    @Test func aRoomServiceInstanceStopsServingAndReturns() async throws {
        try await Self.withInstance { id, port, directory in
            let configuration = try RoomConfiguration.fromEnvironment(EnvironmentReader([
                "CHAT_AMQP_URL": Self.amqpURL, "CHAT_HEALTH_PORT": "\(port)", "CHAT_ROOMS_INSTANCE_ID": id,
                "CHAT_DATABASE_URL": "sqlite:\(directory)/rooms.sqlite",
            ]))
            try await Self.runAndShutDown(try await buildApplication(configuration, logger: Self.logger), port: port)
            // Its own membership queue went with its connection (exclusive): nothing is left behind on the broker.
            let observer = try await Self.observer()
            await #expect(throws: AMQPError.self) { _ = try await observer.messageCount(queue: ChatTopology.roomsInstanceQueue(id)) }
            await observer.close()
        }
    }
}
