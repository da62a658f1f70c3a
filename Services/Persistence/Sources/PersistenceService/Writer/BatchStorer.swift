import AMQPClient
import ChatProtocol
import ChatStorage
import Logging
import ServiceKit

/// Where the writer stores batches: the ``MessageStore``, or a wrapper of it in tests.
protocol BatchStore: Sendable {
    func store(_ batch: [InboundChatMessage], checkExisting: Bool) async throws -> [StoredChatMessage]
    func isReachable() async -> Bool
}

extension MessageStore: BatchStore {}

/// What storing a batch came to: each message the store took with its row (a resend's earlier row), in order,
/// and the messages the database refused on their own, with the reason.
struct StoredBatch: Sendable {
    var taken: [(message: InboundChatMessage, row: StoredChatMessage)]
    var refused: [(message: InboundChatMessage, reason: String)]
}

/// The writer's storing stage: one transaction per batch when it can, isolating a message the database refuses.
struct BatchStorer: Sendable {
    let store: any BatchStore
    let logger: Logger
    /// How long one attempt to store a batch may take before it counts as failed.
    var attemptLimit: Duration = .seconds(10)
    /// The first wait before storing again while the database is unreachable (doubling up to 5 s).
    var firstRetry: Duration = .milliseconds(100)

    /// Stores `messages` in order, as one transaction when it can. When the database is there but refuses the
    /// batch, the batch is split in halves (stored one after the other, so order holds) until the message it
    /// refuses on its own is found; that one is returned as refused, with the reason, and gets no seq. While
    /// the database is unreachable it retries with backoff, never moving past the batch. Nil at shutdown.
    func store(_ messages: ArraySlice<InboundChatMessage>, checkExisting: Bool) async -> StoredBatch? {
        if messages.isEmpty { return StoredBatch(taken: [], refused: []) }
        var check = checkExisting
        var backoff = Backoff(initial: firstRetry)
        var refusals = 0
        let store = self.store, batch = Array(messages)
        while true {
            do {
                // Bounded: a statement caught on a connection the database dropped may never return (seen with a
                // fast PostgreSQL stop); the retry runs on another connection and the store is idempotent.
                let attemptCheck = check
                let rows = try await withDeadline(attemptLimit) { try await store.store(batch, checkExisting: attemptCheck) }
                return StoredBatch(taken: zip(batch, rows).map { (message: $0, row: $1) }, refused: [])
            } catch {
                if error is TimedOut {
                    logger.warning("the database did not answer a batch in time; retrying it",
                                   metadata: ["batch.size": "\(messages.count)", "timeout": "\(attemptLimit)"])
                }
                // A conflict with a redelivery (or with the previous owner of the partition): look up and retry.
                if !check {
                    check = true
                    continue
                }
                // Unreachable and not answering in time are the same thing here: wait and retry the whole batch.
                // Past the deadline counts as unreachable (the error is the answer).
                if (try? await withDeadline(attemptLimit, { await store.isReachable() })) == true {
                    refusals += 1
                    if messages.count > 1 {
                        logger.warning("the database refused a batch; splitting it to find the message",
                                       metadata: ["error": "\(error)", "batch.size": "\(messages.count)"])
                        let middle = messages.startIndex + messages.count / 2
                        guard let first = await self.store(messages[..<middle], checkExisting: true),
                              let second = await self.store(messages[middle...], checkExisting: true) else { return nil }
                        return StoredBatch(taken: first.taken + second.taken, refused: first.refused + second.refused)
                    }
                    // One message, refused three times while the database answers: it is the message.
                    if refusals >= 3 { return StoredBatch(taken: [], refused: [(messages[messages.startIndex], Self.reason(error))]) }
                } else {
                    logger.error("database unavailable; retrying the batch",
                                 metadata: ["error": "\(error)", "batch.size": "\(messages.count)", "retry.in": "\(backoff.delay)"])
                }
                guard await sleepUntilShutdown(for: backoff.next()) else { return nil }
            }
        }
    }

    static func reason(_ error: any Error) -> String {
        String(String(reflecting: error).prefix(500))
    }
}
