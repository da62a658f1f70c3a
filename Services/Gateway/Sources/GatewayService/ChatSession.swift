import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket

/// Close codes the gateway uses (docs/protocol.md). Each follows an `{"error"}` frame saying why.
enum CloseCode {
    /// The room name or id is invalid.
    static let invalidRoom = WebSocketErrorCode.unknown(4400)
    /// No token, or a token that is expired, malformed or badly signed.
    static let unauthenticated = WebSocketErrorCode.unknown(4401)
    /// The caller is not a participant of the room.
    static let forbidden = WebSocketErrorCode.unknown(4403)
    /// The room does not exist.
    static let notFound = WebSocketErrorCode.unknown(4404)
    /// The socket fell `CHAT_MAILBOX_CAPACITY` messages behind.
    static let slowConsumer = WebSocketErrorCode.unknown(4008)
    /// A service it needs (rooms, broker) did not answer: try again later.
    static let tryAgainLater = WebSocketErrorCode.unknown(1013)
}

/// One socket in one room: join, history, then live messages and the client's frames.
///
/// Order of joining, so that nothing is missed or doubled between history and live messages: the room's
/// group is bound first (from then on every broadcast reaches the mailbox), then history is read, then the
/// mailbox is drained, skipping every seq the history already had.
struct RoomSession: Sendable {
    let backend: GatewayBackend
    let outbound: WebSocketOutboundWriter
    let logger: Logger
    /// Broker confirmations of this socket's messages, in order; a watcher reports the ones that fail.
    let confirmations: AsyncStream<AMQPConfirmation>.Continuation
    private let pendingConfirmations: AsyncStream<AMQPConfirmation>

    init(backend: GatewayBackend, outbound: WebSocketOutboundWriter, logger: Logger) {
        self.backend = backend
        self.outbound = outbound
        self.logger = logger
        (pendingConfirmations, confirmations) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    /// Runs the session in `group`; `handle` gets each client text frame within the size limit.
    func run(group: String, inbound: WebSocketInboundStream, handle: @escaping @Sendable (ByteBuffer) async -> Void) async {
        do {
            let reply = try await backend.join(group: group)
            guard reply.ok else {
                await fail(reply.error ?? "cannot join room", close: CloseCode.invalidRoom)
                return
            }
        } catch {
            logger.warning("room service did not answer", metadata: ["error": "\(error)"])
            await fail("room service unavailable, try again later", close: CloseCode.tryAgainLater)
            return
        }

        let layer = backend.layer
        let channel = layer.newChannel()
        defer {
            channel.close()
            layer.registry.forget(channel)
        }
        do {
            try await layer.groupAdd(group, channel: channel)
        } catch {
            logger.warning("could not join the room's group", metadata: ["error": "\(error)"])
            await backend.leave(group: group)
            await fail("broker unavailable, try again later", close: CloseCode.tryAgainLater)
            return
        }

        var lastSeq: Int64? = nil
        do {
            let history = try await backend.history(group: group, limit: backend.configuration.historyLimit)
            for frame in history.frames { try await write(frame) }
            if let first = history.firstSeq { lastSeq = first + Int64(history.frames.count) - 1 }
        } catch {
            logger.warning("history unavailable", metadata: ["error": "\(error)"])
            await sendError("history unavailable")
        }

        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { [lastSeq] in
                await deliverLive(channel: channel, group: group, after: lastSeq)
            }
            tasks.addTask {
                await readClient(inbound: inbound, handle: handle)
            }
            tasks.addTask {
                await watchConfirmations()
            }
            // Whichever ends first (client gone, or mailbox closed) ends the session.
            await tasks.next()
            confirmations.finish()
            tasks.cancelAll()
            channel.close()
        }
        try? await layer.groupDiscard(group, channel: channel)
        await backend.leave(group: group)
    }

    /// Writes live messages in seq order: a seq already delivered (history overlap, redelivery) is skipped;
    /// a gap (missed while this gateway's queue was being re-created) is filled from history.
    func deliverLive(channel: LocalChannel, group: String, after lastSeq: Int64?) async {
        var last = lastSeq
        do {
            for await message in channel.messages {
                if let seq = message.seq {
                    if let l = last, seq <= l { continue }
                    if let l = last, seq > l + 1 {
                        let missing = try? await backend.history(group: group, limit: Int(min(seq - l - 1, 200)), beforeSeq: seq)
                        if let missing, let first = missing.firstSeq {
                            for (offset, frame) in missing.frames.enumerated() where first + Int64(offset) > l {
                                try await write(frame)
                            }
                        }
                    }
                    last = seq
                }
                try await write(message.body)
            }
        } catch {
            return  // the socket is gone
        }
        if channel.overflowed {
            logger.warning("socket fell behind; disconnecting it")
            try? await outbound.close(CloseCode.slowConsumer, reason: "too slow")
        }
    }

