import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// One WebSocket of the gateway: the last handler of its channel's pipeline, after NIO's frame decoder and
/// encoder and the fragment aggregator. It keeps no rules of its own: every event goes to its
/// ``SocketStateMachine``, and it carries out the actions the machine emits. There is no task, async stream or
/// buffer per socket once it is open: an idle socket costs its channel, its pipeline and this object, and a
/// broadcast is written to it straight from its event loop. Everything here runs on that loop; the
/// asynchronous parts (opening, gap filling, read receipts, token checks) run in short tasks that hop back to
/// the loop with their results.
///
/// Opening order, so that nothing is missed or doubled between history and live messages: the room is
/// joined, the socket is added to the room's group (from then on every broadcast reaches ``deliver(_:)``,
/// which ``ChatSession`` holds back), then history is read and written, then the held messages are written,
/// skipping every seq the history already had.
final class ChatSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let services: SocketServices
    /// The upgrade request's head, until the opener has it (it holds every header: not kept per socket).
    private var head: HTTPRequestHead?
    let endpoint: SocketEndpoint
    /// The services' logger, with the room once the socket has one.
    private(set) var logger: Logger

    private var context: ChannelHandlerContext?
    /// NIO's frame encoder's place in the pipeline: pre-encoded frames are written from there.
    private var rawWriter: ChannelHandlerContext?
    private var member: SocketMember?
    private var machine: SocketStateMachine
    static let drainLimit = TimeAmount.seconds(3)
    /// When the socket's token expires (4401), unless it is refreshed first.
    private var expiry: Scheduled<Void>?

    init(services: SocketServices, endpoint: SocketEndpoint, head: HTTPRequestHead) {
        self.services = services
        self.endpoint = endpoint
        self.head = head
        self.logger = services.logger
        self.machine = SocketStateMachine(maxFrameBytes: services.configuration.maxFrameBytes,
                                          mailboxCapacity: services.configuration.mailboxCapacity, rates: services.rates)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        services.limiter.enter()
        GatewayMetrics.socketsOpen.increment()
        let hub = services.backend.hub
        let member = SocketMember(memberID: hub.allocateID(), handler: NIOLoopBound(self, eventLoop: context.eventLoop))
        hub.register(member)
        // Broadcast frames come encoded (WebSocket header included) and are written below the frame encoder.
        // The upgrade always installs the encoder; without it (never seen) encoded broadcasts are not written.
        rawWriter = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        self.member = member
        let opener = SessionOpener(services: services, endpoint: endpoint, headers: head?.headers ?? [:], uri: head?.uri ?? "", member: member)
        head = nil
        let handler = member.handler
        Task {
            let outcome = await opener.open()
            handler.eventLoop.execute { handler.value.opened(outcome) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        run { $0.closed(emit: $1) }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        run { $0.closed(emit: $1) }
        self.context = nil
        rawWriter = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text: run { $0.text(frame.unmaskedData, emit: $1) }
        case .binary: run { $0.binary(emit: $1) }
        case .ping: run { $0.ping(frame.unmaskedData, emit: $1) }
        case .connectionClose: run { $0.clientClosed(frame.unmaskedData, emit: $1) }
        default: break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketFrameAggregator.Error, error == .accumulatedFrameSizeIsTooLarge {
            run { $0.frameTooLarge(emit: $1) }
        } else {
            logger.debug("socket error", metadata: ["error": "\(error)"])
            run { $0.protocolError(emit: $1) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            run { $0.quiesce(emit: $1) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        machine.writabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    // MARK: Results of the asynchronous parts, and the hub

    /// The outcome of ``SessionOpener/open()``, back on the loop.
    func opened(_ outcome: SessionOpener.Outcome) {
        let backend = services.backend, socketID = member?.memberID ?? 0
        // Who is here, at once; later changes come from the ``PresenceNotifier`` at most once a second.
        let presence = { () -> ByteBuffer in
            guard case .opened(let opened, _) = outcome else { return ByteBuffer() }
            return ByteBuffer(string: backend.presenceFrame(opened.group))
        }
        run { $0.opened(outcome, socketID: socketID, presence: presence, emit: $1) }
    }

    /// Broadcasts for this socket's room, on its loop.
    func deliver(_ messages: [ChannelMessage]) {
        run { $0.deliver(messages, writable: { context?.channel.isWritable ?? true }, emit: $1) }
    }

    /// Persistence's acks of this socket's messages (from the ``Hub``).
    func acknowledge(_ acks: [MessageAck]) {
        run { $0.acknowledged(acks, emit: $1) }
    }

    /// The server API disconnected this socket's user (on any gateway).
    func disconnectedByServer(_ reason: String) {
        run { $0.disconnectedByServer(reason, emit: $1) }
    }

    // MARK: Carrying out the machine's actions

    /// Actions emitted and not carried out yet (kept between calls for its capacity).
    private var pending: [SocketStateMachine.Action] = []

    /// Runs an event through the machine, then carries out what it emitted. Never while the machine runs: an
    /// action can close the channel, whose events come back into the machine at once.
    private func run(_ event: (inout SocketStateMachine, (SocketStateMachine.Action) -> Void) -> Void) {
        var actions: [SocketStateMachine.Action] = []
        swap(&actions, &pending)
        event(&machine) { actions.append($0) }
        for action in actions { perform(action) }
        actions.removeAll(keepingCapacity: true)
        if pending.isEmpty { swap(&actions, &pending) }
    }

    private func perform(_ action: SocketStateMachine.Action) {
        switch action {
        case .write(let frame):
            context?.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: frame)), promise: nil)
        case .writeEncoded(let wire):
            // Below NIO's frame encoder, so in order with what goes through it.
            rawWriter?.write(NIOAny(wire), promise: nil)
        case .errorFrame(let json):
            GatewayMetrics.errorFrames.increment()
            writeAndFlush(json)
        case .frame(let json):
            writeAndFlush(json)
        case .flush:
            context?.flush()
        case .pong(let data):
            context?.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: data)), promise: nil)
        case .sendClose(let code, let reason):
            guard let context else { return }
            var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
            data.write(webSocketErrorCode: code)
            data.writeString(reason)
            closeAfter(WebSocketFrame(fin: true, opcode: .connectionClose, data: data))
        case .answerClose(let code):
            closeAfter(WebSocketFrame(fin: true, opcode: .connectionClose, data: code))
        case .closeChannel:
            context?.close(promise: nil)
        case .attach(let opened):
            logger[metadataKey: "chat.room"] = .string(opened.group)
            if let user = opened.user, let member { services.backend.userSockets.add(user, member) }
        case .fillGap(let group, let after, let before):
            fillGap(group, after: after, before: before)
        case .submit(let group, let text, let sender, let clientID):
            submit(group, text: text, sender: sender, clientID: clientID)
        case .markRead(let room, let reader, let seq):
            markRead(room: room, reader: reader, upTo: seq)
        case .verifyRefresh(let token, let current):
            verify(token, for: current)
        case .scheduleExpiry(let date):
            scheduleExpiry(date)
        case .scheduleDrainDeadline:
            context?.eventLoop.scheduleTask(in: Self.drainLimit) { [weak self] in
                self?.run { $0.drainDeadlinePassed(emit: $1) }
            }
        case .warn(let message):
            logger.warning("\(message)")
        case .leave(let opened):
            if let member { leave(opened, member) }
        case .release(let room):
            services.limiter.leave()
            expiry?.cancel()
            expiry = nil
            GatewayMetrics.socketsOpen.decrement()
            guard let member else { return }
            if let user = room?.user { services.backend.userSockets.remove(user, member) }
            services.backend.hub.unregister(member)
            if let room { leave(room, member) }
        }
    }

    private func writeAndFlush(_ json: String) {
        context?.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: json))), promise: nil)
    }

    /// Writes a close frame and closes the connection once it is written.
    private func closeAfter(_ frame: WebSocketFrame) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }

    /// Leaves the room's group and tells the other services (once the socket has closed).
    private func leave(_ room: OpenedSession, _ member: SocketMember) {
        GatewayMetrics.leaves.increment()
        let backend = services.backend
        let logger = logger
        Task {
            do {
                try await backend.removeFromGroup(room.group, member)
            } catch {
                logger.warning("leaving the room's group failed", metadata: ["error": "\(error)"])
            }
            await backend.leave(group: room.group, email: room.presenceEmail, user: room.user)
        }
    }

    private func fillGap(_ group: String, after last: Int64, before seq: Int64) {
        guard let member else { return }
        let backend = services.backend, handler = member.handler, logger = logger
        Task {
            let missing: (firstSeq: Int64?, frames: [ByteBuffer])?
            do {
                missing = try await backend.history(group: group, limit: Int(min(seq - last - 1, 200)), beforeSeq: seq)
            } catch {
                logger.warning("history did not fill a gap", metadata: ["error": "\(error)"])
                missing = nil
            }
            handler.eventLoop.execute { handler.value.run { $0.gapFilled(missing, before: seq, emit: $1) } }
        }
    }

    /// Hands a message to the persistence service without waiting for the broker; a message the broker does
    /// not take is reported to this socket with an error frame. With a `client_id`, persistence acks it to this
    /// socket once it is stored (through the ``Hub``).
    private func submit(_ group: String, text: String, sender: Email?, clientID: String?) {
        guard let member else { return }
        let message = InboundChatMessage(id: MessageID.timeOrdered(), group: group, sender: sender?.value, text: text,
                                         receivedAt: Timestamp.nowMillis(), clientID: clientID,
                                         replyTo: clientID == nil ? nil : services.backend.replyQueue,
                                         socket: clientID == nil ? nil : member.memberID)
        GatewayMetrics.messagesIn.increment()
        let handler = member.handler, logger = logger
        services.backend.submit(message).onFailure { error in
            logger.warning("message not accepted by the broker", metadata: ["error": "\(error)"])
            handler.eventLoop.execute { handler.value.run { $0.submitFailed(awaitedAck: clientID != nil, emit: $1) } }
        }
    }

    private func markRead(room: ConsultRoom, reader: Email, upTo seq: Int64) {
        guard let member else { return }
        let backend = services.backend, handler = member.handler
        Task {
            do {
                let mark = try await backend.markRead(roomID: room.id, email: reader, seq: seq)
                try await backend.sendToGroup(room.group, frame: ByteBuffer(string: ClientFrame.read(readerEmail: reader.value, upToSeq: mark)))
            } catch {
                handler.eventLoop.execute { handler.value.run { $0.markReadFailed(emit: $1) } }
            }
        }
    }

    /// Closes the socket (4401) when its token expires; a refresh moves the time.
    private func scheduleExpiry(_ date: Date?) {
        expiry?.cancel()
        expiry = nil
        guard let date, let context else { return }
        let delay = TimeAmount.milliseconds(Int64(max(0, date.timeIntervalSinceNow) * 1000))
        expiry = context.eventLoop.scheduleTask(in: delay) { [weak self] in
            guard let self else { return }
            expiry = nil
            run { $0.tokenExpired(emit: $1) }
        }
    }

    private func verify(_ token: String, for current: Identity) {
        guard let member else { return }
        let authenticator = services.authenticator, handler = member.handler
        Task {
            let result: Result<Identity, AuthError>
            do throws(AuthError) { result = .success(try await authenticator.verify(token)) } catch { result = .failure(error) }
            handler.eventLoop.execute { handler.value.run { $0.refreshChecked(result, for: current, emit: $1) } }
        }
    }
}
