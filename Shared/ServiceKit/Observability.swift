import ChatProtocol
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import Synchronization

/// The process's metrics and log format: swift-metrics backed by one Prometheus registry, served as
/// `GET /metrics` by every service, and log lines as text or JSON (`CHAT_LOG_FORMAT`).
package enum Observability {
    /// The registry `/metrics` reads; every swift-metrics handle made after ``bootstrap()`` lands here.
    package static let registry = PrometheusCollectorRegistry()
    private static let bootstrapped = Atomic<Bool>(false)

    /// Makes swift-metrics report to ``registry``; once per process (a second call, as when tests build many
    /// applications in one process, does nothing).
    package static func bootstrap() {
        guard bootstrapped.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        var factory = PrometheusMetricsFactory(registry: registry)
        // Sub-millisecond to seconds: a delivery on an idle stack takes about a millisecond.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
            .seconds(5), .seconds(10),
        ]
        factory.defaultValueHistogramBuckets = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
        MetricsSystem.bootstrap(factory)
    }

    /// The Prometheus text exposition of everything recorded so far.
    package static func exposition() -> ByteBuffer {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 * 1024)
        registry.emit(into: &bytes)
        return ByteBuffer(bytes: bytes)
    }

    /// `GET /metrics` in Prometheus's text format.
    package static func addMetricsRoute<Context: RequestContext>(to router: Router<Context>) {
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: exposition()))
        }
    }
}

/// How log lines are written: `text` (swift-log's own stream format) or `json` (one object a line).
package enum LogFormat: String, Sendable, CaseIterable {
    case text, json
}

/// Writes one JSON object per log event to standard error: `ts`, `level`, `label`, `msg`, then the metadata
/// as string fields (`chat.room`, `chat.gateway`, `amqp.queue`, `request.id`, …), for log collectors.
package struct JSONLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    package var logLevel: Logger.Level = .info
    let label: String
    private static let output = Mutex<Void>(())

    package init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    /// The metadata value under `key`.
    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        if let error = event.error { fields["error"] = .string("\(error)") }
        let line = Self.line(timestamp: Date(), level: event.level, label: label, message: event.message.description, metadata: fields)
        Self.output.withLock { _ in
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    /// One log line (with its newline); fields in a fixed order, then metadata keys sorted.
    static func line(timestamp: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var line = "{\"ts\":\(JSONWriter.quoted(timestamp.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))))"
        line += ",\"level\":\(JSONWriter.quoted(level.rawValue)),\"label\":\(JSONWriter.quoted(label)),\"msg\":\(JSONWriter.quoted(message))"
        for key in metadata.keys.sorted() {
            line += ",\(JSONWriter.quoted(key)):\(JSONWriter.quoted(metadata[key]!.description))"
        }
        return line + "}\n"
    }
}
