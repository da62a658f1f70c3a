import Foundation

/// Command-line options (`LoadGenerator --help`).
struct Options: Sendable {
    var url = "http://127.0.0.1:8000"
    var origin: String?
    /// `named` (tutorial rooms), `consult` (1:1 rooms) or `centrifuge` (Centrifuge's JSON protocol, rooms as channels).
    var protocolKind = "named"
    /// How consultation rooms are set up: `ours` (dev tokens + POST /api/rooms) or `anchor` (POST /chat/rooms/).
    var api = "ours"
    var rooms = 10
    var clientsPerRoom = 10
    var sendersPerRoom: Int?
    /// Messages per second per sender, on a fixed schedule (open loop).
    var rate: Double?
    /// Closed loop: each sender keeps at most this many of its own messages unechoed.
    var window: Int?
    /// Closed loop: after this long without its echo, a sender counts its window as lost and sends again.
    var echoTimeout = 3.0
    /// Idle probes: a sender stops once its first echo is back.
    var stopAfterFirstEcho = false
    var duration = 5.0
    var drain = 10.0
    var settle = 1.5
    var sweep: [Double] = []
    var p99LimitMs = 100.0
    var pids: [Int32] = []
    var json: String?
    var idle: Int?
    var hold = 5.0
    /// Idle mode: first probes per second across all sockets (they are staggered, not sent at once).
    var probeRate = 400.0
    var threads = 2
    var label = ""
    var connectConcurrency = 256
    /// New connections per second (nil: as fast as `connectConcurrency` allows). Idle mode defaults to 1,000/s:
    /// each socket's join (room service, binding, history) runs after its handshake, which alone paces nothing.
    var connectRate: Double?

    static let help = """
        LoadGenerator: drives a chat server that speaks the tutorial's protocols (ours, the Django reference,
        the bare broadcast server) and reports deliveries, losses, duplicates, order, latency and server cost.

          --url URL               base URL (default http://127.0.0.1:8000)
          --origin ORIGIN         Origin of the REST set-up calls (default: the base URL); WebSocket
                                  upgrades carry the client's own `Origin: ws://<host>`
          --protocol named|consult|centrifuge
                                  centrifuge: one WebSocket at /connection/websocket per client, connect +
                                  subscribe to its room's channel, publish commands, pushes (several per frame)
          --api ours|anchor       how consultation rooms are created (default ours)
          --rooms R --clients C   R rooms of C clients (consult: C is 2)
          --senders S             senders per room (default: all clients)
          --rate R                messages/s per sender, open loop on a fixed schedule
          --window W              closed loop: at most W unechoed messages per sender
          --duration S --drain S --settle S
          --sweep r1,r2,...       run each rate; report the highest with no loss and p99 under --p99-limit-ms
          --p99-limit-ms MS       default 100
          --pids P1,P2            server processes whose CPU time and peak RSS to report
          --idle N --hold S       idle mode: hold N connections, check each answers, report RSS per connection
          --probe-rate R          idle mode: first probes per second, staggered over the sockets (default 400)
          --connect-rate R        new connections per second (idle mode default 1000; otherwise unpaced)
          --threads N             event loop threads of the generator (default 2)
          --json FILE             also write the report as JSON
          --label TEXT
        """

    static func parse(_ arguments: [String]) -> Options {
        var o = Options()
        var i = 0
        func value() -> String {
            i += 1
            guard i < arguments.count else { fail("missing value for \(arguments[i - 1])") }
            return arguments[i]
        }
        func int(_ name: String) -> Int { Int(value()) ?? invalid(name) }
        func double(_ name: String) -> Double { Double(value()) ?? invalid(name) }
        while i < arguments.count {
            switch arguments[i] {
            case "--url": o.url = value()
            case "--origin": o.origin = value()
            case "--protocol": o.protocolKind = value()
            case "--api": o.api = value()
            case "--rooms": o.rooms = int("--rooms")
            case "--clients": o.clientsPerRoom = int("--clients")
            case "--senders": o.sendersPerRoom = int("--senders")
            case "--rate": o.rate = double("--rate")
            case "--window": o.window = int("--window")
            case "--echo-timeout": o.echoTimeout = double("--echo-timeout")
            case "--duration": o.duration = double("--duration")
            case "--drain": o.drain = double("--drain")
            case "--settle": o.settle = double("--settle")
            case "--sweep": o.sweep = value().split(separator: ",").map { Double($0) ?? invalid("--sweep") }
            case "--p99-limit-ms": o.p99LimitMs = double("--p99-limit-ms")
            case "--pids": o.pids = value().split(separator: ",").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
            case "--json": o.json = value()
            case "--idle": o.idle = int("--idle")
            case "--hold": o.hold = double("--hold")
            case "--probe-rate": o.probeRate = double("--probe-rate")
            case "--threads": o.threads = int("--threads")
            case "--label": o.label = value()
            case "--connect-concurrency": o.connectConcurrency = int("--connect-concurrency")
            case "--connect-rate": o.connectRate = double("--connect-rate")
            case "-h", "--help": print(help); exit(0)
            default: fail("unknown option \(arguments[i])")
            }
            i += 1
        }
        guard ["named", "consult", "centrifuge"].contains(o.protocolKind) else { fail("unknown protocol \(o.protocolKind)") }
        if o.protocolKind == "consult" { o.clientsPerRoom = 2 }
        if o.rate == nil && o.window == nil && o.sweep.isEmpty && o.idle == nil { o.rate = 10 }
        return o
    }

    var senders: Int { min(sendersPerRoom ?? clientsPerRoom, clientsPerRoom) }
    var originHeader: String { origin ?? url }
    var wsBase: String { url.replacingOccurrences(of: "http://", with: "ws://").replacingOccurrences(of: "https://", with: "wss://") }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("LoadGenerator: \(message)\n".utf8))
    exit(2)
}

func invalid<T>(_ option: String) -> T {
    fail("invalid value for \(option)")
}
