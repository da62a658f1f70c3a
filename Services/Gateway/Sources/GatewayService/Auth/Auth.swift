import ChatProtocol
import Foundation
import Hummingbird
import JWTKit
import NIOHTTP1

/// Who a verified token says the caller is.
struct Identity: Sendable, Equatable {
    let email: Email
    let role: UserRole
    /// The token's `exp`: a socket opened with it is closed (4401) then unless it refreshed its token.
    var expiresAt: Date? = nil
}

/// The claims of our tokens: `sub` = email, `role` = `shop` or `visitor`, `exp`.
struct ChatClaims: JWTPayload {
    var sub: SubjectClaim
    var role: String
    var exp: ExpirationClaim

    func verify(using algorithm: some JWTAlgorithm) throws {
        try exp.verifyNotExpired()
    }
}

enum AuthError: Error, Equatable, CustomStringConvertible {
    case missing
    case invalid(String)

    var description: String {
        switch self {
        case .missing: "authentication required: send a token as 'Authorization: Bearer', the 'chat_token' cookie or ?token="
        case .invalid(let reason): "invalid token: \(reason)"
        }
    }
}

/// Verifies HS256 tokens signed with `CHAT_JWT_SECRET` (and mints them for the development endpoint).
struct Authenticator: Sendable {
    let keys: JWTKeyCollection
    static let cookieName = "chat_token"

    init(secret: String) async {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
    }

    /// The token of a request: `Authorization: Bearer`, else the `chat_token` cookie, else `?token=`.
    static func token(in request: Request) -> String? {
        token(authorization: request.headers[.authorization], cookieHeaders: request.headers[values: .cookie], uri: request.uri.description)
    }

    /// The same, from a WebSocket upgrade's head (the socket path is served by NIO handlers, not the router).
    static func token(headers: HTTPHeaders, uri: String) -> String? {
        token(authorization: headers["authorization"].first, cookieHeaders: headers["cookie"], uri: uri)
    }

    /// The one place a token is found: `Authorization: Bearer`, then the cookie, then `?token=`.
    static func token(authorization: String?, cookieHeaders: [String], uri: String) -> String? {
        if let header = authorization, header.lowercased().hasPrefix("bearer ") {
            return String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        for cookieHeader in cookieHeaders {
            for pair in cookieHeader.split(separator: ";") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == cookieName {
                    let value = parts[1].trimmingCharacters(in: .whitespaces)
                    if !value.isEmpty { return value.removingPercentEncoding ?? value }
                }
            }
        }
        if let token = SocketEndpoint.queryValue("token", in: uri), !token.isEmpty { return token }
        return nil
    }

    func identify(headers: HTTPHeaders, uri: String) async throws(AuthError) -> Identity {
        guard let token = Self.token(headers: headers, uri: uri) else { throw .missing }
        return try await verify(token)
    }

    func identify(_ request: Request) async throws(AuthError) -> Identity {
        guard let token = Self.token(in: request) else { throw .missing }
        return try await verify(token)
    }

    func verify(_ token: String) async throws(AuthError) -> Identity {
        let claims: ChatClaims
        do {
            claims = try await keys.verify(token, as: ChatClaims.self)
        } catch let error as JWTError {
            switch error.errorType {
            case .claimVerificationFailure: throw .invalid("expired")
            case .signatureVerificationFailed: throw .invalid("bad signature")
            default: throw .invalid("malformed")
            }
        } catch {
            throw .invalid("malformed")
        }
        guard let role = UserRole(rawValue: claims.role) else { throw .invalid("role must be 'shop' or 'visitor'") }
        guard let email = try? Email(validating: claims.sub.value) else { throw .invalid("sub must be an email") }
        return Identity(email: email, role: role, expiresAt: claims.exp.value)
    }

    func mint(email: Email, role: UserRole, lifetime: TimeInterval = 24 * 3600) async throws -> String {
        try await keys.sign(ChatClaims(sub: .init(value: email.value), role: role.rawValue,
                                       exp: .init(value: Date().addingTimeInterval(lifetime))))
    }
}
