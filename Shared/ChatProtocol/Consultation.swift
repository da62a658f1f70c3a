import Foundation

/// An email address as the consultation chat knows users: validated, and compared case-insensitively
/// (stored lowercased).
package struct Email: Hashable, Sendable, Codable, CustomStringConvertible {
    package let value: String

    package init(validating raw: String) throws(ChatError) {
        let trimmed = raw.trimmingWhitespace()
        guard !trimmed.isEmpty else { throw .invalidFrame("email must not be empty") }
        guard trimmed.utf8.count <= 254 else { throw .invalidFrame("email is too long") }
        let parts = trimmed.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= 64,
              parts[1].contains("."), !parts[1].hasPrefix("."), !parts[1].hasSuffix("."), !parts[1].contains(".."),
              trimmed.utf8.allSatisfy(Self.isAllowedByte)
        else { throw .invalidFrame("'\(trimmed)' is not a valid email address") }
        self.value = trimmed.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") || $0 >= 0x80 })
            ? trimmed.lowercased() : trimmed
    }

    /// No control characters, space, DEL or `<>()[],;:\"`. Checked on UTF-8 bytes: every byte of a non-ASCII
    /// character is 0x80 or more and passes, as the character itself does (it runs for every email of every
    /// consultation message, so no per-character string search).
    @inline(__always)
    static func isAllowedByte(_ byte: UInt8) -> Bool {
        guard byte > 0x20, byte != 0x7f else { return false }
        switch byte {
        case UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "["), UInt8(ascii: "]"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: ":"), UInt8(ascii: "\\"), UInt8(ascii: "\""):
            return false
        default:
            return true
        }
    }

    package init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        self = try Email(validating: raw)
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }

    package var description: String { value }
}

/// Who a token says the caller is.
package enum UserRole: String, Codable, Sendable {
    case shop, visitor
}

/// A 1:1 consultation room between a shop user and a visitor user.
package struct ConsultRoom: Codable, Sendable, Equatable {
    package var id: Int64
    package var shopUserEmail: String
    package var visitorUserEmail: String
    package var createdAt: Int64
    /// The last seq the asking user has read (lists only).
    package var readSeq: Int64?

    package init(id: Int64, shopUserEmail: String, visitorUserEmail: String, createdAt: Int64, readSeq: Int64? = nil) {
        self.id = id
        self.shopUserEmail = shopUserEmail
        self.visitorUserEmail = visitorUserEmail
        self.createdAt = createdAt
        self.readSeq = readSeq
    }

    /// The room's group on the channel layer (`consult:<id>`).
    package var group: String { ChatGroup.consult(id: id).key }

    /// Whether `email` takes part in the room in `role`.
    package func hasParticipant(_ email: String, role: UserRole) -> Bool {
        switch role {
        case .shop: shopUserEmail == email
        case .visitor: visitorUserEmail == email
        }
    }
}

/// Per room: its last message and how many the caller has not read (a persistence request).
package struct RoomSummaryQuery: Codable, Sendable, Equatable {
    package var group: String
    package var afterSeq: Int64
    /// Messages from this sender (the caller) do not count as unread.
    package var reader: String

    package init(group: String, afterSeq: Int64, reader: String) {
        self.group = group
        self.afterSeq = afterSeq
        self.reader = reader
    }
}

/// A room's last message and how many of its messages the asking user has not read (a persistence reply).
package struct RoomSummary: Codable, Sendable, Equatable {
    package var group: String
    package var lastSeq: Int64
    package var lastMessage: StoredChatMessage?
    package var unread: Int

    package init(group: String, lastSeq: Int64, lastMessage: StoredChatMessage?, unread: Int) {
        self.group = group
        self.lastSeq = lastSeq
        self.lastMessage = lastMessage
        self.unread = unread
    }
}

/// What a participant sends on `/ws/room/<id>/messages`.
package enum ConsultClientFrame: Equatable, Sendable {
    /// `{"message", "sender_email"?, "shop_user_email", "visitor_user_email", "client_id"?}`
    case message(text: String, sender: Email?, shop: Email, visitor: Email, clientID: String?)
    /// `{"type": "read", "up_to_seq": N}`
    case read(upToSeq: Int64)
    /// `{"type": "refresh", "token": "<JWT>"}`
    case refresh(token: String)

    /// Parses a client frame of a consultation socket; the error says what is wrong, for an `{"error"}` frame.
    package static func parse(_ bytes: some Collection<UInt8>) throws(ChatError) -> ConsultClientFrame {
        let object = try ClientFrame.parseObject(bytes)
        if let type = object["type"] {
            guard let type = type as? String, !(type as Any is NSNumber) else { throw .invalidFrame("'type' must be a string") }
            if let token = try ClientFrame.refreshToken(in: object) { return .refresh(token: token) }
            guard type == "read" else { throw .invalidFrame("unknown frame type '\(type)'") }
            // JSONDecoder is strict where JSONSerialization is not: `true` and `1.5` are not integers.
            guard let frame = try? JSONDecoder().decode(ReadFrame.self, from: Data(bytes)), frame.up_to_seq >= 0 else {
                throw .invalidFrame("'up_to_seq' must be a non-negative integer")
            }
            return .read(upToSeq: frame.up_to_seq)
        }
        let text = try ClientFrame.chatMessage(in: object)
        func email(_ key: String) throws(ChatError) -> Email {
            guard let raw = object[key] else { throw .invalidFrame("missing field '\(key)'") }
            guard let string = raw as? String, !(raw is NSNumber) else { throw .invalidFrame("'\(key)' must be a string") }
            guard !string.isBlank else { throw .invalidFrame("'\(key)' must not be empty") }
            return try Email(validating: string)
        }
        let sender: Email? = object["sender_email"] == nil || object["sender_email"] is NSNull ? nil : try email("sender_email")
        return .message(text: text, sender: sender, shop: try email("shop_user_email"), visitor: try email("visitor_user_email"),
                        clientID: try ClientFrame.clientID(in: object))
    }
}

private struct ReadFrame: Decodable {
    var up_to_seq: Int64
}
