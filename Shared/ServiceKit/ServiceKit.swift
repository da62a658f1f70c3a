import AMQPClient
import ChatProtocol
import Foundation
import Hummingbird
import Logging
import Synchronization

/// Reads configuration from environment variables; every service reads its whole configuration in one
/// place (its `Configuration.fromEnvironment()`), with the defaults documented in README.md.
package struct EnvironmentReader: Sendable {
    let values: [String: String]

    package init(_ values: [String: String] = ProcessInfo.processInfo.environment) {
        self.values = values
    }

    /// The value of `key`, or `fallback` when it is not set.
    package func string(_ key: String, default fallback: String) -> String {
        guard let value = values[key], !value.isEmpty else { return fallback }
        return value
    }

    /// An integer that must lie in `range`: a value that is set but malformed or out of range is refused at
    /// start (``ConfigurationError``) rather than quietly replaced by the default.
    package func int(_ key: String, default fallback: Int, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let raw = values[key], !raw.isEmpty else { return fallback }
        guard let value = Int(raw), range.contains(value) else {
            throw ConfigurationError.invalid(key, raw, "an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// `CHAT_AMQP_LINGER_US`: how long a service's AMQP thread, woken from idle, waits before it sends and
    /// reads (``AMQPConfiguration/linger``), 0 to 5,000 µs.
    package func amqpLinger(default fallback: Int) throws(ConfigurationError) -> Duration {
        .microseconds(try int("CHAT_AMQP_LINGER_US", default: fallback, in: 0...5000))
    }

    /// One of a fixed set of values (an enum's raw values): a value outside it is refused at start.
    package func choice<Value: RawRepresentable & CaseIterable>(_ key: String, default fallback: Value) throws(ConfigurationError) -> Value
    where Value.RawValue == String {
        guard let raw = values[key], !raw.isEmpty else { return fallback }
        guard let value = Value(rawValue: raw.lowercased()) else {
            throw ConfigurationError.invalid(key, raw, Value.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return value
    }

    /// A secret that must have at least `minimumBytes` when it is set; nil when it is not.
    package func secret(_ key: String, minimumBytes: Int) throws(ConfigurationError) -> String? {
        guard let raw = values[key], !raw.isEmpty else { return nil }
        guard raw.utf8.count >= minimumBytes else {
            throw ConfigurationError.invalid(key, "(\(raw.utf8.count) bytes, not shown)", "at least \(minimumBytes) bytes")
        }
        return raw
    }

    /// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case); `fallback` when not set; anything else is refused.
    package func bool(_ key: String, default fallback: Bool) throws(ConfigurationError) -> Bool {
        guard let raw = values[key], !raw.isEmpty else { return fallback }
        switch raw.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ConfigurationError.invalid(key, raw, "1, true, yes, on, 0, false, no, off")
        }
    }
}

/// A configuration value that cannot be used; the service refuses to start with it.
package enum ConfigurationError: Error, CustomStringConvertible {
    case invalid(String, String, String)

    package var description: String {
        switch self {
        case .invalid(let key, let value, let expected): "\(key)='\(value)' is not valid: expected \(expected)"
        }
    }
}

/// The services' logging and metrics, set up once at start from `CHAT_LOG_FORMAT` and `CHAT_LOG_LEVEL`.
package enum ServiceLogging {
    /// A service process's logger: the first call sets up the process's logging (`CHAT_LOG_FORMAT`, `text` or
    /// `json`) and its metrics (``Observability/bootstrap()``); the level comes from `CHAT_LOG_LEVEL` (default
    /// `info`). A malformed value of either stops the process with one line saying so.
    package static func logger(label: String, environment: EnvironmentReader = .init()) -> Logger {
        let level: Logger.Level
        let format: LogFormat
        do {
            level = try environment.choice("CHAT_LOG_LEVEL", default: .info)
            format = try environment.choice("CHAT_LOG_FORMAT", default: .text)
        } catch {
            FileHandle.standardError.write(Data("\(label): \(error)\n".utf8))
            exit(1)
        }
        bootstrapOnce(format)
        Observability.bootstrap()
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    private static let bootstrapped = Mutex(false)

    private static func bootstrapOnce(_ format: LogFormat) {
        bootstrapped.withLock { done in
            guard !done else { return }
            done = true
            LoggingSystem.bootstrap { ServiceLogHandler(label: $0, format: format) }
        }
    }

    /// Runs a service's `main`: an error that ends it (its port is taken, its database cannot be opened) is
    /// logged as one line and the process exits with status 1, instead of a crash report.
    package static func runMain(_ logger: Logger, _ body: () async throws -> Void) async -> Never {
        do {
            try await body()
            LogWriter.standardError.flush()
            exit(0)
        } catch {
            logger.critical("stopped by an error", metadata: ["error": "\(error)"])
            LogWriter.standardError.flush()
            exit(1)
        }
    }
}

/// The routes every service serves: `/health`, `/health/ready` and `/metrics`.
package enum HealthRoutes {
    /// `GET /metrics`: Prometheus's text format. `GET /health`: the process is up. `GET /health/ready`: 200 when its broker connection is up and nothing
    /// in `readiness` is still waiting (its database, say), else 503 with what it waits for.
    package static func add<Context: RequestContext>(to router: Router<Context>, service: String, connection: AMQPConnection,
                                                    readiness: Readiness = Readiness()) {
        Observability.addMetricsRoute(to: router)
        router.get("/health") { _, _ in
            HealthBody(status: "ok", service: service, amqp: connection.isConnected)
        }
        router.get("/health/ready") { _, _ in
            let up = connection.isConnected
            let waiting = readiness.waitingFor
            let body = ReadinessBody(ready: up && waiting.isEmpty, service: service, amqp: up, waiting: waiting)
            return EditedResponse(status: body.ready ? .ok : .serviceUnavailable, response: body)
        }
    }

    /// `GET /health`'s answer (docs/openapi.yaml's `Health`).
    package struct HealthBody: ResponseEncodable {
        package var status: String
        package var service: String
        package var amqp: Bool
    }

    /// `GET /health/ready`'s answer: what the process still waits for, by part (`Readiness`).
    package struct ReadinessBody: ResponseEncodable {
        package var ready: Bool
        package var service: String
        package var amqp: Bool
        package var waiting: [String: String]
    }

}

import ServiceLifecycle

/// A service process: its parts run in one `ServiceGroup` and shut down in reverse order on SIGTERM/SIGINT,
/// so list the broker connection first (closed last) and the parts that use it after it.
package struct ServiceApplication: Service {
    package let services: [any Service]
    package let logger: Logger

    package init(services: [any Service], logger: Logger) {
        self.services = services
        self.logger = logger
    }

    package func run() async throws {
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // A part stuck waiting for a broker that is gone must not hold the process forever: after this,
        // the group cancels every part, and the AMQP connection's cancellation fails what is still queued.
        configuration.maximumGracefulShutdownDuration = .seconds(10)
        configuration.maximumCancellationDuration = .seconds(5)
        try await ServiceGroup(configuration: configuration).run()
    }
}

/// Sleeps for `duration`, cut short by graceful shutdown or cancellation; returns false when the caller
/// should stop (the process is shutting down).
package func sleepUntilShutdown(for duration: Duration) async -> Bool {
    // Cancellation is the expected way out of the sleep; the return value tells the caller.
    _ = try? await cancelWhenGracefulShutdown { try await Task.sleep(for: duration) }
    return !Task.isShuttingDownGracefully && !Task.isCancelled
}

/// A small HTTP server with the health routes, for services that serve nothing else over HTTP.
package func makeHealthServer(service: String, host: String, port: Int, connection: AMQPConnection, readiness: Readiness = Readiness(),
                             logger: Logger, extraRoutes: (Router<BasicRequestContext>) -> Void = { _ in }) -> some Service {
    let router = Router()
    router.add(middleware: RequestLogMiddleware())
    HealthRoutes.add(to: router, service: service, connection: connection, readiness: readiness)
    extraRoutes(router)
    return Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: service), logger: logger)
}

#if os(Linux)
/// glibc's `malloc_trim` (declared in <malloc.h>, which the Glibc module does not export).
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

/// Hands freed heap back to the system every `interval` (glibc keeps it otherwise): after a burst of
/// connections or requests, a process holding thousands of idle sockets would keep the burst's peak as its
/// resident size. `malloc_trim` takes milliseconds on a few hundred MiB, off the event loops.
package struct MemoryTrimmer: Service {
    let interval: Duration

    package init(interval: Duration) {
        self.interval = interval
    }

    package func run() async throws {
        guard interval > .zero else {
            // Off: stay in the group until shutdown (a part that returns would end the whole process).
            // Throws only when cancelled, which ends the wait the same way.
            try? await gracefulShutdown()
            return
        }
        while await sleepUntilShutdown(for: interval) {
            #if os(Linux)
            _ = glibcMallocTrim(0)
            #endif
        }
    }
}
