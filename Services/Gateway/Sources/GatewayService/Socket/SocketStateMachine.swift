import ChannelLayer
import ChatProtocol
import Foundation
import NIOCore
import NIOWebSocket

/// Everything one socket remembers, as one value: its place in the close handshake, its room, draining at
/// shutdown, the acks it waits for, how far behind its client is, its rate refusals, and the order of its
/// frames (``ChatSession``). Each method takes what happened and emits what to do; ``ChatSocketHandler`` only
/// carries the actions out on its event loop, so the rules are tested without NIO (SocketStateMachineTests).
/// An action carries what carrying it out needs: the handler never reads the machine while it runs.
///
/// Actions are emitted through a closure rather than returned in an array: `deliver` runs for every socket of
/// every broadcast (as ``ChatSession`` does).
struct SocketStateMachine {
    /// Where the socket is in its life. Nothing is written once a close frame is sent; nothing at all once closed.
    enum Connection: Equatable {
        case open
        /// A close frame went out (ours, or our answer to the client's): the channel closes once it is written.
        case closeSent
        /// The channel is gone.
        case closed
    }

    enum Action {
        /// A text frame.
        case write(ByteBuffer)
        /// A frame encoded already for the whole room (``WebSocketWire``).
        case writeEncoded(ByteBuffer)
        /// A JSON error frame (counted as one), written and flushed at once.
        case errorFrame(String)
        /// A JSON frame of the socket's own (`refreshed`), written and flushed at once.
        case frame(String)
        case flush
        case pong(ByteBuffer)
        /// A close frame with this code and reason; the channel closes once it is written.
        case sendClose(WebSocketErrorCode, reason: String)
        /// The client's close frame answered with its own code; the channel closes once it is written.
        case answerClose(code: ByteBuffer)
        /// Close the channel now (the client answered our close).
        case closeChannel
        /// The room is open: take this socket into the per-user counts and limits, and time its token.
        case attach(OpenedSession)
        /// Read a gap of `group` from history (``SocketStateMachine/gapFilled(_:before:emit:)`` follows).
        case fillGap(group: String, after: Int64, before: Int64)
        /// Hand a chat message to persistence (``submitFailed(awaitedAck:emit:)`` if the broker refuses it).
        case submit(group: String, text: String, sender: Email?, clientID: String?)
        /// Record a read receipt and send it to the room.
        case markRead(ConsultRoom, reader: Email, upTo: Int64)
        /// Check a refresh token for `current`'s user (``refreshChecked(_:for:emit:)`` follows).
        case verifyRefresh(token: String, current: Identity)
        /// Move the token's expiry (nil: none).
        case scheduleExpiry(Date?)
        /// Close after ``ChatSocketHandler/drainLimit`` even if acks are missing.
        case scheduleDrainDeadline
        /// A line for the log: why the socket is being closed.
        case warn(String)
        /// Leave a room joined while the socket closed, or at close.
        case leave(OpenedSession)
        /// The socket is gone: release what it held (limits, counts, hub, expiry), once.
        case release(OpenedSession?)
    }

    let maxFrameBytes: Int
    let mailboxCapacity: Int
    /// Client frames per user (nil: no limit); a reference shared by the gateway's sockets.
    let rates: UserRateLimits?

    private(set) var connection = Connection.open
    private(set) var room: OpenedSession?
    private(set) var session: ChatSession
    /// The key this socket takes from ``rates`` with: its user, or itself when anonymous.
    private(set) var rateUser: String?
    private var refusals = RefusalWindow()
    /// Shutting down: no new messages; close (1001) once the acks are in, or at the drain deadline.
    private(set) var draining = false
    /// Messages sent with a `client_id` whose ack has not come back.
    private(set) var awaitingAcks = 0
    /// Messages written while the socket was not writable (its client is not reading).
    private(set) var writtenWhileBlocked = 0

    init(maxFrameBytes: Int, mailboxCapacity: Int, rates: UserRateLimits?) {
        self.maxFrameBytes = maxFrameBytes
        self.mailboxCapacity = mailboxCapacity
        self.rates = rates
        self.session = ChatSession(capacity: mailboxCapacity)
    }

    // MARK: Opening

