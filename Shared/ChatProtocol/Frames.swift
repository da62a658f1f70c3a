import Foundation
import NIOCore

/// A named room's client frame.
package enum NamedClientFrame: Equatable, Sendable {
    case message(text: String, clientID: String?)
    case refresh(token: String)
}

/// What a browser sends on `/ws/chat/<room>/`: `{"message": "<text>", "client_id"?: "<1-64 characters>"}`.
package enum ClientFrame {
    /// Parses a client frame's text; every way it can be wrong has its own error text.
    package static func parseChatMessage(_ bytes: some Collection<UInt8>) throws(ChatError) -> String {
        try chatMessage(in: parseObject(bytes))
    }

    /// Parses a client frame: its text, and the client's id for it when it asks for an ack.
    package static func parseNamedMessage(_ bytes: some Collection<UInt8>) throws(ChatError) -> (text: String, clientID: String?) {
        let object = try parseObject(bytes)
        return (try chatMessage(in: object), try clientID(in: object))
    }

    /// Parses a named room's client frame: a chat message, or a token refresh.
    package static func parseNamed(_ bytes: some Collection<UInt8>) throws(ChatError) -> NamedClientFrame {
        let object = try parseObject(bytes)
        if let token = try refreshToken(in: object) { return .refresh(token: token) }
        return .message(text: try chatMessage(in: object), clientID: try clientID(in: object))
    }

    /// The token of a `{"type": "refresh", "token": "<JWT>"}` frame; nil for a frame of another type.
    package static func refreshToken(in object: [String: Any]) throws(ChatError) -> String? {
        guard let type = object["type"] as? String, type == "refresh" else { return nil }
        guard let token = object["token"] as? String, !token.isEmpty, token.utf8.count <= 8192 else {
            throw .invalidFrame("'token' must be a non-empty string")
        }
        return token
    }

    /// `{"type":"refreshed","expires_at"}`: the socket's token was replaced; it now expires at this time (ms).
    package static func refreshed(expiresAtMillis: Int64?) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("type", "refreshed")
        writer.field("expires_at", expiresAtMillis)
        writer.endObject()
        return writer.output
    }

    /// The longest `client_id`, in characters.
    package static let maxClientIDCharacters = 64

    /// The optional `client_id` of a message: 1 to 64 characters, none of them a control character.
    package static func clientID(in dictionary: [String: Any]) throws(ChatError) -> String? {
        guard let value = dictionary["client_id"], !(value is NSNull) else { return nil }
        guard let id = value as? String, !(value is NSNumber) else { throw .invalidFrame("'client_id' must be a string") }
        guard !id.isEmpty, id.count <= maxClientIDCharacters, id.utf8.count <= maxClientIDCharacters * 4 else {
            throw .invalidFrame("'client_id' must be 1 to \(maxClientIDCharacters) characters")
        }
        if id.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) {
            throw .invalidFrame("'client_id' must not contain control characters")
        }
        return id
    }

    /// `{"type":"ack","client_id","id","seq"}`: the message the client sent with `client_id` is stored as `id`, `seq`.
    package static func ack(clientID: String, id: String, seq: Int64) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("type", "ack")
        writer.field("client_id", clientID)
        writer.field("id", id)
        writer.field("seq", seq)
        writer.endObject()
        return writer.output
    }

    /// `{"type":"read","reader_email","up_to_seq"}`: a consultation participant has read up to `up_to_seq`.
    package static func read(readerEmail: String, upToSeq: Int64) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("type", "read")
        writer.field("reader_email", readerEmail)
        writer.field("up_to_seq", upToSeq)
        writer.endObject()
        return writer.output
    }

    /// `{"type":"reset","last_seq"}`: more was missed than a resume sends; live messages follow `last_seq`.
    package static func reset(lastSeq: Int64) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("type", "reset")
        writer.field("last_seq", lastSeq)
        writer.endObject()
        return writer.output
    }

    /// Parses a frame that must be a JSON object.
    package static func parseObject(_ bytes: some Collection<UInt8>) throws(ChatError) -> [String: Any] {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            throw .invalidFrame("frame is not valid JSON")
        }
        guard let dictionary = object as? [String: Any] else {
            throw .invalidFrame("frame must be a JSON object")
        }
        return dictionary
    }

    /// The non-empty string in a frame's `message` field.
    package static func chatMessage(in dictionary: [String: Any]) throws(ChatError) -> String {
        guard let value = dictionary["message"] else {
            throw .invalidFrame("missing field 'message'")
        }
        guard let text = value as? String, !(value is NSNumber) else {
            throw .invalidFrame("'message' must be a string")
        }
        guard !text.isBlank else {
            throw .invalidFrame("'message' must not be empty")
        }
        if let scalar = MessageText.firstRefusedScalar(in: text) {
            throw .invalidFrame("'message' must not contain the control character U+\(MessageText.hex(scalar))")
        }
        return text
    }

    /// `{"error", "code", "retry_after_ms"?}`: a refusal a client acts on by its code (`rate_limited`,
    /// `token_expired`, `too_many_connections`, `disconnected`).
    package static func error(_ text: String, code: String, retryAfterMs: Int? = nil) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("error", text)
        writer.field("code", code)
        if let retryAfterMs { writer.field("retry_after_ms", Int64(retryAfterMs)) }
        writer.endObject()
        return writer.output
    }

    /// The `{"error": text}` frame a socket receives for a frame it got wrong.
    package static func error(_ text: String) -> String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("error", text)
        writer.endObject()
        return writer.output
    }
}

