import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// Runs one client: connect and upgrade, wait for the start, send on schedule (if a sender), record every
/// frame, and close when the run stops.
///
/// Each client is a NIO channel whose WebSocket handler does everything on the channel's event loop: frames are
/// parsed from the bytes as they are read, sends are timers on the same loop, and no task, stream or lock sits on
/// the per-frame path. The generator shares the machine's cores with the server it measures, so what it spends
/// per frame is taken from that server.
struct ClientRunner: Sendable {
    let plan: ClientPlan
    let options: Options
    let runID: String
    let start: Gate
    let stop: Gate
    let progress: Progress
    let group: any EventLoopGroup
    let rate: Double?

    /// How long a connection may take to be upgraded before it counts as failed.
    static let upgradeTimeout: TimeAmount = .seconds(30)
    static let maxFrameSize = 1 << 20

    func run() async -> ClientResult {
        let loop = group.next()
        guard let target = WebSocketTarget(plan.url) else {
            noteFailure("not a ws:// URL")
            return ClientResult()
        }
        let runner = self
        guard let bound = try? await loop.submit({ NIOLoopBound(ClientSession(runner: runner, loop: loop), eventLoop: loop) }).get() else {
            return ClientResult()
        }
        let host = target.host, port = target.port
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.uri, headers: [
            "Host": "\(host):\(port)", "Origin": options.originHeader, "Content-Length": "0",
        ])
        let bootstrap = ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: Self.maxFrameSize, automaticErrorHandling: true) {
                    channel, _ in
                    // The request handler sits before the frame decoder the upgrade added: it goes first.
                    channel.pipeline.removeHandler(name: UpgradeRequestHandler.name).flatMapThrowing {
                        try channel.pipeline.syncOperations.addHandler(WebSocketLoadHandler(session: bound.value))
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes,
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try channel.pipeline.syncOperations.addHandler(UpgradeRequestHandler(head: head), name: UpgradeRequestHandler.name)
                }
            }
        do {
            let channel = try await bootstrap.connect(host: host, port: port).get()
            try? await channel.closeFuture.get()
            let result = try await loop.submit { bound.value.result }.get()
            if !result.connected { noteFailure("closed before the upgrade completed") }
            if !stop.isOpen { await stop.wait() }
            return result
        } catch {
            noteFailure("\(error)")
            return ClientResult()
        }
    }

    func noteFailure(_ reason: String) {
        if progress.failed.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
            FileHandle.standardError.write(Data("LoadGenerator: first failed connection (\(plan.url)): \(reason)\n".utf8))
        }
    }

    /// The frame of this client's message `n`: `{"message":"<run>|<room>|<sender>|<n>|<send time ns>"}`, plus
    /// the emails the consultation protocol wants, or inside a Centrifuge publish command (ids from 3 on: 1 and
    /// 2 are the connect and the subscribe).
    func frame(_ n: Int, sender: Int, into buffer: inout ByteBuffer) {
        let text = "\(runID)|\(plan.room)|\(sender)|\(n)|\(nowNanos())"
        switch options.protocolKind {
        case "consult":
            buffer.writeString("{\"message\":\"\(text)\",\"sender_email\":\"\(plan.consultEmail!)\",\"shop_user_email\":\"\(plan.shopEmail!)\",\"visitor_user_email\":\"\(plan.visitorEmail!)\"}")
        case "centrifuge":
            buffer.writeString("{\"id\":\(n + 3),\"method\":3,\"params\":{\"channel\":\"\(plan.roomName)\",\"data\":{\"message\":\"\(text)\"}}}")
        default:
            buffer.writeString("{\"message\":\"\(text)\"}")
        }
    }

    /// Centrifuge: the connect and subscribe commands, in one frame (the protocol takes several objects per
    /// frame, one per line); the client counts as connected once the subscribe is answered.
    func centrifugeJoin(into buffer: inout ByteBuffer) {
        buffer.writeString("{\"id\":1,\"params\":{}}\n{\"id\":2,\"method\":1,\"params\":{\"channel\":\"\(plan.roomName)\"}}")
    }
}

/// Host, port and request target of a `ws://` URL.
struct WebSocketTarget {
    let host: String
    let port: Int
    let uri: String

    init?(_ url: String) {
        guard let components = URLComponents(string: url), components.scheme == "ws", let host = components.host else { return nil }
        self.host = host
        self.port = components.port ?? 80
        var uri = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        if let query = components.percentEncodedQuery { uri += "?\(query)" }
        self.uri = uri
    }
}