    /// The opener's outcome. `socketID` names an anonymous socket's rate bucket; `presence` is asked for only
    /// when the room opens.
    mutating func opened(_ outcome: SessionOpener.Outcome, socketID: Int, presence: () -> ByteBuffer, emit: (Action) -> Void) {
        switch outcome {
        case .refused(let text, let code, let errorCode):
            guard session.phase == .opening else { return }
            errorFrame(errorCode.map { ClientFrame.error(text, code: $0) } ?? ClientFrame.error(text), emit: emit)
            close(code, reason: String(text.prefix(100)), emit: emit)
        case .opened(let opened, let history):
            guard session.phase == .opening, connection == .open else {
                // The socket closed (or fell behind) while it was opening: leave what was joined.
                emit(.leave(opened))
                return
            }
            room = opened
            if let rates {
                let user = opened.identity.map { "user:" + $0.email.value } ?? "socket:\(socketID)"
                rates.attach(user)
                rateUser = user
            }
            emit(.attach(opened))
            emit(.scheduleExpiry(opened.identity?.expiresAt))
            let presence = presence()
            withSession(emit: emit) { $0.opened(history, presence: presence, emit: $1) }
            emit(.flush)
        }
    }

    // MARK: Frames from the client

    mutating func text(_ bytes: ByteBuffer, emit: (Action) -> Void) {
        guard connection == .open else { return }
        withSession(emit: emit) { $0.clientFrame(bytes, emit: $1) }
    }

    mutating func binary(emit: (Action) -> Void) {
        errorFrame(ClientFrame.error("binary frames are not supported; send JSON text"), emit: emit)
    }

    mutating func ping(_ data: ByteBuffer, emit: (Action) -> Void) {
        guard connection != .closed else { return }
        emit(.pong(data))
    }

    /// The client's close frame: answered with its own code (the closing handshake), or, when it answers ours,
    /// the channel closes.
    mutating func clientClosed(_ data: ByteBuffer, emit: (Action) -> Void) {
        switch connection {
        case .open:
            connection = .closeSent
            let code = data.readableBytes >= 2 ? data.getSlice(at: data.readerIndex, length: 2) ?? ByteBuffer() : ByteBuffer()
            emit(.answerClose(code: code))
        case .closeSent:
            emit(.closeChannel)
        case .closed:
            break
        }
    }

    /// A frame over `CHAT_MAX_FRAME_BYTES` (NIO's aggregator refused it): an error frame and 1009.
    mutating func frameTooLarge(emit: (Action) -> Void) {
        errorFrame(ClientFrame.error(ChatError.frameTooLarge(limit: maxFrameBytes).description), emit: emit)
        close(.messageTooLarge, reason: "message too large", emit: emit)
    }

    mutating func protocolError(emit: (Action) -> Void) {
        close(.protocolError, reason: "protocol error", emit: emit)
    }

    /// A text frame once the room is open: checked against the rate, parsed, and checked against the room.
    private mutating func clientText(_ bytes: ByteBuffer, emit: (Action) -> Void) {
        guard bytes.readableBytes <= maxFrameBytes else {
            errorFrame(ClientFrame.error(ChatError.frameTooLarge(limit: maxFrameBytes).description), emit: emit)
            return
        }
        guard let room else { return }
        if let rates, let rateUser, case .refused(let wait) = rates.take(rateUser) {
            rateRefused(retryAfterMs: wait, emit: emit)
            return
        }
        do throws(ChatError) {
            switch room.kind {
            case .named:
                switch try ClientFrame.parseNamed(bytes.readableBytesView) {
                case .message(let text, let clientID): submit(text: text, sender: room.identity?.email, clientID: clientID, emit: emit)
                case .refresh(let token): refresh(token, emit: emit)
                }
            case .consult(let consultRoom):
                switch try ConsultClientFrame.parse(bytes.readableBytesView) {
                case .message(let text, let sender, let shop, let visitor, let clientID):
                    guard shop.value == consultRoom.shopUserEmail, visitor.value == consultRoom.visitorUserEmail else {
                        throw .invalidFrame("shop_user_email and visitor_user_email do not match room \(consultRoom.id)")
                    }
                    guard let identity = room.identity else { return }
                    if let sender, sender != identity.email {
                        throw .invalidFrame("sender_email must be your own email (\(identity.email.value))")
                    }
                    submit(text: text, sender: identity.email, clientID: clientID, emit: emit)
                case .read(let upToSeq):
                    guard let identity = room.identity else { return }
                    emit(.markRead(consultRoom, reader: identity.email, upTo: upToSeq))
                case .refresh(let token):
                    refresh(token, emit: emit)
                }
            }
        } catch {
            errorFrame(ClientFrame.error(error.description), emit: emit)
        }
    }

