/// Writes compact JSON by hand, for the frames built once per message on the hot path: valid JSON with every
/// control character escaped and `<`, `>`, `&` too, so that a frame can be embedded in HTML safely. (Measured
/// only ~10 % cheaper than `JSONEncoder` so far: docs/benchmarks.md, "Frame encoding".)
package struct JSONWriter {
    package private(set) var output: String = ""
    private var needsComma: [Bool] = []

    package init() {
        output.reserveCapacity(128)
    }

    /// Starts an object (as a value, or as the next element of an array).
    package mutating func beginObject() { separator(); output.append("{"); needsComma.append(false) }
    /// Ends the innermost object.
    package mutating func endObject() { output.append("}"); needsComma.removeLast() }

    /// Writes `key: value` as a JSON string; nothing when `value` is nil.
    package mutating func field(_ key: String, _ value: String?) {
        guard let value else { return }
        self.key(key)
        Self.appendQuoted(value, to: &output)
    }

    /// Writes `key: value` as a JSON number; nothing when `value` is nil.
    package mutating func field(_ key: String, _ value: Int64?) {
        guard let value else { return }
        self.key(key)
        output.append(String(value))
    }

    /// Writes `key: value` as a JSON boolean.
    package mutating func field(_ key: String, _ value: Bool) {
        self.key(key)
        output.append(value ? "true" : "false")
    }

    private mutating func key(_ key: String) {
        separator()
        Self.appendQuoted(key, to: &output)
        output.append(":")
    }

    private mutating func separator() {
        guard !needsComma.isEmpty else { return }
        if needsComma[needsComma.count - 1] { output.append(",") }
        needsComma[needsComma.count - 1] = true
    }

    /// `string` as a JSON string literal, quotes included.
    package static func quoted(_ string: String) -> String {
        var out = ""
        appendQuoted(string, to: &out)
        return out
    }

    /// Appends `string` as a JSON string. Runs of bytes that need no escape (nearly always the whole
    /// string) are appended in one go; the escapes are all ASCII, or U+2028/U+2029 (bytes E2 80 A8/A9), so
    /// every run starts and ends on a scalar boundary.
    package static func appendQuoted(_ string: String, to out: inout String) {
        out.append("\"")
        let utf8 = string.utf8
        var runStart = utf8.startIndex
        var i = utf8.startIndex
        while i != utf8.endIndex {
            let byte = utf8[i]
            let escape: String?
            var width = 1
            switch byte {
            case 0x22: escape = "\\\""
            case 0x5C: escape = "\\\\"
            case 0x0A: escape = "\\n"
            case 0x0D: escape = "\\r"
            case 0x09: escape = "\\t"
            case 0x3C: escape = "\\u003c"
            case 0x3E: escape = "\\u003e"
            case 0x26: escape = "\\u0026"
            case 0xE2:
                let second = utf8.index(after: i)
                let third = second == utf8.endIndex ? second : utf8.index(after: second)
                if third != utf8.endIndex, utf8[second] == 0x80, utf8[third] == 0xA8 || utf8[third] == 0xA9 {
                    escape = utf8[third] == 0xA8 ? "\\u2028" : "\\u2029"
                    width = 3
                } else {
                    escape = nil
                }
            case 0..<0x20:
                let hex = String(byte, radix: 16)
                escape = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default:
                escape = nil
            }
            if let escape {
                out.append(contentsOf: string[runStart..<i])
                out.append(escape)
                i = utf8.index(i, offsetBy: width)
                runStart = i
            } else {
                i = utf8.index(after: i)
            }
        }
        out.append(contentsOf: string[runStart..<i])
        out.append("\"")
    }
}
