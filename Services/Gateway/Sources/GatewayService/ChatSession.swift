import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket

/// Close codes the gateway uses (docs/protocol.md).
enum CloseCode {
    /// The room name is invalid (an `{"error"}` frame says why first).
    static let invalidRoom = WebSocketErrorCode.unknown(4400)
    /// The socket fell `CHAT_MAILBOX_CAPACITY` messages behind.
    static let slowConsumer = WebSocketErrorCode.unknown(4008)
    /// A service it needs (rooms, broker) did not answer: try again later.
    static let tryAgainLater = WebSocketErrorCode.unknown(1013)
}

/// One socket in one named room: join, history, then live messages and the client's messages.
///
/// Order of joining, so that nothing is missed or doubled between history and live messages: the room's
/// group is bound first (from then on every broadcast reaches the mailbox), then history is read, then the
/// mailbox is drained, skipping every seq the history already had.
struct ChatSession {
    let backend: GatewayBackend
    let rawRoom: String
    let outbound: WebSocketOutboundWriter
    var logger: Logger

    init(backend: GatewayBackend, rawRoom: String, outbound: WebSocketOutboundWriter, logger: Logger) {
        self.backend = backend
        self.rawRoom = rawRoom
        self.outbound = outbound
        self.logger = logger
    }

    func run(inbound: WebSocketInboundStream) async {
        let room: RoomName
        do throws(ChatError) {
            room = try RoomName(validating: rawRoom.removingPercentEncoding ?? rawRoom)
        } catch {
            await sendError(error.description)
            try? await outbound.close(CloseCode.invalidRoom, reason: "invalid room name")
            return
        }
        var logger = self.logger
        logger[metadataKey: "chat.room"] = .string(room.value)
        let group = "named:" + room.value

        do {
            let reply = try await backend.join(group: group)
            guard reply.ok else {
                await sendError(reply.error ?? "cannot join room")
                try? await outbound.close(CloseCode.invalidRoom, reason: "cannot join room")
                return
            }
        } catch {
            logger.warning("room service did not answer", metadata: ["error": "\(error)"])
            await sendError("room service unavailable, try again later")
            try? await outbound.close(CloseCode.tryAgainLater, reason: "room service unavailable")
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
            await sendError("broker unavailable, try again later")
            try? await outbound.close(CloseCode.tryAgainLater, reason: "broker unavailable")
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
            tasks.addTask { [logger] in
                await readClient(inbound: inbound, group: group, logger: logger)
            }
            // Whichever ends first (client gone, or mailbox closed) ends the session.
            await tasks.next()
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

    func readClient(inbound: WebSocketInboundStream, group: String, logger: Logger) async {
        let limit = backend.configuration.maxFrameBytes
        do {
            for try await message in inbound.messages(maxSize: backend.configuration.hardFrameLimit) {
                let bytes: ByteBuffer
                switch message {
                case .text(let text):
                    bytes = ByteBuffer(string: text)
                case .binary:
                    await sendError("binary frames are not supported; send JSON text")
                    continue
                }
                guard bytes.readableBytes <= limit else {
                    await sendError(ChatError.frameTooLarge(limit: limit).description)
                    continue
                }
                let text: String
                do {
                    text = try ClientFrame.parseChatMessage(bytes.readableBytesView)
                } catch {
                    await sendError(error.description)
                    continue
                }
                let inboundMessage = InboundChatMessage(
                    id: UUID().uuidString.lowercased(), group: group, sender: nil, text: text, receivedAt: Timestamp.nowMillis())
                do {
                    try await backend.submit(inboundMessage)
                } catch {
                    logger.warning("message not accepted by the broker", metadata: ["error": "\(error)"])
                    await sendError("message not accepted, try again")
                }
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
}
