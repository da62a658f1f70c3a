/// Writes compact JSON by hand: frames are built once per message on the hot path, so this avoids
/// the reflection of `JSONEncoder`. Output is valid JSON with every control character escaped and
/// `<`, `>`, `&` escaped too, so that a frame can be embedded in HTML safely.
public struct JSONWriter {
    public private(set) var output: String = ""
    private var needsComma: [Bool] = []

    public init() {
        output.reserveCapacity(128)
    }

    public mutating func beginObject() { separator(); output.append("{"); needsComma.append(false) }
    public mutating func endObject() { output.append("}"); needsComma.removeLast() }
    public mutating func beginArray(_ key: String) { self.key(key); output.append("["); needsComma.append(false) }
    public mutating func endArray() { output.append("]"); needsComma.removeLast() }

    public mutating func field(_ key: String, _ value: String?) {
        guard let value else { return }
        self.key(key)
        Self.appendQuoted(value, to: &output)
    }

    public mutating func field(_ key: String, _ value: Int64?) {
        guard let value else { return }
        self.key(key)
        output.append(String(value))
    }

    public mutating func field(_ key: String, _ value: Bool) {
        self.key(key)
        output.append(value ? "true" : "false")
    }

    /// Appends a value that is already JSON.
    public mutating func rawElement(_ json: String) {
        separator()
        output.append(json)
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

    public static func quoted(_ string: String) -> String {
        var out = ""
        appendQuoted(string, to: &out)
        return out
    }

    public static func appendQuoted(_ string: String, to out: inout String) {
        out.append("\"")
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out.append("\\\"")
            case "\\": out.append("\\\\")
            case "\n": out.append("\\n")
            case "\r": out.append("\\r")
            case "\t": out.append("\\t")
            case "<": out.append("\\u003c")
            case ">": out.append("\\u003e")
            case "&": out.append("\\u0026")
            case "\u{2028}": out.append("\\u2028")
            case "\u{2029}": out.append("\\u2029")
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out.append("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out.append("\"")
    }
}
