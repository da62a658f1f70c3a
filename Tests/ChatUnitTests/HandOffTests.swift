import AMQPClient
@testable import ChatStorage
@testable import PersistenceService
import Synchronization
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

/// Strings recorded from any thread.
final class Recorder: Sendable {
    private let box = Mutex<[String]>([])
    func record(_ value: String) { box.withLock { $0.append(value) } }
    var values: [String] { box.withLock { $0 } }
}

/// The SQLite writer's FIFO async mutex.
@Suite struct AsyncLockTests {
    final class Probe: Sendable {
        let state = Mutex<(inside: Int, most: Int, order: [Int])>((0, 0, []))
    }

    @Test func oneHolderAtATimeEveryoneServedAndAThrowingBodyReleasesIt() async throws {
        let lock = AsyncLock(), probe = Probe()
        struct Refused: Error {}
        await #expect(throws: Refused.self) { try await lock.withLock { throw Refused() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<50 {
                group.addTask {
                    try await lock.withLock {
                        probe.state.withLock { $0.inside += 1; $0.most = max($0.most, $0.inside) }
                        try await Task.sleep(for: .milliseconds(1))
                        probe.state.withLock { $0.inside -= 1; $0.order.append(index) }
                    }
                }
                try await Task.sleep(for: .microseconds(200))  // arrive one after another
            }
            try await group.waitForAll()
        }
        let (_, most, order) = probe.state.withLock { $0 }
        #expect(most == 1)
        #expect(order.count == 50)
        #expect(order.sorted() == Array(0..<50))
    }
}
