import AMQPClient
import ChatProtocol
import ChannelLayer
import ChatStorage
import Foundation
import Logging
import NIOCore
import ServiceKit
import ServiceLifecycle

/// Answers history requests: the last N messages of a room (before a seq), as the frames sockets receive.
final class HistoryResponder: Service {
    let connection: AMQPConnection
    let store: MessageStore
    let logger: Logger
    static let maxLimit = 200
    /// The most a resume asks for (the gateway's `CHAT_RESUME_LIMIT` is at most this).
    static let maxResume = 1000

    init(connection: AMQPConnection, store: MessageStore, logger: Logger) {
        self.connection = connection
        self.store = store
        var logger = logger
        logger[metadataKey: "amqp.queue"] = .string(ChatTopology.historyQueue)
        self.logger = logger
    }

    func run() async throws {
        try await ChatTopology.declare(.historyResponder, on: connection)
        let consumer = connection.consume(queue: ChatTopology.historyQueue, prefetch: 256)
        // Answered concurrently (reads of the WAL reader connection): a burst of joins each asks for history.
        await answerConcurrently(consumer, maxConcurrent: Self.maxConcurrent) { delivery in await self.answer(delivery) }
    }

    static let maxConcurrent = 16

    func answer(_ delivery: AMQPDelivery) async {
        let request: HistoryRequest
        do {
            request = try JSONDecoder().decode(HistoryRequest.self, from: Data(buffer: delivery.body))
        } catch {
            logger.warning("malformed history request", metadata: ["error": "\(error)"])
            fail(delivery, "malformed history request")
            return
        }
        do {
            switch request {
            case .summaries(let queries):
                let body = try JSONEncoder().encode(try await store.summaries(queries))
                connection.sendReply(AMQPRequester.reply(to: delivery, body: ByteBuffer(bytes: body)), logger: logger)
            case .after(let group, let afterSeq, let limit):
                let limit = max(0, min(limit, Self.maxResume))
                // One more than asked tells "more were missed than the cap".
                let (found, last) = try await store.messages(group: group, afterSeq: max(0, afterSeq), limit: limit + 1)
                let messages = found.count > limit ? [] : found
                var headers: AMQPTable = [ChatTopology.countHeader: .int(Int64(messages.count)), ChatTopology.lastSeqHeader: .int(last)]
                if found.count > limit { headers[ChatTopology.truncatedHeader] = .bool(true) }
                if let first = messages.first { headers[ChatTopology.seqHeader] = .int(first.seq) }
                let body = messages.map(\.clientFrame).joined(separator: "\n")
                connection.sendReply(AMQPRequester.reply(to: delivery, body: ByteBuffer(string: body), headers: headers), logger: logger)
            case .messages(let group, let limit, let beforeSeq):
                let limit = max(0, min(limit, Self.maxLimit))
                let messages = limit == 0 ? [] : try await store.history(group: group, beforeSeq: beforeSeq, limit: limit)
                let body = messages.map(\.clientFrame).joined(separator: "\n")
                var headers: AMQPTable = [ChatTopology.countHeader: .int(Int64(messages.count))]
                if let first = messages.first { headers[ChatTopology.seqHeader] = .int(first.seq) }
                connection.sendReply(AMQPRequester.reply(to: delivery, body: ByteBuffer(string: body), headers: headers), logger: logger)
            }
        } catch {
            logger.error("history request failed", metadata: ["error": "\(error)", "chat.request": "\(request)"])
            fail(delivery, "history unavailable")
        }
    }

    /// Answers a request that cannot be served with a typed failure (``ChatTopology/failureHeader``).
    private func fail(_ delivery: AMQPDelivery, _ reason: String) {
        connection.sendReply(AMQPRequester.reply(to: delivery, body: ByteBuffer(), headers: [ChatTopology.failureHeader: .string(reason)]),
                             logger: logger)
    }
}

