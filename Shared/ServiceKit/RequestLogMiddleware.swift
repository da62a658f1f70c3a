import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// One log line per HTTP request (method, path, status, duration) with its request id as `request.id`, also
/// returned as `X-Request-ID`. An id sent by the proxy (nginx's `$request_id`) is kept when it is short and
/// plain, so that the proxy's log and ours name the same request; otherwise Hummingbird's own is used.
/// Health checks and scrapes log at debug.
package struct RequestLogMiddleware<Context: RequestContext>: RouterMiddleware {
    package init() {}

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let id = Self.usableID(request.headers[.xRequestID]) ?? context.id
        context.logger[metadataKey: "request.id"] = .string(id)
        let path = request.uri.path
        let quiet = path.hasPrefix("/health") || path == "/metrics"
        let started = ContinuousClock.now
        do {
            var response = try await next(request, context)
            response.headers[.xRequestID] = id
            log(context.logger, quiet: quiet, request, status: response.status.code, since: started)
            return response
        } catch let error as any HTTPResponseError {
            // An error answer (the API's errors are thrown) carries the request id too.
            var response = try error.response(from: request, context: context)
            response.headers[.xRequestID] = id
            log(context.logger, quiet: quiet, request, status: response.status.code, since: started)
            return response
        } catch {
            log(context.logger, quiet: false, request, status: 500, since: started)
            throw error
        }
    }

    private func log(_ logger: Logger, quiet: Bool, _ request: Request, status: Int, since started: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - started
        logger.log(level: quiet ? .debug : .info, "http request", metadata: [
            "http.method": .string(request.method.rawValue), "http.path": .string(request.uri.path),
            "http.status": .stringConvertible(status),
            "http.duration_ms": .string(String(format: "%.2f", Double(elapsed / .microseconds(1)) / 1000)),
        ])
    }

    /// An id of 1–64 letters, digits, `-` or `_`; anything else is not trusted into the logs.
    static func usableID(_ value: String?) -> String? {
        guard let value, (1...64).contains(value.utf8.count),
              value.utf8.allSatisfy({ $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) })
        else { return nil }
        return value
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-ID")!
}
