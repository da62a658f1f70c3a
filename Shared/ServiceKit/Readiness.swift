import AMQPClient
import Logging
import ServiceLifecycle
import Synchronization

/// What a service still waits for before it can do its work (its database, its partitions): `/health/ready`
/// answers 503 with these names until each is marked ready, so a load balancer or an orchestrator waits too.
package final class Readiness: Sendable {
    private let pending = Mutex<[String: String]>([:])

    package init() {}

    /// Marks `part` as not ready yet, with a reason that `/health/ready` shows.
    package func waiting(_ part: String, _ reason: String) {
        pending.withLock { $0[part] = reason }
    }

    /// `part` is ready: it no longer holds readiness back.
    package func ready(_ part: String) {
        _ = pending.withLock { $0.removeValue(forKey: part) }
    }

    /// The parts not ready yet, with why.
    package var waitingFor: [String: String] { pending.withLock { $0 } }
}

/// Runs `body` until it succeeds, retrying with exponential backoff (100 ms up to 5 s, logged) instead of
/// ending the service: a service that starts before its database or broker waits for it. Marks `part` on
/// `readiness` as waiting meanwhile. Throws only `CancellationError` (shutdown came first).
/// Each attempt gets `attemptTimeout` (nil: none, for a body that cannot be cancelled): a pooled database client
/// waits for a connection rather than failing, and that wait must show up as an attempt that did not succeed.
package func retryUntilDone<T: Sendable>(_ part: String, readiness: Readiness, logger: Logger, attemptTimeout: Duration? = .seconds(5),
                                        _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    var backoff = Backoff()
    var attempt = 1
    readiness.waiting(part, "starting")
    while true {
        do {
            let value = if let attemptTimeout { try await withTimeout(attemptTimeout, body) } else { try await body() }
            readiness.ready(part)
            if attempt > 1 { logger.info("\(part) ready", metadata: ["attempts": "\(attempt)"]) }
            return value
        } catch {
            readiness.waiting(part, "\(error)")
            logger.warning("\(part) not ready, retrying", metadata: ["error": "\(error)", "retry.in": "\(backoff.delay)", "attempt": "\(attempt)"])
        }
        guard await sleepUntilShutdown(for: backoff.next()) else { throw CancellationError() }
        attempt += 1
    }
}

/// An attempt that took longer than it may.
package struct TimedOut: Error, CustomStringConvertible {
    package let after: Duration
    package var description: String { "no answer within \(after)" }
}

/// Runs `body`, cancelling it and throwing ``TimedOut`` if it takes longer than `limit`.
package func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut(after: limit) }
        return value
    }
}

/// Runs `body` and returns its result, or throws ``TimedOut`` once `limit` has passed, whichever is first. Unlike
/// ``withTimeout(_:_:)`` it does not wait for `body` to end: a call stuck on a connection that will never answer
/// is cancelled and left behind, so the caller can retry on another. Only for work that is safe to repeat while
/// the abandoned attempt may still complete (idempotent writes).
package func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let outcome = DeadlineOutcome<T>()
    return try await withCheckedThrowingContinuation { continuation in
        outcome.set(continuation)
        let work = Task {
            do { outcome.resume(.success(try await body())) } catch { outcome.resume(.failure(error)) }
        }
        let timer = Task {
            try await Task.sleep(for: limit)
            if outcome.resume(.failure(TimedOut(after: limit))) { work.cancel() }
        }
        outcome.onResume { timer.cancel() }
    }
}

/// The first of the body's result and the deadline, delivered once.
private final class DeadlineOutcome<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var result: Result<T, any Error>?
        var onResume: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    func set(_ continuation: CheckedContinuation<T, any Error>) {
        state.withLock { $0.continuation = continuation }
    }

    func onResume(_ callback: @escaping @Sendable () -> Void) {
        let done = state.withLock { s -> Bool in
            if s.result != nil { return true }
            s.onResume = callback
            return false
        }
        if done { callback() }
    }

    /// Resumes the caller with `result` unless it was resumed already; returns whether this call did it.
    @discardableResult
    func resume(_ result: Result<T, any Error>) -> Bool {
        let (continuation, callback) = state.withLock { s -> (CheckedContinuation<T, any Error>?, (@Sendable () -> Void)?) in
            guard s.result == nil else { return (nil, nil) }
            s.result = result
            defer { s.continuation = nil; s.onResume = nil }
            return (s.continuation, s.onResume)
        }
        guard let continuation else { return false }
        continuation.resume(with: result)
        callback?()
        return true
    }
}