/// Sends the upgrade request once the connection is up (the client upgrade handler adds the WebSocket
/// headers to it), and closes a connection that is not upgraded: a refusal (403, 503, …), a protocol error,
/// or no answer within ``ClientRunner/upgradeTimeout``.
final class UpgradeRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    static let name = "upgrade-request"
    let head: HTTPRequestHead
    var timeout: Scheduled<Void>?

    init(head: HTTPRequestHead) {
        self.head = head
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        let channel = context.channel
        timeout = context.eventLoop.scheduleTask(in: ClientRunner.upgradeTimeout) { channel.close(promise: nil) }
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        context.fireChannelInactive()
    }

    /// Anything that reaches here is a response that was not an upgrade.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// One client's state, confined to its channel's event loop (reached from elsewhere only through
/// `NIOLoopBound` and `loop.execute`).
final class ClientSession {
    let runner: ClientRunner
    let loop: any EventLoop
    var result = ClientResult()
    /// Per sender, how often each message number was seen (duplicates), and the highest number seen (order).
    var seen: [Int: [UInt8]] = [:]
    var last: [Int: Int] = [:]
    var echoes = 0
    let runIDBytes: [UInt8]

    init(runner: ClientRunner, loop: any EventLoop) {
        self.runner = runner
        self.loop = loop
        self.runIDBytes = Array(runner.runID.utf8)
    }
}

