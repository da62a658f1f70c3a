@testable import AMQPClient
import Foundation
import NIOCore
import Testing

/// Requests nobody answers, on the real broker: they end by their timeout or their caller's cancellation,
/// and leave nothing pending.
@Suite(.serialized) struct AMQPRequesterTests {
    @Test func aCancelledRequestEndsAtOnceAndLeavesNothingPending() async throws {
        let (requester, queue) = try await unanswered("requester-cancel")
        let started = ContinuousClock.now
        let request = Task { try await requester.request(routingKey: queue, body: ByteBuffer(string: "ping"), timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(200))
        request.cancel()
        await #expect(throws: CancellationError.self) { try await request.value }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(requester.pendingCount == 0)
    }

    @Test func aCallerCancelledBeforeItsRequestIsPublishedIsNotLeftWaiting() async throws {
        let (requester, queue) = try await unanswered("requester-early")
        for _ in 0..<50 {
            let request = Task { try await requester.request(routingKey: queue, body: ByteBuffer(string: "ping"), timeout: .seconds(60)) }
            request.cancel()
            await #expect(throws: CancellationError.self) { try await request.value }
        }
        #expect(requester.pendingCount == 0)
    }

    @Test func anUnansweredRequestTimesOut() async throws {
        let (requester, queue) = try await unanswered("requester-timeout")
        await #expect(throws: AMQPError.self) {
            try await requester.request(routingKey: queue, body: ByteBuffer(string: "ping"), timeout: .seconds(1))
        }
        #expect(requester.pendingCount == 0)
    }

    /// The expiration is the timeout in milliseconds: a 100–999 ms timeout was once "0" (whole seconds × 1000).
    @Test func theExpirationIsTheTimeoutInMilliseconds() {
        #expect(AMQPRequester.expiration(.milliseconds(100)) == "100")
        #expect(AMQPRequester.expiration(.milliseconds(999)) == "999")
        #expect(AMQPRequester.expiration(.seconds(5)) == "5000")
        #expect(AMQPRequester.expiration(.microseconds(10)) == "1")
    }

    /// Many requests at once, none answered: each ends by its own timeout, and the sweeper stops after them.
    @Test func concurrentUnansweredRequestsAllTimeOut() async throws {
        let (requester, queue) = try await unanswered("requester-many")
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<200 {
                group.addTask {
                    do {
                        _ = try await requester.request(routingKey: queue, body: ByteBuffer(string: "ping"), timeout: .milliseconds(300))
                        return false
                    } catch AMQPError.timeout { return true }
                }
            }
            for try await timedOut in group { #expect(timedOut) }
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(requester.pendingCount == 0)
    }

    /// A requester and a queue its requests are routed to, which nobody consumes.
    private func unanswered(_ name: String) async throws -> (AMQPRequester, String) {
        let connection = await TestBroker.connect(name)
        let queue = TestBroker.uniqueName("test.requests")
        try await connection.declareQueue(queue, durable: false, autoDelete: false)
        return (AMQPRequester(connection: connection, replyQueue: TestBroker.uniqueName("test.replies")), queue)
    }
}