/// Message ids: UUIDs in lowercase text, written straight from the time and random bytes (no Foundation UUID
/// and no case conversion per message).
package enum MessageID {
    /// A new message id: a lowercase UUID version 7 (RFC 9562), whose first 48 bits are the Unix time in
    /// milliseconds and the other 74 random. Ids made later sort later, so the store's id index grows at its
    /// right edge: with random (version 4) ids every insert landed on a random page of that index, and a batch
    /// of 25 messages rewrote about 25 index pages into the write-ahead log.
    package static func timeOrdered(millis: Int64 = Timestamp.nowMillis()) -> String {
        var generator = SystemRandomNumberGenerator()
        var high = generator.next() as UInt64, low = generator.next() as UInt64
        high = (UInt64(truncatingIfNeeded: millis) << 16) | (high & 0x0FFF) | 0x7000   // time, version 7, rand_a
        low = (low & ~(0xC000 << 48)) | (0x8000 << 48)                                // RFC 9562 variant
        return String(unsafeUninitializedCapacity: 36) { out in
            var index = 0
            for digit in 0..<32 {
                if digit == 8 || digit == 12 || digit == 16 || digit == 20 {
                    out[index] = UInt8(ascii: "-")
                    index += 1
                }
                let word = digit < 16 ? high : low
                let nibble = UInt8((word >> UInt64(60 - (digit % 16) * 4)) & 0xF)
                out[index] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
                index += 1
            }
            return index
        }
    }
}

/// A message as the gateway hands it to the persistence service (AMQP, `chat.inbound`).
package struct InboundChatMessage: Codable, Sendable, Equatable {
    /// Server-assigned id; a redelivery carries the same id, which makes the store idempotent.
    package var id: String
    /// The group the message belongs to, e.g. `named:lobby`.
    package var group: String
    package var sender: String?
    package var text: String
    /// When the gateway received it, in milliseconds since 1970.
    package var receivedAt: Int64
    /// The client's own id for it (`client_id`): the room stores one message per client id, and the sender is acked.
    package var clientID: String?
    /// Where the ack goes: the sender's gateway queue, and its socket there.
    package var replyTo: String?
    package var socket: Int?

    package init(id: String, group: String, sender: String?, text: String, receivedAt: Int64,
                 clientID: String? = nil, replyTo: String? = nil, socket: Int? = nil) {
        self.id = id
        self.group = group
        self.sender = sender
        self.text = text
        self.receivedAt = receivedAt
        self.clientID = clientID
        self.replyTo = replyTo
        self.socket = socket
    }
}

/// A stored message: what every member of its room receives, live or as history.
package struct StoredChatMessage: Codable, Sendable, Equatable {
    package var id: String
    package var group: String
    package var seq: Int64
    package var sender: String?
    package var text: String
    package var createdAt: Int64
    /// The sender's `client_id` for it, when it gave one (not in frames: only its sender is acked with it).
    package var clientID: String?

    package init(id: String, group: String, seq: Int64, sender: String?, text: String, createdAt: Int64, clientID: String? = nil) {
        self.id = id
        self.group = group
        self.seq = seq
        self.sender = sender
        self.text = text
        self.createdAt = createdAt
        self.clientID = clientID
    }

    /// The frame sockets receive: `{"message", "id", "seq", "room", "time", "sender_email"?}`.
    package var clientFrame: String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("message", text)
        writer.field("id", id)
        writer.field("seq", seq)
        writer.field("room", ChatGroup.displayName(ofKey: group))
        writer.field("time", Timestamp.iso8601(millis: createdAt))
        writer.field("sender_email", sender)
        writer.endObject()
        return writer.output
    }
}

