import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import NIOPosix
import Synchronization

/// Monotonic nanoseconds, comparable across the generator's threads.
@inline(__always) func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// A one-shot signal many tasks can wait for, or be called back on (with the monotonic time it opened).
final class Gate: Sendable {
    private struct State {
        var openedAt: UInt64?
        var waiters: [CheckedContinuation<Void, Never>] = []
        var callbacks: [@Sendable (UInt64) -> Void] = []
    }
    private let state = Mutex(State())

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resume = state.withLock { s -> Bool in
                if s.openedAt != nil { return true }
                s.waiters.append(c)
                return false
            }
            if resume { c.resume() }
        }
    }

    /// Calls `callback` when the gate opens (at once if it is open), with `nowNanos()` of the opening.
    func onOpen(_ callback: @escaping @Sendable (UInt64) -> Void) {
        let openedAt = state.withLock { s -> UInt64? in
            if s.openedAt == nil { s.callbacks.append(callback) }
            return s.openedAt
        }
        if let openedAt { callback(openedAt) }
    }

    func open() {
        let now = nowNanos()
        let (waiters, callbacks) = state.withLock { s -> ([CheckedContinuation<Void, Never>], [@Sendable (UInt64) -> Void]) in
            if s.openedAt != nil { return ([], []) }
            s.openedAt = now
            defer {
                s.waiters = []
                s.callbacks = []
            }
            return (s.waiters, s.callbacks)
        }
        waiters.forEach { $0.resume() }
        callbacks.forEach { $0(now) }
    }

    var isOpen: Bool { state.withLock { $0.openedAt != nil } }
}

/// One client's role in a run.
struct ClientPlan: Sendable {
    let index: Int
    let room: Int
    let roomName: String
    let url: String
    let sender: Int?          // global sender id, or nil for a pure receiver
    let consultEmail: String? // consult: this client's email
    let shopEmail: String?
    let visitorEmail: String?
}

/// What one client saw; merged into the report at the end.
struct ClientResult: Sendable {
    var connected = false
    var sent = 0
    var received = 0          // unique chat deliveries of this run
    var duplicates = 0
    var misrouted = 0
    var orderViolations = 0
    var errors = 0
    var latenciesMicros: [UInt32] = []
    var scheduleLagMaxMs = 0.0
}

/// Shared progress counters (atomics: updated by every client).
final class Progress: Sendable {
    let connected = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let received = Atomic<Int>(0)
}

struct RunSetup: Sendable {
    let runID: String
    let plans: [ClientPlan]
    let membersPerRoom: Int
}

enum Setup {
    /// Plans the clients; for consultation rooms, creates the rooms (and tokens) first.
    static func make(_ o: Options, clients perRoom: Int) async throws -> RunSetup {
        let runID = String(UUID().uuidString.prefix(6)).lowercased()
        var plans: [ClientPlan] = []
        var senderID = 0
        for room in 0..<o.rooms {
            if o.protocolKind == "consult" {
                let shop = "shop-\(runID)-\(room)@bench.example", visitor = "visitor-\(runID)-\(room)@bench.example"
                let (roomID, tokens) = try await createConsultRoom(o, shop: shop, visitor: visitor)
                for (i, (email, token)) in [(shop, tokens.0), (visitor, tokens.1)].enumerated() {
                    var url = "\(o.wsBase)/ws/room/\(roomID)/messages"
                    if let token { url += "?token=\(token)" }
                    plans.append(ClientPlan(index: plans.count, room: room, roomName: "\(roomID)", url: url,
                                            sender: i < o.senders ? senderID : nil, consultEmail: email, shopEmail: shop, visitorEmail: visitor))
                    if i < o.senders { senderID += 1 }
                }
            } else {
                let name = "bench_\(runID)_\(room)"  // \w+ only: the reference routes rooms with the tutorial's regex
                let url = o.protocolKind == "centrifuge" ? "\(o.wsBase)/connection/websocket" : "\(o.wsBase)/ws/chat/\(name)/"
                for i in 0..<perRoom {
                    plans.append(ClientPlan(index: plans.count, room: room, roomName: name, url: url,
                                            sender: i < o.senders ? senderID : nil, consultEmail: nil, shopEmail: nil, visitorEmail: nil))
                    if i < o.senders { senderID += 1 }
                }
            }
        }
        return RunSetup(runID: runID, plans: plans, membersPerRoom: o.protocolKind == "consult" ? 2 : perRoom)
    }

