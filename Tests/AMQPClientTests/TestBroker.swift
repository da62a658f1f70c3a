import AMQPClient
import Foundation
import Logging
import NIOCore

/// The RabbitMQ node that `scripts/test` started for this run. Tests never skip: without it they fail.
enum TestBroker {
    static var url: String {
        guard let url = ProcessInfo.processInfo.environment["CHAT_TEST_AMQP_URL"] else {
            fatalError("CHAT_TEST_AMQP_URL is not set: run the tests through ./scripts/test, which starts RabbitMQ")
        }
        return url
    }

    static func configuration(_ name: String = "test") -> AMQPConfiguration {
        var configuration = try! AMQPConfiguration(url: url, connectionName: name)
        configuration.heartbeatSeconds = 5
        configuration.maxReconnectDelay = .milliseconds(500)
        return configuration
    }

    static func connect(_ name: String = "test") async -> AMQPConnection {
        var logger = Logger(label: "test.\(name)")
        logger.logLevel = ProcessInfo.processInfo.environment["CHAT_TEST_TRACE"] != nil ? .trace : .warning
        let connection = AMQPConnection(configuration: configuration(name), logger: logger)
        await connection.waitUntilConnected()
        return connection
    }

    /// Runs rabbitmqctl against the test node (e.g. to drop connections or restart the broker application).
    @discardableResult
    static func rabbitmqctl(_ arguments: String...) throws -> String {
        let environment = ProcessInfo.processInfo.environment
        guard let node = environment["CHAT_TEST_RABBIT_NODE"] else {
            fatalError("CHAT_TEST_RABBIT_NODE is not set: run the tests through ./scripts/test")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl")
        process.arguments = ["-n", node, "-q"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    static func uniqueName(_ prefix: String) -> String {
        "\(prefix).\(UUID().uuidString.prefix(8))"
    }
}

extension ByteBuffer {
    var string: String { String(buffer: self) }
}

/// Takes `count` deliveries or fails after `timeout`.
func take(_ count: Int, from consumer: AMQPConsumer, timeout: Duration = .seconds(10)) async throws -> [AMQPDelivery] {
    try await withThrowingTaskGroup(of: [AMQPDelivery].self) { group in
        group.addTask {
            var result: [AMQPDelivery] = []
            for await delivery in consumer {
                result.append(delivery)
                if result.count == count { break }
            }
            return result
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw AMQPError.timeout
        }
        let result = try await group.next()!
        group.cancelAll()
        return result
    }
}
