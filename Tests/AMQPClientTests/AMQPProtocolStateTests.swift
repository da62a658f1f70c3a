@testable import AMQPClient
import Synchronization
import Testing

/// The AMQP client's protocol state, with no broker: publisher confirms and consumer channels.
@Suite struct AMQPProtocolStateTests {
    /// A batch of `count` publishes and what became of it.
    static func batch(_ count: Int) -> (ConfirmBatch, AMQPConfirmation) {
        let confirmation = AMQPConfirmation()
        return (ConfirmBatch(remaining: count, confirmation: confirmation), confirmation)
    }

    static func outcome(_ confirmation: AMQPConfirmation) -> String {
        let result = Mutex<String>("pending")
        confirmation.onFailure { error in result.withLock { $0 = "\(error)" } }
        return result.withLock { $0 }
    }

    @Test func confirmsSettleTheirBatchesSinglyOrManyAtOnce() async throws {
        var tracker = ConfirmTracker()
        let (two, twoDone) = Self.batch(2), (one, oneDone) = Self.batch(1), (last, lastDone) = Self.batch(1)
        #expect([tracker.register(two), tracker.register(two), tracker.register(one), tracker.register(last)] == [1, 2, 3, 4])
        tracker.confirm(tag: 1, multiple: false, ok: true)
        #expect(two.remaining == 1 && tracker.pendingCount == 3)
        tracker.confirm(tag: 3, multiple: true, ok: true)   // 2 and 3 at once
        try await twoDone.wait()
        try await oneDone.wait()
        tracker.confirm(tag: 4, multiple: false, ok: false)
        await #expect(throws: AMQPError.nacked) { try await lastDone.wait() }
        #expect(tracker.pendingCount == 0)
    }

    @Test func aReturnedMandatoryMessageFailsItsBatchAsUnroutableWhenConfirmed() async throws {
        var tracker = ConfirmTracker()
        let (batch, done) = Self.batch(2)
        let first = tracker.register(batch), second = tracker.register(batch)
        tracker.returned(tag: second, .unroutable(exchange: "x", routingKey: "nobody"))
        tracker.confirm(tag: first, multiple: false, ok: true)
        #expect(Self.outcome(done) == "pending")
        tracker.confirm(tag: second, multiple: false, ok: true)
        await #expect(throws: AMQPError.unroutable(exchange: "x", routingKey: "nobody")) { try await done.wait() }
    }

    @Test func aDroppedConnectionFailsWhatWaitsAndTheNextNumbersFromOne() async throws {
        var tracker = ConfirmTracker()
        let (a, aDone) = Self.batch(3), (b, bDone) = Self.batch(1)
        for _ in 0..<3 { _ = tracker.register(a) }
        _ = tracker.register(b)
        tracker.confirm(tag: 2, multiple: true, ok: true)
        #expect(tracker.failAll(.connectionLost) == 2)
        await #expect(throws: AMQPError.connectionLost) { try await aDone.wait() }
        await #expect(throws: AMQPError.connectionLost) { try await bDone.wait() }
        #expect(tracker.nextTag == 1 && tracker.pendingCount == 0)
        tracker.confirm(tag: 9, multiple: true, ok: true)   // a late ack of the old connection: nothing to settle
    }

    @Test func thousandsOfConfirmsOutOfOrderLeaveNothingBehind() async throws {
        var tracker = ConfirmTracker()
        let batches = (0..<3_000).map { _ in Self.batch(1) }
        for (batch, _) in batches { _ = tracker.register(batch) }
        for tag in stride(from: 3_000, through: 1, by: -2) { tracker.confirm(tag: UInt64(tag), multiple: false, ok: true) }
        tracker.confirm(tag: 2_999, multiple: true, ok: true)
        #expect(tracker.pendingCount == 0)
        for (_, done) in batches { try await done.wait() }
    }

    @Test func consumerChannelsAreReusedAndAnAckForAnEarlierOpeningIsStale() {
        var channels = ConsumerChannels(first: 3)
        let a = channels.take(), b = channels.take()
        #expect((a, b) == (3, 4))
        let epochA = channels.opened(a)
        _ = channels.opened(b)
        #expect(channels.isCurrent(a, epoch: epochA))
        channels.closed(a)
        #expect(!channels.isCurrent(a, epoch: epochA), "an ack for a closed channel is dropped")
        #expect(channels.take() == 3, "a closed number is taken again first")
        let again = channels.opened(3)
        #expect(again != epochA && !channels.isCurrent(3, epoch: epochA) && channels.isCurrent(3, epoch: again))
        channels.closed(7)   // never opened: nothing to free
        #expect(channels.take() == 5)

        channels.reset()   // a new connection
        #expect(channels.take() == 3)
        #expect(channels.epoch(of: 4) == nil && !channels.isCurrent(3, epoch: again))
    }

    @Test func backoffDoublesUpToItsMaximumAndStartsOverAfterASuccess() {
        var backoff = Backoff(initial: .milliseconds(100), maximum: .milliseconds(500))
        #expect((0..<5).map { _ in backoff.next() } == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(500), .milliseconds(500)])
        backoff.reset()
        #expect(backoff.next() == .milliseconds(100))
    }
}
