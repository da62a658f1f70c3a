import ChatProtocol
import ChatWire
import Foundation

/// How much the hand-written frame JSON saves over Foundation's coders, per message on the hot path: the
/// frame persistence encodes for every stored message, and the client frame the gateway parses. Prints
/// nanoseconds per frame for each way (`swift run -c release FrameEncoding [count]`).
struct Frame: Codable {
    var message: String
    var id: String
    var seq: Int64
    var room: String
    var time: String
    var sender_email: String?
}

let count = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 200_000 : 200_000
let stored = (0..<count).map {
    StoredChatMessage(id: "01J\($0)ABCDEFGHJKMNPQRSTV", group: "named:lobby", seq: Int64($0 + 1), sender: "visitor@example.com",
                      text: "hello there, message number \($0) <b>&</b> 안녕", createdAt: 1_764_576_000_000 + Int64($0))
}

func measure(_ name: String, _ body: () throws -> Int) rethrows {
    let start = ContinuousClock.now
    let bytes = try body()
    let elapsed = ContinuousClock.now - start
    let nanos = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
    print("\(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%7.0f", nanos / Double(count))) ns/frame  (\(bytes / count) bytes)")
}

let encoder = JSONEncoder()
measure("encode: JSONWriter (StoredChatMessage.clientFrame)") { stored.reduce(0) { $0 + $1.clientFrame.utf8.count } }
try measure("encode: JSONEncoder") {
    try stored.reduce(0) {
        $0 + (try encoder.encode(Frame(message: $1.text, id: $1.id, seq: $1.seq, room: "lobby",
                                       time: Timestamp.iso8601(millis: $1.createdAt), sender_email: $1.sender))).count
    }
}
let clientFrames = stored.map { Array(#"{"message": "\#($0.text)"}"#.utf8) }
measure("parse: ClientFrame.parseChatMessage (JSONSerialization)") { clientFrames.reduce(0) { $0 + ((try? ClientFrame.parseChatMessage($1))?.utf8.count ?? 0) } }
struct ClientMessage: Decodable { var message: String }
let decoder = JSONDecoder()
measure("parse: JSONDecoder") { clientFrames.reduce(0) { $0 + ((try? decoder.decode(ClientMessage.self, from: Data($1)))?.message.utf8.count ?? 0) } }
measure("part: Timestamp.iso8601") { stored.reduce(0) { $0 + Timestamp.iso8601(millis: $1.createdAt).utf8.count } }
measure("part: JSONWriter.quoted(text)") { stored.reduce(0) { $0 + JSONWriter.quoted($1.text).utf8.count } }

// The wire protocol's inbound batch (ChatWire, binary) against the JSON array it replaced: what a gateway
// writes and a persistence worker reads for every chat message, in batches of 50.
let inbound = stored.map {
    InboundChatMessage(id: $0.id, group: $0.group, sender: $0.sender, text: $0.text, receivedAt: $0.createdAt,
                       clientID: "c-\($0.seq)", replyTo: "chat.gateway.g1", socket: 7)
}
let batches = stride(from: 0, to: inbound.count, by: 50).map { Array(inbound[$0..<min($0 + 50, inbound.count)]) }
measure("inbound batch: encode, ChatWire (binary)") { batches.reduce(0) { $0 + PartitionQueueMessage.messages($1).encode().readableBytes } }
try measure("inbound batch: encode, JSONEncoder") { try batches.reduce(0) { $0 + (try encoder.encode($1)).count } }
let wireBodies = batches.map { PartitionQueueMessage.messages($0).encode() }
let jsonBodies = try batches.map { try encoder.encode($0) }
try measure("inbound batch: decode, ChatWire (binary)") {
    try wireBodies.reduce(0) { total, body in
        guard case .messages(let m) = try PartitionQueueMessage.decode(type: "chat.messages", body: body) else { return total }
        return total + m.count
    }
}
try measure("inbound batch: decode, JSONDecoder") { try jsonBodies.reduce(0) { $0 + (try decoder.decode([InboundChatMessage].self, from: $1)).count } }