    /// Over the user's rate: not handled; a socket that goes on sending is closed (4429).
    private mutating func rateRefused(retryAfterMs: Int, emit: (Action) -> Void) {
        errorFrame(ClientFrame.error("rate limit exceeded", code: "rate_limited", retryAfterMs: retryAfterMs), emit: emit)
        if refusals.refused(now: LimitClock.now()) {
            emit(.warn("socket went on sending past its rate limit; closing it"))
            close(CloseCode.tooMany, reason: "rate limit exceeded", emit: emit)
        }
    }

    private mutating func submit(text: String, sender: Email?, clientID: String?, emit: (Action) -> Void) {
        guard let group = room?.group else { return }
        if draining {
            errorFrame(ClientFrame.error("server shutting down; send it again once reconnected"), emit: emit)
            return
        }
        if clientID != nil { awaitingAcks += 1 }
        emit(.submit(group: group, text: text, sender: sender, clientID: clientID))
    }

    /// The broker did not take a submitted message.
    mutating func submitFailed(awaitedAck: Bool, emit: (Action) -> Void) {
        if awaitedAck { ackArrived(emit: emit) }  // none will come for it
        errorFrame(ClientFrame.error("message not accepted, try again"), emit: emit)
    }

    mutating func markReadFailed(emit: (Action) -> Void) {
        errorFrame(ClientFrame.error("read receipt not recorded, try again"), emit: emit)
    }

    // MARK: Tokens

    private mutating func refresh(_ token: String, emit: (Action) -> Void) {
        guard let identity = room?.identity else {
            errorFrame(ClientFrame.error("this socket has no token to refresh (it is anonymous)"), emit: emit)
            return
        }
        emit(.verifyRefresh(token: token, current: identity))
    }

    /// A valid token for the same user moves the expiry; another user's or a bad token closes the socket (4401).
    mutating func refreshChecked(_ result: Result<Identity, AuthError>, for current: Identity, emit: (Action) -> Void) {
        guard connection == .open else { return }
        switch result {
        case .success(let new) where new.email == current.email:
            emit(.scheduleExpiry(new.expiresAt))
            if connection == .open {
                emit(.frame(ClientFrame.refreshed(expiresAtMillis: new.expiresAt.map { Int64($0.timeIntervalSince1970 * 1000) })))
            }
        case .success:
            errorFrame(ClientFrame.error("token refresh refused: the token is for another user", code: "token_invalid"), emit: emit)
            close(CloseCode.unauthenticated, reason: "token refresh refused", emit: emit)
        case .failure(let error):
            errorFrame(ClientFrame.error("token refresh refused: \(error.description)", code: "token_invalid"), emit: emit)
            close(CloseCode.unauthenticated, reason: "token refresh refused", emit: emit)
        }
    }

    mutating func tokenExpired(emit: (Action) -> Void) {
        errorFrame(ClientFrame.error("token expired", code: "token_expired"), emit: emit)
        close(CloseCode.unauthenticated, reason: "token expired", emit: emit)
    }

    /// The server API disconnected this socket's user (on any gateway).
    mutating func disconnectedByServer(_ reason: String, emit: (Action) -> Void) {
        errorFrame(ClientFrame.error(reason, code: "disconnected"), emit: emit)
        close(CloseCode.forbidden, reason: "disconnected", emit: emit)
    }

    // MARK: From the room

    /// Broadcasts for this socket's room, in seq order (see ``ChatSession``). `writable` is the channel's state
    /// as the batch arrives (after the previous batch's flush; this one's writes are carried out after the
    /// machine returns): a client that stops reading falls `mailboxCapacity` messages behind and is closed (4008).
    mutating func deliver(_ messages: [ChannelMessage], writable: () -> Bool, emit: (Action) -> Void) {
        guard connection == .open else { return }
        withSession(emit: emit) { $0.deliver(messages, emit: $1) }
        guard session.phase == .live else { return }
        emit(.flush)
        if !writable() {
            writtenWhileBlocked += messages.count
            if writtenWhileBlocked > mailboxCapacity { handle(.disconnectSlow, emit: emit) }
        }
    }

