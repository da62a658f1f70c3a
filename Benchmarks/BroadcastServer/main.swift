import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

/// The physical ceiling for the benchmark: a bare in-process WebSocket broadcast server speaking the
/// tutorial's named-room protocol (`/ws/chat/<room>/`, `{"message"}` in and out) with no broker, no
/// database and no history. Each frame is encoded once and written to every socket of the room.
///
///   BroadcastServer [--port 8701]

final class Rooms: Sendable {
    private let rooms = Mutex<[String: [Int: AsyncStream<ByteBuffer>.Continuation]]>([:])
    private let nextID = Atomic<Int>(0)

    func join(_ room: String) -> (Int, AsyncStream<ByteBuffer>) {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).newValue
        let (stream, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingOldest(4096))
        rooms.withLock { $0[room, default: [:]][id] = continuation }
        return (id, stream)
    }

    func leave(_ room: String, _ id: Int) {
        rooms.withLock { rooms in
            rooms[room]?[id]?.finish()
            rooms[room]?[id] = nil
            if rooms[room]?.isEmpty == true { rooms[room] = nil }
        }
    }

    func broadcast(_ room: String, _ frame: ByteBuffer) {
        let members = rooms.withLock { $0[room].map { Array($0.values) } ?? [] }
        for member in members { member.yield(frame) }
    }
}

var port = 8701
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    if argument == "--port", let value = arguments.next(), let p = Int(value) { port = p }
}

let rooms = Rooms()
let sockets = Router(context: BasicWebSocketRequestContext.self)
sockets.ws("/ws/chat/:room") { _, _ in .upgrade([:]) } onUpgrade: { inbound, outbound, context in
    let room = context.requestContext.parameters.get("room") ?? ""
    let (id, mailbox) = rooms.join(room)
    defer { rooms.leave(room, id) }
    await withTaskGroup(of: Void.self) { tasks in
        tasks.addTask {
            for await frame in mailbox {
                do { try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame))) } catch { return }
            }
        }
        tasks.addTask {
            do {
                for try await message in inbound.messages(maxSize: 1 << 16) {
                    guard case .text(let text) = message,
                          let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                          let body = object["message"] as? String else { continue }
                    let data = try JSONSerialization.data(withJSONObject: ["message": body])
                    rooms.broadcast(room, ByteBuffer(bytes: data))
                }
            } catch {}
        }
        await tasks.next()
        tasks.cancelAll()
        rooms.leave(room, id)
    }
}
var logger = Logger(label: "broadcast")
logger.logLevel = .warning
let app = Application(router: Router(), server: .http1WebSocketUpgrade(webSocketRouter: sockets),
                      configuration: .init(address: .hostname("127.0.0.1", port: port)), logger: logger)
print("bare broadcast server on http://127.0.0.1:\(port)")
try await app.runService()