/// Times as the services keep them (milliseconds since 1970) and as frames show them (ISO 8601).
package enum Timestamp {
    /// Now, in milliseconds since 1970.
    package static func nowMillis() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded())
    }

    /// `2026-11-22T08:30:00.123Z` (written digit by digit: it is in every frame).
    package static func iso8601(millis: Int64) -> String {
        var seconds = time_t(millis / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else { return "0000-01-01T00:00:00.000Z" }
        return String(unsafeUninitializedCapacity: 24) { out in
            func put(_ value: Int, _ width: Int, at index: Int) {
                var value = value
                for position in stride(from: index + width - 1, through: index, by: -1) {
                    out[position] = UInt8(ascii: "0") + UInt8(value % 10)
                    value /= 10
                }
            }
            put(year, 4, at: 0); out[4] = UInt8(ascii: "-")
            put(Int(parts.tm_mon) + 1, 2, at: 5); out[7] = UInt8(ascii: "-")
            put(Int(parts.tm_mday), 2, at: 8); out[10] = UInt8(ascii: "T")
            put(Int(parts.tm_hour), 2, at: 11); out[13] = UInt8(ascii: ":")
            put(Int(parts.tm_min), 2, at: 14); out[16] = UInt8(ascii: ":")
            put(Int(parts.tm_sec), 2, at: 17); out[19] = UInt8(ascii: ".")
            put(Int(((millis % 1000) + 1000) % 1000), 3, at: 20); out[23] = UInt8(ascii: "Z")
            return 24
        }
    }
}

/// Several frames in one AMQP message: one per line (JSON frames contain no raw newline), oldest first; the
/// message's `x-seq` header is the first frame's seq and `x-count` their number. History replies and room
/// broadcasts both use it.
package enum FrameBatch {
    /// Frames one per line (a frame is compact JSON, so it holds no newline), for one AMQP body.
    package static func join(_ frames: [String]) -> String {
        frames.joined(separator: "\n")
    }

    /// The frames of a body ``join(_:)`` made, as slices of it (no copy).
    package static func split(_ body: ByteBuffer) -> [ByteBuffer] {
        var body = body
        var frames: [ByteBuffer] = []
        while body.readableBytes > 0 {
            let end = body.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) ?? body.writerIndex
            frames.append(body.readSlice(length: end - body.readerIndex)!)
            body.moveReaderIndex(forwardBy: min(1, body.readableBytes))
        }
        return frames
    }
}

extension String {
    /// Whether it is empty or only white space and newlines (pure Swift: Foundation's trimming bridges to
    /// NSString, which showed in the gateway's profile once per client frame).
    package var isBlank: Bool {
        unicodeScalars.allSatisfy { $0.properties.isWhitespace }
    }

    /// Without leading and trailing white space and newlines.
    package func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        if first == scalars.startIndex && last == scalars.index(before: scalars.endIndex) { return self }
        return String(scalars[first...last])
    }
}

/// What a chat message's text may contain (docs/protocol.md): any Unicode scalar value except the C0
/// controls other than tab, line feed and carriage return (U+0000–U+0008, U+000B, U+000C, U+000E–U+001F),
/// DEL (U+007F) and the C1 controls (U+0080–U+009F). PostgreSQL's `text` cannot hold U+0000 at all; the
/// others are refused too so that SQLite and PostgreSQL store exactly the same set of texts.
package enum MessageText {
    /// Whether a character may appear in a chat message: any but the C0 and C1 controls other than tab, CR and LF.
    package static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        let v = scalar.value
        if v >= 0x20 && v < 0x7F { return true }
        if v == 0x09 || v == 0x0A || v == 0x0D { return true }
        return v > 0x9F
    }

    /// The first scalar that a message may not contain, if any (UTF-8 bytes first: most texts are ASCII).
    package static func firstRefusedScalar(in text: String) -> Unicode.Scalar? {
        var clean = true
        for byte in text.utf8 where byte < 0x20 || byte == 0x7F || byte == 0xC2 {
            if byte == 0x09 || byte == 0x0A || byte == 0x0D { continue }
            clean = false
            break
        }
        if clean { return nil }
        return text.unicodeScalars.first { !isAllowed($0) }
    }

    /// `001B` (four hex digits at least): how an error names a refused character, after `U+`.
    package static func hex(_ scalar: Unicode.Scalar) -> String {
        let digits = String(scalar.value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