    mutating func writabilityChanged(writable: Bool) {
        if writable { writtenWhileBlocked = 0 }
    }

    mutating func gapFilled(_ missing: (firstSeq: Int64?, frames: [ByteBuffer])?, before seq: Int64, emit: (Action) -> Void) {
        guard connection == .open else { return }
        withSession(emit: emit) { $0.gapFilled(missing, before: seq, emit: $1) }
        emit(.flush)
    }

    /// Persistence's acks of this socket's messages.
    mutating func acknowledged(_ acks: [MessageAck], emit: (Action) -> Void) {
        guard connection == .open, !acks.isEmpty else { return }
        for ack in acks {
            emit(.write(ByteBuffer(string: ClientFrame.ack(clientID: ack.clientID, id: ack.id, seq: ack.seq))))
        }
        emit(.flush)
        for _ in acks { ackArrived(emit: emit) }
    }

    // MARK: Shutdown and close

    /// The server is shutting down: take no new messages, and close once what this socket sent is acked
    /// (bounded), so that its client resends nothing it need not when it resumes on another gateway.
    mutating func quiesce(emit: (Action) -> Void) {
        draining = true
        if awaitingAcks == 0 { close(.goingAway, reason: "server shutting down", emit: emit) } else { emit(.scheduleDrainDeadline) }
    }

    mutating func drainDeadlinePassed(emit: (Action) -> Void) {
        close(.goingAway, reason: "server shutting down", emit: emit)
    }

    /// The channel closed or the handler left the pipeline: release what the socket held, once.
    mutating func closed(emit: (Action) -> Void) {
        guard connection != .closed else { return }
        connection = .closed
        session.close()
        if let rateUser { rates?.detach(rateUser) }
        emit(.release(room))
    }

    private mutating func ackArrived(emit: (Action) -> Void) {
        awaitingAcks = max(0, awaitingAcks - 1)
        if draining && awaitingAcks == 0 { close(.goingAway, reason: "server shutting down", emit: emit) }
    }

    private mutating func close(_ code: WebSocketErrorCode, reason: String, emit: (Action) -> Void) {
        guard connection == .open else { return }
        connection = .closeSent
        emit(.sendClose(code, reason: reason))
    }

    private func errorFrame(_ json: String, emit: (Action) -> Void) {
        guard connection == .open else { return }
        emit(.errorFrame(json))
    }

    /// Runs `body` on the frame order, its actions handled here. The order is moved out of `self` meanwhile (so
    /// that both can change without overlapping access, and without a copy of its arrays); what its actions
    /// do never reads it.
    private mutating func withSession(emit: (Action) -> Void, _ body: (inout ChatSession, (ChatSession.Action) -> Void) -> Void) {
        var taken = session
        session = Self.movedOut
        withoutActuallyEscaping(emit) { emit in
            body(&taken) { handle($0, emit: emit) }
        }
        session = taken
    }

    private static let movedOut = ChatSession(capacity: 0)

    /// What the frame order asks for, in the socket's terms.
    private mutating func handle(_ action: ChatSession.Action, emit: (Action) -> Void) {
        switch action {
        case .write(let frame): if connection == .open { emit(.write(frame)) }
        case .writeEncoded(let wire): if connection == .open { emit(.writeEncoded(wire)) }
        case .fillGap(let after, let before): if let group = room?.group { emit(.fillGap(group: group, after: after, before: before)) }
        case .clientFrame(let bytes): clientText(bytes, emit: emit)
        case .error(let text): errorFrame(ClientFrame.error(text), emit: emit)
        case .disconnectSlow:
            emit(.warn("socket fell behind; disconnecting it"))
            close(CloseCode.slowConsumer, reason: "too slow", emit: emit)
        case .resumeRequired:
            emit(.warn("a gap in the room's order could not be filled from history; closing the socket for a resume"))
            close(CloseCode.tryAgainLater, reason: "resume", emit: emit)
        }
    }
}