/// The client's WebSocket: records deliveries, answers pings and closes, sends on its schedule, and closes
/// cleanly when the run stops.
final class WebSocketLoadHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let session: ClientSession
    var context: ChannelHandlerContext?
    /// A text message split over several frames, gathered until its last frame.
    var fragments: ByteBuffer?
    var closeSent = false
    var sending = false
    var stopped = false

    // Schedule.
    var sent = 0
    var begin: UInt64 = 0
    var end: UInt64 = 0
    var sendTimer: Scheduled<Void>?
    // Closed loop.
    var credited = 0
    var lastProgressAt: UInt64 = 0
    var echoCheck: Scheduled<Void>?

    init(session: ClientSession) {
        self.session = session
    }

    var runner: ClientRunner { session.runner }
    var options: Options { session.runner.options }
    var centrifuge: Bool { session.runner.options.protocolKind == "centrifuge" }

    /// The socket is in its room (named and consult: once upgraded; Centrifuge: once subscribed).
    func joined() {
        guard !session.result.connected else { return }
        session.result.connected = true
        runner.progress.connected.add(1, ordering: .relaxed)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if centrifuge {
            var join = context.channel.allocator.buffer(capacity: 128)
            runner.centrifugeJoin(into: &join)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: join)), promise: nil)
        } else {
            joined()
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        runner.stop.onOpen { _ in loop.execute { bound.value.stopRun() } }
        if runner.plan.sender != nil {
            runner.start.onOpen { nanos in loop.execute { bound.value.startSending(at: nanos) } }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopSending()
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            if frame.fin {
                received(frame.unmaskedData)
            } else {
                fragments = frame.unmaskedData
            }
        case .continuation:
            guard var gathered = fragments else { return }
            var more = frame.unmaskedData
            gathered.writeBuffer(&more)
            if frame.fin {
                fragments = nil
                received(gathered)
            } else {
                fragments = gathered
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            stopSending()
            if closeSent {
                context.close(promise: nil)
            } else {
                closeSent = true
                var data = frame.unmaskedData
                let code = data.readSlice(length: min(2, data.readableBytes)) ?? context.channel.allocator.buffer(capacity: 0)
                let reply = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: code)
                context.writeAndFlush(wrapOutboundOut(reply)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: Receiving

    func received(_ buffer: ByteBuffer) {
        guard centrifuge else {
            buffer.withUnsafeReadableBytes { received(object: $0) }
            return
        }
        // Centrifuge: one JSON object per line; the reply to the subscribe (id 2) completes the join.
        buffer.withUnsafeReadableBytes { bytes in
            var start = 0
            while start < bytes.count {
                let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
                let object = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
                if !session.result.connected, object.starts(with: subscribeReplyPrefix) {
                    if object.firstRange(of: errorKey) == nil { joined() } else { received(object: object) }
                } else if !object.isEmpty {
                    received(object: object)
                }
                start = end + 1
            }
        }
    }

    func received(object bytes: UnsafeRawBufferPointer) {
        guard let d = parseDelivery(bytes, runID: session.runIDBytes) else {
            if bytes.firstRange(of: errorKey) != nil {
                if session.result.errors == 0 { ErrorSamples.record(String(decoding: bytes, as: UTF8.self)) }
                session.result.errors += 1
            }
            return
        }
        let now = nowNanos()
        if d.room != runner.plan.room {
            session.result.misrouted += 1
            return
        }
        var counts = session.seen[d.sender, default: []]
        if counts.count <= d.n { counts.append(contentsOf: repeatElement(0, count: d.n - counts.count + 16)) }
        counts[d.n] &+= 1
        session.seen[d.sender] = counts
        if counts[d.n] > 1 {
            session.result.duplicates += 1
            return
        }
        if let l = session.last[d.sender], d.n < l { session.result.orderViolations += 1 }
        session.last[d.sender] = max(session.last[d.sender] ?? -1, d.n)
        session.result.received += 1
        session.result.latenciesMicros.append(UInt32(min((now &- d.sentAt) / 1000, UInt64(UInt32.max))))
        runner.progress.received.add(1, ordering: .relaxed)
        if d.sender == runner.plan.sender {
            session.echoes += 1
            lastProgressAt = now
            if options.window != nil { fillWindow() }
        }
    }

    // MARK: Sending

    /// Open loop: message i goes at start + offset + i/rate whatever came back. Closed loop: at most `window`
    /// of this sender's messages unechoed (a window with no echo for `echoTimeout` is written off: the loss
    /// shows in the counts). Both stop at the end of the duration, when the run stops, or when the socket closes.
    func startSending(at startNanos: UInt64) {
        guard context != nil, !stopped, !sending else { return }
        sending = true
        begin = startNanos
        end = begin + UInt64(options.duration * 1e9)
        if let rate = runner.rate {
            let offset = UInt64(Double.random(in: 0..<1) * 1e9 / rate)
            begin += offset
            scheduleNext(rate: rate)
        } else if options.window != nil {
            var first = begin
            if options.stopAfterFirstEcho {
                // Idle probes are staggered (socket i starts at i / probe rate): a check that every socket
                // answers must not turn into a burst of thousands of messages at once.
                first += UInt64(Double(runner.plan.index) / options.probeRate * 1e9)
            }
            sendTimer = session.loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(first)) { [self] in
                lastProgressAt = nowNanos()
                fillWindow()
                scheduleStallCheck()
            }
        }
    }

    func scheduleNext(rate: Double) {
        let due = begin + UInt64(Double(sent) * 1e9 / rate)
        guard due < end else {
            finishSending()
            return
        }
        sendTimer = session.loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(due)) { [self] in
            guard sending else { return }
            let lag = Double(nowNanos() &- due) / 1e6
            if lag > session.result.scheduleLagMaxMs, lag < 1e9 { session.result.scheduleLagMaxMs = lag }
            send()
            scheduleNext(rate: rate)
        }
    }

    func fillWindow() {
        guard sending, let window = options.window else { return }
        if options.stopAfterFirstEcho && session.echoes > 0 {
            finishSending()
            return
        }
        if nowNanos() >= end {
            finishSending()
            return
        }
        while sent - credited - session.echoes < window { send() }
    }

    /// Written-off windows are looked for a few times per echo timeout.
    func scheduleStallCheck() {
        let period = TimeAmount.nanoseconds(Int64(options.echoTimeout * 1e9 / 4))
        echoCheck = session.loop.assumeIsolated().scheduleTask(in: period) { [self] in
            checkStalled()
            if sending { scheduleStallCheck() }
        }
    }

    func checkStalled() {
        guard sending else { return }
        let now = nowNanos()
        if now >= end {
            finishSending()
            return
        }
        if now &- lastProgressAt > UInt64(options.echoTimeout * 1e9) {
            credited = sent - session.echoes
            lastProgressAt = now
            fillWindow()
        }
    }

    func send() {
        guard let context, let sender = runner.plan.sender else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        runner.frame(sent, sender: sender, into: &buffer)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: buffer)), promise: nil)
        sent += 1
        session.result.sent = sent
    }

    func finishSending() {
        sending = false
        sendTimer?.cancel()
        sendTimer = nil
        echoCheck?.cancel()
        echoCheck = nil
    }

    func stopSending() {
        stopped = true
        finishSending()
    }

    /// The run is over: close with 1000, and drop the connection if the server does not answer the close.
    func stopRun() {
        stopSending()
        guard let context, !closeSent else { return }
        closeSent = true
        var code = context.channel.allocator.buffer(capacity: 2)
        code.write(webSocketErrorCode: .normalClosure)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: code)),
                              promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }
}

private let errorKey = Array("\"error\"".utf8)
private let subscribeReplyPrefix = Array("{\"id\":2,".utf8)

/// The first few distinct error frames of a run, printed to stderr at its end (what the errors were).
enum ErrorSamples {
    private static let samples = Mutex<[String: Int]>([:])

    static func record(_ text: String) {
        samples.withLock { s in
            if s[text] != nil || s.count < 5 { s[text, default: 0] += 1 }
        }
    }

    static func report() {
        let all = samples.withLock { s in defer { s = [:] }; return s }
        for (text, count) in all.sorted(by: { $0.value > $1.value }) {
            FileHandle.standardError.write(Data("LoadGenerator: error frame (first of a socket, \(count)×): \(text.prefix(200))\n".utf8))
        }
    }
}
