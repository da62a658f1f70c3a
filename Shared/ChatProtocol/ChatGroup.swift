/// A room as the channel layer names it: a tutorial room `named:<name>` or a consultation room `consult:<id>`.
/// The one place that builds or reads those names; the layer, the broker and the store carry its ``key``.
package enum ChatGroup: Hashable, Sendable, CustomStringConvertible, Codable {
    case named(RoomName)
    case consult(id: Int64)

    static let namedPrefix = "named:"
    static let consultPrefix = "consult:"

    /// Reads a group key; nil for anything that is not a valid named room or a positive consultation id.
    package init?(key: String) {
        if key.hasPrefix(Self.namedPrefix) {
            // Not a valid room name means not a named room's group: nil, as documented.
            guard let name = try? RoomName(validating: String(key.dropFirst(Self.namedPrefix.count))) else { return nil }
            self = .named(name)
        } else if key.hasPrefix(Self.consultPrefix) {
            guard let id = Int64(key.dropFirst(Self.consultPrefix.count)), id > 0 else { return nil }
            self = .consult(id: id)
        } else {
            return nil
        }
    }

    /// The group's name on the channel layer, in the store and in AMQP headers.
    package var key: String {
        switch self {
        case .named(let name): Self.namedPrefix + name.value
        case .consult(let id): Self.consultPrefix + String(id)
        }
    }

    /// What frames call the room: a named room's name, a consultation room's id.
    package var displayName: String {
        switch self {
        case .named(let name): name.value
        case .consult(let id): String(id)
        }
    }

    /// ``displayName`` straight from a key, without validating it again (it is in every stored frame).
    package static func displayName(ofKey key: String) -> String {
        if let colon = key.firstIndex(of: ":") { return String(key[key.index(after: colon)...]) }
        return key
    }

    /// Its routing key on the groups exchange (``ChatTopology/routingKey(forGroup:)``).
    package var routingKey: String { ChatTopology.routingKey(forGroup: key) }

    package var description: String { key }

    package init(from decoder: any Decoder) throws {
        let key = try decoder.singleValueContainer().decode(String.self)
        guard let group = ChatGroup(key: key) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a room: \(key)"))
        }
        self = group
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(key)
    }
}
