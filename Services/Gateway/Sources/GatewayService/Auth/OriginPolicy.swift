import ChatProtocol
import Foundation
import Hummingbird
import JWTKit
import NIOHTTP1

/// Like Django's AllowedHostsOriginValidator: a WebSocket upgrade must carry an `Origin` whose host is
/// allowed. Entries are hosts (`example.com`, `.example.com` for subdomains too), full origins
/// (`https://chat.example.com:8443`) or `*`.
struct OriginPolicy: Sendable {
    let allowed: [String]

    init(allowed: [String]) {
        self.allowed = allowed.map { $0.lowercased() }
    }

    func allows(_ origin: String?) -> Bool {
        guard let origin = origin?.lowercased(), !origin.isEmpty, origin != "null" else { return allowed.contains("*") }
        if allowed.contains("*") { return true }
        guard let components = URLComponents(string: origin), let host = components.host, components.scheme != nil else { return false }
        for entry in allowed {
            if entry.contains("://") {
                if entry == origin { return true }
            } else if entry.hasPrefix(".") {
                if host == String(entry.dropFirst()) || host.hasSuffix(entry) { return true }
            } else if host == entry || "[\(host)]" == entry || host == entry.trimmingCharacters(in: CharacterSet(charactersIn: "[]")) {
                return true
            }
        }
        return false
    }
}
