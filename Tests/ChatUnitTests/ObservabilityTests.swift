import CoreMetrics
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import GatewayService
import Hummingbird
import Logging
@testable import ServiceKit
import Testing

/// Log lines, request ids and the settings that choose them; the metrics registry's exposition.
@Suite struct ObservabilityTests {
    @Test func aJSONLogLineIsOneObjectWithItsMetadata() throws {
        let line = ServiceLogHandler.jsonLine(timestamp: Date(timeIntervalSince1970: 0), level: .warning, label: "chat.gateway",
                                       message: "a \"quoted\"\nmessage", metadata: ["chat.room": "lobby", "amqp.queue": "chat.gateway.g1"])
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["level"] == "warning" && object["label"] == "chat.gateway" && object["msg"] == "a \"quoted\"\nmessage")
        #expect(object["chat.room"] == "lobby" && object["amqp.queue"] == "chat.gateway.g1")
        #expect(object["ts"]?.hasPrefix("1970-01-01T00:00:00") == true)
    }

    /// Lines from many threads arrive whole; with the output stuck, callers go on and lines are dropped and
    /// counted, and the count is written once the output moves again.
    @Test func logLinesAreWrittenByTheirOwnThreadAndDroppedWhenTheOutputIsStuck() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        func readAll() -> String {
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = read(fds[0], &buffer, buffer.count)
                if n <= 0 { break }
                bytes += buffer[..<n]
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        let writer = LogWriter(fileDescriptor: fds[1], capacity: 16_384)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for i in 0..<50 { writer.write("thread \(thread) line \(i)\n") }
        }
        writer.flush()
        let lines = readAll().split(separator: "\n")
        #expect(lines.count == 200)
        #expect(Set(lines).count == 200 && lines.allSatisfy { $0.hasPrefix("thread ") })

        // Nobody reads: the pipe (64 KiB) fills, the writer thread blocks in write(2), the buffer fills, and
        // the caller goes on. Every line is then either written or counted in a "dropped" line.
        let line = String(repeating: "x", count: 1_023) + "\n"
        for _ in 0..<200 { writer.write(line) }
        var written = 0, dropped = 0
        for _ in 0..<10_000 where written + dropped < 200 {
            for line in readAll().split(separator: "\n") {
                if line.hasPrefix("xxx") { written += 1 }
                if line.contains("log lines dropped"), let count = line.split(separator: "\"").dropLast().last.flatMap({ Int($0) }) {
                    dropped += count
                }
            }
            usleep(1_000)
        }
        #expect(written + dropped == 200)
        #expect(dropped > 0 && written > 0)
    }

    @Test func theLogFormatIsRefusedWhenMalformed() throws {
        #expect(try EnvironmentReader(["CHAT_LOG_FORMAT": "JSON"]).choice("CHAT_LOG_FORMAT", default: LogFormat.text) == .json)
        #expect(try EnvironmentReader([:]).choice("CHAT_LOG_FORMAT", default: LogFormat.text) == .text)
        #expect(throws: ConfigurationError.self) { try EnvironmentReader(["CHAT_LOG_FORMAT": "xml"]).choice("CHAT_LOG_FORMAT", default: LogFormat.text) }
        #expect(throws: ConfigurationError.self) { try EnvironmentReader(["CHAT_LOG_LEVEL": "loud"]).choice("CHAT_LOG_LEVEL", default: Logger.Level.info) }
    }

    @Test func aMalformedOrOutOfRangeGatewaySettingIsRefusedByName() throws {
        for (key, value) in [("CHAT_HISTORY_LIMIT", "fifty"), ("CHAT_GATEWAY_PORT", "70000"), ("CHAT_MAX_CONNECTIONS", "-1"),
                             ("CHAT_REQUEST_TIMEOUT_MS", "5s"), ("CHAT_GATEWAY_THREADS", "0"), ("CHAT_DEV_TOKENS", "maybe"),
                             ("CHAT_AMQP_LINGER_US", "5001"), ("CHAT_AMQP_LINGER_US", "0.5ms")] {
            #expect(throws: ConfigurationError.self, "\(key)=\(value)") {
                try GatewayConfiguration.fromEnvironment(EnvironmentReader([key: value]))
            }
        }
        let defaults = try GatewayConfiguration.fromEnvironment(EnvironmentReader([:]))
        #expect(defaults.historyLimit == 50 && defaults.maxConnections == nil && defaults.port == 8000)
        #expect(defaults.amqpLinger == .microseconds(500))
        #expect(try GatewayConfiguration.fromEnvironment(EnvironmentReader(["CHAT_AMQP_LINGER_US": "0"])).amqpLinger == .zero)
    }

    @Test func onlyPlainShortRequestIDsFromTheProxyAreKept() {
        typealias Middleware = RequestLogMiddleware<BasicRequestContext>
        #expect(Middleware.usableID("3f2a9c0d1e") == "3f2a9c0d1e")
        #expect(Middleware.usableID("a-b_C9") == "a-b_C9")
        #expect(Middleware.usableID("") == nil)
        #expect(Middleware.usableID(String(repeating: "a", count: 65)) == nil)
        #expect(Middleware.usableID("id\nforged=1") == nil)
        #expect(Middleware.usableID(nil) == nil)
    }

    @Test func theRegistryExposesWhatIsCounted() {
        Observability.bootstrap()
        let counter = Counter(label: "chat_test_observability_total")
        counter.increment(by: 3)
        let text = String(buffer: Observability.exposition())
        #expect(text.contains("chat_test_observability_total 3"))
    }
}
