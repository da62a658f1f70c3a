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

    /// A requester and a queue its requests are routed to, which nobody consumes.
    private func unanswered(_ name: String) async throws -> (AMQPRequester, String) {
        let connection = await TestBroker.connect(name)
        let queue = TestBroker.uniqueName("test.requests")
        try await connection.declareQueue(queue, durable: false, autoDelete: false)
        return (AMQPRequester(connection: connection, replyQueue: TestBroker.uniqueName("test.replies")), queue)
    }
}
