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

/// Log lines to standard error through ``LogWriter`` (never blocking the caller on the output), as `json`: one
/// object per event (`ts`, `level`, `label`, `msg`, then the metadata as string fields: `chat.room`,
/// `chat.gateway`, `amqp.queue`, `request.id`, …, for log collectors), or as `text` for people.
package struct ServiceLogHandler: LogHandler {
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    package var logLevel: Logger.Level = .info
    let label: String
    let format: LogFormat
    let output: LogWriter

    package init(label: String, format: LogFormat, output: LogWriter = .standardError, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.output = output
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
        let message = event.message.description
        switch format {
        case .json: output.write(Self.jsonLine(timestamp: Date(), level: event.level, label: label, message: message, metadata: fields))
        case .text: output.write(Self.textLine(timestamp: Date(), level: event.level, label: label, message: message, metadata: fields))
        }
    }

    /// One JSON log line (with its newline); fields in a fixed order, then metadata keys sorted.
    static func jsonLine(timestamp: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var line = "{\"ts\":\(JSONWriter.quoted(timestamp.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))))"
        line += ",\"level\":\(JSONWriter.quoted(level.rawValue)),\"label\":\(JSONWriter.quoted(label)),\"msg\":\(JSONWriter.quoted(message))"
        for key in metadata.keys.sorted() {
            line += ",\(JSONWriter.quoted(key)):\(JSONWriter.quoted(metadata[key]!.description))"
        }
        return line + "}\n"
    }

    /// One text log line, shaped as swift-log's `StreamLogHandler` writes them: time, level, label, metadata, message.
    static func textLine(timestamp: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var line = timestamp.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)) + " \(level) \(label) :"
        for key in metadata.keys.sorted() { line += " \(key)=\(metadata[key]!)" }
        return line + " " + message + "\n"
    }
}
