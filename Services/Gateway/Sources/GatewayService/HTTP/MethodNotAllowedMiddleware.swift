import Hummingbird

/// Answers a method that a known path does not serve with 405 and `Allow` (Hummingbird says 404): add it after
/// every route, from ``Router/routes``. Only requests no route took reach it.
struct MethodNotAllowedMiddleware<Context: RequestContext>: RouterMiddleware {
    /// Each path's segments (`{id}` matches any one) and the methods it serves.
    let paths: [(segments: [Substring], methods: [HTTPRequest.Method])]

    init(routes: [Router<Context>.RouteDescription]) {
        var byPath: [String: [HTTPRequest.Method]] = [:]
        for route in routes { byPath["\(route.path)", default: []].append(route.method) }
        paths = byPath.map { (path, methods) in (path.split(separator: "/"), methods) }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let segments = request.uri.path.split(separator: "/")
            guard let match = paths.first(where: { Self.matches($0.segments, segments) }) else { throw error }
            let allow = match.methods.map(\.rawValue).sorted().joined(separator: ", ")
            throw APIError(.methodNotAllowed, "\(request.method.rawValue) is not allowed here; allowed: \(allow)", headers: [.allow: allow])
        }
    }

    static func matches(_ pattern: [Substring], _ segments: [Substring]) -> Bool {
        pattern.count == segments.count && zip(pattern, segments).allSatisfy { $0.hasPrefix("{") || $0.hasPrefix(":") || $0 == $1 }
    }
}