    func readClient(inbound: WebSocketInboundStream, handle: @Sendable (ByteBuffer) async -> Void) async {
        let limit = backend.configuration.maxFrameBytes
        do {
            for try await message in inbound.messages(maxSize: backend.configuration.hardFrameLimit) {
                guard case .text(let text) = message else {
                    await sendError("binary frames are not supported; send JSON text")
                    continue
                }
                let bytes = ByteBuffer(string: text)
                guard bytes.readableBytes <= limit else {
                    await sendError(ChatError.frameTooLarge(limit: limit).description)
                    continue
                }
                await handle(bytes)
            }
        } catch {
            logger.debug("socket read ended", metadata: ["error": "\(error)"])
        }
    }

    func write(_ frame: ByteBuffer) async throws {
        try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame)))
    }

    func sendError(_ text: String) async {
        try? await outbound.write(.text(ClientFrame.error(text)))
    }

    func fail(_ text: String, close code: WebSocketErrorCode) async {
        await sendError(text)
        try? await outbound.close(code, reason: String(text.prefix(100)))
    }

    /// Hands a message to the persistence service without waiting for the broker: the next frame is read at
    /// once, and ``watchConfirmations()`` tells the client about any message the broker did not take.
    func submit(group: String, sender: Email?, text: String) async {
        let message = InboundChatMessage(id: UUID().uuidString.lowercased(), group: group, sender: sender?.value, text: text,
                                         receivedAt: Timestamp.nowMillis())
        confirmations.yield(backend.submit(message))
    }

    func watchConfirmations() async {
        for await confirmation in pendingConfirmations {
            do {
                try await confirmation.wait()
            } catch {
                logger.warning("message not accepted by the broker", metadata: ["error": "\(error)"])
                await sendError("message not accepted, try again")
            }
        }
    }
}

/// `/ws/chat/<room>/`: the tutorial's named rooms.
enum NamedRoomSocket {
    static func run(session: RoomSession, rawRoom: String, identity: Identity?, inbound: WebSocketInboundStream) async {
        let room: RoomName
        do throws(ChatError) {
            room = try RoomName(validating: rawRoom.removingPercentEncoding ?? rawRoom)
        } catch {
            await session.fail(error.description, close: CloseCode.invalidRoom)
            return
        }
        let group = "named:" + room.value
        await session.run(group: group, inbound: inbound) { bytes in
            do throws(ChatError) {
                let text = try ClientFrame.parseChatMessage(bytes.readableBytesView)
                await session.submit(group: group, sender: identity?.email, text: text)
            } catch {
                await session.sendError(error.description)
            }
        }
    }
}

/// `/ws/room/<id>/messages`: a 1:1 consultation room; only its two participants get in.
enum ConsultRoomSocket {
    static func run(session: RoomSession, rawID: String, identity: Identity, inbound: WebSocketInboundStream) async {
        guard let id = Int64(rawID), id > 0 else {
            await session.fail("room id must be a positive integer", close: CloseCode.invalidRoom)
            return
        }
        let room: ConsultRoom
        switch await session.backend.consultRoom(id: id) {
        case .success(let found?):
            room = found
        case .success(nil):
            await session.fail("room \(id) does not exist", close: CloseCode.notFound)
            return
        case .failure:
            await session.fail("room service unavailable, try again later", close: CloseCode.tryAgainLater)
            return
        }
        guard room.hasParticipant(identity.email.value, role: identity.role) else {
            await session.fail("you are not a participant of room \(id)", close: CloseCode.forbidden)
            return
        }
        await session.run(group: room.group, inbound: inbound) { bytes in
            do throws(ChatError) {
                switch try ConsultClientFrame.parse(bytes.readableBytesView) {
                case .message(let text, let sender, let shop, let visitor):
                    guard shop.value == room.shopUserEmail, visitor.value == room.visitorUserEmail else {
                        await session.sendError("shop_user_email and visitor_user_email do not match room \(id)")
                        return
                    }
                    if let sender, sender != identity.email {
                        await session.sendError("sender_email must be your own email (\(identity.email.value))")
                        return
                    }
                    await session.submit(group: room.group, sender: identity.email, text: text)
                case .read(let upToSeq):
                    do {
                        let mark = try await session.backend.markRead(roomID: id, email: identity.email, seq: upToSeq)
                        var writer = JSONWriter()
                        writer.beginObject()
                        writer.field("type", "read")
                        writer.field("reader_email", identity.email.value)
                        writer.field("up_to_seq", mark)
                        writer.endObject()
                        try await session.backend.layer.groupSend(room.group, message: ChannelMessage(body: ByteBuffer(string: writer.output)))
                    } catch {
                        await session.sendError("read receipt not recorded, try again")
                    }
                }
            } catch {
                await session.sendError(error.description)
            }
        }
    }
}
