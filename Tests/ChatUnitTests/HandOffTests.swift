import AMQPClient
@testable import PersistenceService
import Testing

/// The small hand-offs between tasks and threads: the writer's gathering of deliveries, and confirmations.
@Suite struct HandOffTests {
    @Test func gatheringHandsOverEverythingAppendedSinceTheLastTake() async {
        let gathering = Gathering<Int>()
        gathering.append([1, 2])
        gathering.append([3])
        #expect(await gathering.next() == [1, 2, 3])
        async let waiting = gathering.next()
        try? await Task.sleep(for: .milliseconds(50))
        gathering.append([4])
        #expect(await waiting == [4])
    }

    @Test func gatheringDrainsBeforeItEnds() async {
        let gathering = Gathering<Int>()
        gathering.append([1])
        gathering.finish()
        #expect(await gathering.next() == [1])
        #expect(await gathering.next() == nil)
        async let ended: [Int]? = {
            let late = Gathering<Int>()
            async let next = late.next()
            try? await Task.sleep(for: .milliseconds(50))
            late.finish()
            return await next
        }()
        #expect(await ended == nil)
    }

    @Test func aConfirmationResumesEveryWaiterOnceAndRemembersItsResult() async throws {
        let confirmation = AMQPConfirmation()
        async let first: Void = confirmation.wait()
        async let second: Void = confirmation.wait()
        try await Task.sleep(for: .milliseconds(50))
        confirmation.complete(.success(()))
        confirmation.complete(.failure(.nacked))  // too late: the first result stands
        try await first
        try await second
        try await confirmation.wait()
    }

    @Test func aFailedConfirmationFailsWaitersAndCallbacksEvenLateOnes() async {
        let confirmation = AMQPConfirmation()
        let early = Recorder()
        confirmation.onFailure { early.record("\($0)") }
        confirmation.complete(.failure(.nacked))
        let late = Recorder()
        confirmation.onFailure { late.record("\($0)") }
        await #expect(throws: AMQPError.self) { try await confirmation.wait() }
        #expect(early.values.count == 1 && late.values.count == 1)
    }

    @Test func aSucceededConfirmationCallsNoFailureCallback() {
        let confirmation = AMQPConfirmation()
        let calls = Recorder()
        confirmation.onFailure { calls.record("\($0)") }
        confirmation.complete(.success(()))
        confirmation.onFailure { calls.record("\($0)") }
        #expect(calls.values.isEmpty)
    }
}

import Synchronization

/// Strings recorded from any thread.
final class Recorder: Sendable {
    private let box = Mutex<[String]>([])
    func record(_ value: String) { box.withLock { $0.append(value) } }
    var values: [String] { box.withLock { $0 } }
}
