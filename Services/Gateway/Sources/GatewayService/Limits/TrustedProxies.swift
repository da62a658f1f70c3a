import NIOCore
import ServiceKit

/// `CHAT_TRUSTED_PROXIES`: addresses or CIDR blocks (`10.88.0.0/16`, `::1`) of the reverse proxies in front of
/// the gateway. A connection from one of them is counted by the last address of its `X-Forwarded-For` (the one
/// the proxy appended); any other connection by its peer address.
package struct TrustedProxies: Sendable, Equatable {
    package struct Block: Sendable, Equatable {
        let bytes: [UInt8]
        let prefix: Int

        func contains(_ address: [UInt8]) -> Bool {
            guard address.count == bytes.count else { return false }
            var remaining = prefix
            for (a, b) in zip(address, bytes) where remaining > 0 {
                let bits = min(8, remaining)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
                if a & mask != b & mask { return false }
                remaining -= bits
            }
            return true
        }
    }

    let blocks: [Block]

    package init(blocks: [Block] = []) {
        self.blocks = blocks
    }

    /// Parses the comma-separated list; an entry that is not an address or block is refused, naming it.
    package init(parsing text: String) throws(ConfigurationError) {
        var blocks: [Block] = []
        for entry in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
            let parts = entry.split(separator: "/", maxSplits: 1)
            guard let bytes = Self.addressBytes(String(parts[0])) else {
                throw .invalid("CHAT_TRUSTED_PROXIES", entry, "IP addresses or CIDR blocks, comma-separated")
            }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let value = Int(parts[1]), (0...bytes.count * 8).contains(value) else {
                    throw .invalid("CHAT_TRUSTED_PROXIES", entry, "a prefix length from 0 to \(bytes.count * 8)")
                }
                prefix = value
            }
            blocks.append(Block(bytes: bytes, prefix: prefix))
        }
        self.blocks = blocks
    }

    /// The address bytes of an IPv4 or IPv6 literal (an IPv4-mapped IPv6 address as its IPv4 bytes).
    static func addressBytes(_ text: String) -> [UInt8]? {
        // Not an IP address: not a usable client address, which the caller treats as absent.
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        default:
            return nil
        }
    }

    func trusts(_ address: String) -> Bool {
        guard !blocks.isEmpty, let bytes = Self.addressBytes(address) else { return false }
        return blocks.contains { $0.contains(bytes) }
    }

    /// Who a connection is counted as: its peer, or for a trusted proxy the last `X-Forwarded-For` entry.
    func clientAddress(peer: String?, forwardedFor: [String]) -> String {
        guard let peer else { return "unknown" }
        guard trusts(peer) else { return Self.canonical(peer) }
        let last = forwardedFor.joined(separator: ",").split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces) }
        guard let last, !last.isEmpty, Self.addressBytes(last) != nil else { return Self.canonical(peer) }
        return Self.canonical(last)
    }

    /// One spelling per address (`::ffff:127.0.0.1` is `127.0.0.1`).
    static func canonical(_ address: String) -> String {
        guard let bytes = addressBytes(address) else { return address }
        return bytes.map(String.init).joined(separator: bytes.count == 4 ? "." : ":")
    }
}
