import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// One WebSocket of the gateway: the last handler of its channel's pipeline, after NIO's frame decoder and
/// encoder and the fragment aggregator. There is no task, async stream or buffer per socket once it is open:
/// an idle socket costs its channel, its pipeline and this object, and a broadcast is written to it straight
/// from its event loop. Everything here runs on that loop; the asynchronous parts (opening, gap filling,
/// read receipts) run in short tasks that hop back to the loop with their results.
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
    var logger: Logger {
        var logger = services.logger
        if let group = room?.group { logger[metadataKey: "chat.room"] = .string(group) }
        return logger
    }

    private var context: ChannelHandlerContext?
    /// NIO's frame encoder's place in the pipeline: pre-encoded frames are written from there.
    private var rawWriter: ChannelHandlerContext?
    private var member: SocketMember?
    /// The order of what is written (held broadcasts, kept client frames, gaps).
    private var session: ChatSession
    /// The room, once the socket is open.
    private var room: OpenedSession?
    private var finished = false
    /// Messages written while the socket was not writable (the client is not reading).
    private var writtenWhileBlocked = 0
    private var closeSent = false
    /// Messages sent with a `client_id` whose ack has not come back: a draining gateway waits for them.
    private var awaitingAcks = 0
    /// The server is shutting down: the socket closes (1001) once its acks are in, or after ``drainLimit``.
    private var draining = false
    static let drainLimit = TimeAmount.seconds(3)
    /// The key this socket takes from ``UserRateLimits`` with, once open: its user, or itself when anonymous.
    private var rateUser: String?
    private var refusals = RefusalWindow()
    /// When the socket's token expires (4401), unless it is refreshed first.
    private var expiry: Scheduled<Void>?

    init(services: SocketServices, endpoint: SocketEndpoint, head: HTTPRequestHead) {
        self.services = services
        self.endpoint = endpoint
        self.head = head
        self.session = ChatSession(capacity: services.configuration.mailboxCapacity)
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
        finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
        self.context = nil
        rawWriter = nil
    }

    /// Leaves the room once, whichever comes first: the channel closing or the handler leaving the pipeline.
    private func finish() {
        guard !finished else { return }
        finished = true
        session.close()
        services.limiter.leave()
        expiry?.cancel()
        expiry = nil
        if let rateUser { services.rates?.detach(rateUser) }
        if let user = room?.user, let member { services.backend.userSockets.remove(user, member) }
        GatewayMetrics.socketsOpen.decrement()
        guard let member else { return }
        services.backend.hub.unregister(member)
        if let room { leave(room, member) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            session.clientFrame(frame.unmaskedData, emit: perform)
        case .binary:
            sendError("binary frames are not supported; send JSON text")
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            // The client closes: answer with its own code (the closing handshake), then close the TCP connection.
            if closeSent {
                context.close(promise: nil)
            } else {
                closeSent = true
                let data = frame.unmaskedData
                let code = data.readableBytes >= 2 ? data.getSlice(at: data.readerIndex, length: 2) ?? ByteBuffer() : ByteBuffer()
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: code)))
                    .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
            }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketFrameAggregator.Error, error == .accumulatedFrameSizeIsTooLarge {
            sendError(ChatError.frameTooLarge(limit: services.configuration.maxFrameBytes).description)
            close(.messageTooLarge, reason: "message too large")
        } else {
            logger.debug("socket error", metadata: ["error": "\(error)"])
            close(.protocolError, reason: "protocol error")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Drain: take no new messages, and close once what this socket sent is acked (bounded), so that
            // its client resends nothing it need not when it resumes on another gateway.
            draining = true
            if awaitingAcks == 0 { close(.goingAway, reason: "server shutting down") } else {
                context.eventLoop.scheduleTask(in: Self.drainLimit) { [weak self] in
                    self?.close(.goingAway, reason: "server shutting down")
                }
            }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { writtenWhileBlocked = 0 }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Opening

    /// The outcome of ``SessionOpener/open()``, back on the loop.
    func opened(_ outcome: SessionOpener.Outcome) {
        switch outcome {
        case .refused(let text, let code, let errorCode):
            guard session.phase == .opening else { return }
            if let errorCode { sendFrame(ClientFrame.error(text, code: errorCode)) } else { sendError(text) }
            close(code, reason: String(text.prefix(100)))
        case .opened(let opened, let history):
            guard session.phase == .opening, context != nil else {
                // The socket closed (or fell behind) while it was opening: leave what was joined.
                if let member { leave(opened, member) }
                return
            }
            room = opened
            if let rates = services.rates, let member {
                let user = opened.identity.map { "user:" + $0.email.value } ?? "socket:\(member.memberID)"
                rates.attach(user)
                rateUser = user
            }
            scheduleExpiry(opened.identity?.expiresAt)
            if let user = opened.user, let member { services.backend.userSockets.add(user, member) }
            // Who is here, at once; later changes come from the ``PresenceNotifier`` at most once a second.
            let presence = ByteBuffer(string: services.backend.presenceFrame(opened.group))
            session.opened(history, presence: presence, emit: perform)
            context?.flush()
        }
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

    /// Carries out what the session asks for.
    private func perform(_ action: ChatSession.Action) {
        switch action {
        case .write(let frame): write(frame)
        case .writeEncoded(let wire): writeEncoded(wire)
        case .fillGap(let after, let before): fillGap(after: after, before: before)
        case .clientFrame(let bytes): clientText(bytes)
        case .error(let text): sendError(text)
        case .disconnectSlow:
            logger.warning("socket fell behind; disconnecting it")
            close(CloseCode.slowConsumer, reason: "too slow")
        case .resumeRequired:
            logger.warning("a gap in the room's order could not be filled from history; closing the socket for a resume")
            close(CloseCode.tryAgainLater, reason: "resume")
        }
    }

    // MARK: Live messages

    /// Broadcasts for this socket's room, on its loop: written in seq order (see ``ChatSession``).
    func deliver(_ messages: [ChannelMessage]) {
        session.deliver(messages, emit: perform)
        guard session.phase == .live else { return }
        context?.flush()
        if let channel = context?.channel, !channel.isWritable {
            writtenWhileBlocked += messages.count
            if writtenWhileBlocked > services.configuration.mailboxCapacity { perform(.disconnectSlow) }
        }
    }

    private func fillGap(after last: Int64, before seq: Int64) {
        guard let group = room?.group, let member else { return }
        let backend = services.backend, handler = member.handler, logger = logger
        Task {
            let missing: (firstSeq: Int64?, frames: [ByteBuffer])?
            do {
                missing = try await backend.history(group: group, limit: Int(min(seq - last - 1, 200)), beforeSeq: seq)
            } catch {
                logger.warning("history did not fill a gap", metadata: ["error": "\(error)"])
                missing = nil
            }
            handler.eventLoop.execute {
                handler.value.session.gapFilled(missing, before: seq, emit: handler.value.perform)
                handler.value.context?.flush()
            }
        }
    }

    // MARK: Client frames

    private func clientText(_ bytes: ByteBuffer) {
        let limit = services.configuration.maxFrameBytes
        guard bytes.readableBytes <= limit else {
            sendError(ChatError.frameTooLarge(limit: limit).description)
            return
        }
        guard let room else { return }
        if let rates = services.rates, let rateUser, case .refused(let wait) = rates.take(rateUser) {
            refused(retryAfterMs: wait)
            return
        }
        switch room.kind {
        case .named:
            do throws(ChatError) {
                switch try ClientFrame.parseNamed(bytes.readableBytesView) {
                case .message(let text, let clientID):
                    submit(text: text, sender: room.identity?.email, clientID: clientID)
                case .refresh(let token):
                    refresh(token)
                }
            } catch {
                sendError(error.description)
            }
        case .consult(let consultRoom):
            do throws(ChatError) {
                switch try ConsultClientFrame.parse(bytes.readableBytesView) {
                case .message(let text, let sender, let shop, let visitor, let clientID):
                    guard shop.value == consultRoom.shopUserEmail, visitor.value == consultRoom.visitorUserEmail else {
                        sendError("shop_user_email and visitor_user_email do not match room \(consultRoom.id)")
                        return
                    }
                    guard let identity = room.identity else { return }
                    if let sender, sender != identity.email {
                        sendError("sender_email must be your own email (\(identity.email.value))")
                        return
                    }
                    submit(text: text, sender: identity.email, clientID: clientID)
                case .read(let upToSeq):
                    markRead(room: consultRoom, upTo: upToSeq)
                case .refresh(let token):
                    refresh(token)
                }
            } catch {
                sendError(error.description)
            }
        }
    }

    /// A client frame over the user's rate: not handled; a socket that goes on sending is closed (4429).
    private func refused(retryAfterMs: Int) {
        GatewayMetrics.rateLimited.increment()
        sendFrame(ClientFrame.error("rate limit exceeded", code: "rate_limited", retryAfterMs: retryAfterMs))
        if refusals.refused(now: LimitClock.now()) {
            logger.info("socket went on sending past its rate limit; closing it")
            close(CloseCode.tooMany, reason: "rate limit exceeded")
        }
    }

    /// The server API disconnected this socket's user (on any gateway).
    func disconnectedByServer(_ reason: String) {
        sendFrame(ClientFrame.error(reason, code: "disconnected"))
        close(CloseCode.forbidden, reason: "disconnected")
    }

    // MARK: Token expiry

    /// Closes the socket (4401) when its token expires; a refresh moves the time.
    private func scheduleExpiry(_ date: Date?) {
        expiry?.cancel()
        expiry = nil
        guard let date, let context else { return }
        let delay = TimeAmount.milliseconds(Int64(max(0, date.timeIntervalSinceNow) * 1000))
        expiry = context.eventLoop.scheduleTask(in: delay) { [weak self] in self?.expired() }
    }

    private func expired() {
        expiry = nil
        sendFrame(ClientFrame.error("token expired", code: "token_expired"))
        close(CloseCode.unauthenticated, reason: "token expired")
    }

    /// `{"type":"refresh","token"}`: a valid token for the same user moves the socket's expiry; another user's
    /// or a bad token closes the socket (4401).
    private func refresh(_ token: String) {
        guard let identity = room?.identity, let member else {
            sendError("this socket has no token to refresh (it is anonymous)")
            return
        }
        let authenticator = services.authenticator, handler = member.handler
        Task {
            let result: Result<Identity, AuthError>
            do throws(AuthError) { result = .success(try await authenticator.verify(token)) } catch { result = .failure(error) }
            handler.eventLoop.execute { handler.value.refreshed(result, for: identity) }
        }
    }

    private func refreshed(_ result: Result<Identity, AuthError>, for current: Identity) {
        guard !finished, !closeSent else { return }
        switch result {
        case .success(let new) where new.email == current.email:
            scheduleExpiry(new.expiresAt)
            sendFrame(ClientFrame.refreshed(expiresAtMillis: new.expiresAt.map { Int64($0.timeIntervalSince1970 * 1000) }))
        case .success:
            sendFrame(ClientFrame.error("token refresh refused: the token is for another user", code: "token_invalid"))
            close(CloseCode.unauthenticated, reason: "token refresh refused")
        case .failure(let error):
            sendFrame(ClientFrame.error("token refresh refused: \(error.description)", code: "token_invalid"))
            close(CloseCode.unauthenticated, reason: "token refresh refused")
        }
    }

    // MARK: Sending

    /// Hands a message to the persistence service without waiting for the broker; a message the broker does
    /// not take is reported to this socket with an error frame. With a `client_id`, persistence acks it to this
    /// socket once it is stored (through the ``Hub``).
    private func submit(text: String, sender: Email?, clientID: String?) {
        guard let group = room?.group, let member else { return }
        if draining {
            sendError("server shutting down; send it again once reconnected")
            return
        }
        if clientID != nil { awaitingAcks += 1 }
        let message = InboundChatMessage(id: MessageID.timeOrdered(), group: group, sender: sender?.value, text: text,
                                         receivedAt: Timestamp.nowMillis(), clientID: clientID,
                                         replyTo: clientID == nil ? nil : services.backend.replyQueue,
                                         socket: clientID == nil ? nil : member.memberID)
        GatewayMetrics.messagesIn.increment()
        let handler = member.handler, logger = logger
        services.backend.submit(message).onFailure { error in
            logger.warning("message not accepted by the broker", metadata: ["error": "\(error)"])
            handler.eventLoop.execute {
                if clientID != nil { handler.value.ackArrived() }  // none will come for it
                handler.value.sendError("message not accepted, try again")
            }
        }
    }

    private func markRead(room: ConsultRoom, upTo seq: Int64) {
        guard let identity = self.room?.identity, let member else { return }
        let backend = services.backend, handler = member.handler
        Task {
            do {
                let mark = try await backend.markRead(roomID: room.id, email: identity.email, seq: seq)
                var writer = JSONWriter()
                writer.beginObject()
                writer.field("type", "read")
                writer.field("reader_email", identity.email.value)
                writer.field("up_to_seq", mark)
                writer.endObject()
                try await backend.sendToGroup(room.group, frame: ByteBuffer(string: writer.output))
            } catch {
                handler.eventLoop.execute { handler.value.sendError("read receipt not recorded, try again") }
            }
        }
    }

    // MARK: Writing

    private func write(_ frame: ByteBuffer) {
        context?.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: frame)), promise: nil)
    }

    /// Writes a frame encoded once for the whole room (``WebSocketWire``): the same bytes for every socket,
    /// handed to the handler below NIO's frame encoder, so in order with what goes through it.
    private func writeEncoded(_ wire: ByteBuffer) {
        guard let rawWriter else { return }
        rawWriter.write(NIOAny(wire), promise: nil)
    }

    /// Writes persistence's acks of this socket's messages (from the ``Hub``), with one flush.
    func acknowledge(_ acks: [MessageAck]) {
        guard let context, !closeSent, !finished else { return }
        for ack in acks {
            let frame = ByteBuffer(string: ClientFrame.ack(clientID: ack.clientID, id: ack.id, seq: ack.seq))
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: frame)), promise: nil)
            ackArrived()
        }
        context.flush()
    }

    /// One awaited ack came (or never will); a draining socket closes when none is left.
    private func ackArrived() {
        awaitingAcks = max(0, awaitingAcks - 1)
        if draining && awaitingAcks == 0 { close(.goingAway, reason: "server shutting down") }
    }

    func sendError(_ text: String) {
        sendFrame(ClientFrame.error(text))
    }

    /// Writes and flushes an error frame built already (with its `code`).
    private func sendFrame(_ json: String) {
        guard let context, !closeSent else { return }
        GatewayMetrics.errorFrames.increment()
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: json))), promise: nil)
    }

    /// Sends a close frame and closes the connection once it is written.
    func close(_ code: WebSocketErrorCode, reason: String) {
        guard let context, !closeSent else { return }
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        data.writeString(reason)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)))
            .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }
}