    static func createConsultRoom(_ o: Options, shop: String, visitor: String) async throws -> (Int, (String?, String?)) {
        if o.api == "anchor" {
            let room = try await post(o, "/chat/rooms/", ["shop_user_email": shop, "visitor_user_email": visitor], token: nil)
            guard let id = room["id"] as? Int else { throw SetupError("no room id in \(room)") }
            return (id, (nil, nil))
        }
        let shopToken = try await post(o, "/api/dev/token", ["email": shop, "role": "shop"], token: nil)["token"] as? String
        let visitorToken = try await post(o, "/api/dev/token", ["email": visitor, "role": "visitor"], token: nil)["token"] as? String
        let room = try await post(o, "/api/rooms", ["shop_user_email": shop, "visitor_user_email": visitor], token: shopToken)
        guard let id = room["id"] as? Int else { throw SetupError("no room id in \(room)") }
        return (id, (shopToken, visitorToken))
    }

    static func post(_ o: Options, _ path: String, _ body: [String: String], token: String?) async throws -> [String: Any] {
        var request = URLRequest(url: URL(string: o.url + path)!)
        request.httpMethod = "POST"
        request.httpBody = try JSONSerialization.data(withJSONObject: body)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue(o.originHeader, forHTTPHeaderField: "Origin")
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, _) = try await URLSession.shared.data(for: request)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw SetupError("not JSON from \(path)") }
        return object
    }
}

struct SetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct Delivery {
    var room: Int
    var sender: Int
    var n: Int
    var sentAt: UInt64
}

/// `"message": "<run>|<room>|<sender>|<n>|<t>"` → its parts, scanning the frame's UTF-8 bytes (no JSON
/// decoding and no Foundation string search per frame: the generator must stay cheap).
private let messageKey: [UInt8] = Array("\"message\"".utf8)

/// The delivery a frame's bytes carry, if it is one of run `runID`'s messages (other frames, such as history
/// from earlier runs or errors, give nil).
func parseDelivery(_ bytes: UnsafeRawBufferPointer, runID: [UInt8]) -> Delivery? {
    let key = messageKey
    let count = bytes.count
    var i = 0
    var found = -1
    while i + key.count <= count {
        if bytes[i] == UInt8(ascii: "\""), bytes[i + 1] == UInt8(ascii: "m") {
            var match = true
            for k in 2..<key.count where bytes[i + k] != key[k] { match = false; break }
            if match { found = i + key.count; break }
        }
        i += 1
    }
    guard found >= 0 else { return nil }
    i = found
    while i < count, bytes[i] == UInt8(ascii: ":") || bytes[i] == UInt8(ascii: " ") { i += 1 }
    guard i < count, bytes[i] == UInt8(ascii: "\"") else { return nil }
    i += 1
    // run id, then four unsigned integers separated by '|', up to the closing quote.
    let runStart = i
    while i < count, bytes[i] != UInt8(ascii: "|"), bytes[i] != UInt8(ascii: "\"") { i += 1 }
    guard i < count, bytes[i] == UInt8(ascii: "|") else { return nil }
    guard i - runStart == runID.count, bytes[runStart..<i].elementsEqual(runID) else { return nil }
    var numbers: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    for field in 0..<4 {
        i += 1
        var value: UInt64 = 0
        var digits = 0
        while i < count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
            value = value &* 10 &+ UInt64(bytes[i] - UInt8(ascii: "0"))
            digits += 1
            i += 1
        }
        guard digits > 0, i < count else { return nil }
        let terminator: UInt8 = field == 3 ? UInt8(ascii: "\"") : UInt8(ascii: "|")
        guard bytes[i] == terminator else { return nil }
        switch field {
        case 0: numbers.0 = value
        case 1: numbers.1 = value
        case 2: numbers.2 = value
        default: numbers.3 = value
        }
    }
    return Delivery(room: Int(numbers.0), sender: Int(numbers.1), n: Int(numbers.2), sentAt: numbers.3)
}
