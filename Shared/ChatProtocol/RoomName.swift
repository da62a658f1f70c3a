import Foundation

/// A validated name of a named (tutorial) room.
///
/// Rules (documented in docs/protocol.md): 1 to 100 characters; each is a Unicode letter, mark or digit,
/// or one of `-`, `_`, `.`. So `lobby`, `상담실` and `café-2` are rooms; `</script>`, `a b` and `';x;'` are not.
package struct RoomName: Hashable, Sendable, CustomStringConvertible {
    /// The longest name, in characters.
    package static let maxCharacters = 100
    package let value: String

    package init(validating raw: String) throws(ChatError) {
        guard !raw.isEmpty else { throw .invalidRoomName("room name must not be empty") }
        guard raw.count <= Self.maxCharacters, raw.unicodeScalars.count <= Self.maxCharacters * 4 else {
            throw .invalidRoomName("room name must be at most \(Self.maxCharacters) characters")
        }
        for scalar in raw.unicodeScalars where !Self.isAllowed(scalar) {
            throw .invalidRoomName("room name may contain only letters, digits, '-', '_' and '.'")
        }
        self.value = raw
    }

    /// A name as it comes in a URL path (`/chat/<room>/`, `/ws/chat/<room>/`, the REST routes): percent-decoded,
    /// then validated. The one place a path segment becomes a room name.
    package init(pathSegment raw: String) throws(ChatError) {
        try self.init(validating: raw.removingPercentEncoding ?? raw)
    }

    static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "-", "_", ".": return true
        default: break
        }
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .nonspacingMark, .spacingMark, .enclosingMark,
             .decimalNumber, .letterNumber, .otherNumber:
            return true
        default:
            return false
        }
    }

    package var description: String { value }
}
