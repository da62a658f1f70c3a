/// Exponential backoff: the first wait, doubled after each failure up to `maximum`. One rule for every retry
/// loop (the broker reconnect here, and the services' start and storage retries, which depend on this module).
package struct Backoff: Sendable {
    package let initial: Duration
    package let maximum: Duration
    /// The wait before the next attempt.
    package private(set) var delay: Duration

    package init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5)) {
        self.initial = initial
        self.maximum = maximum
        self.delay = initial
    }

    /// The wait before this attempt; the one after it is twice as long, up to `maximum`.
    package mutating func next() -> Duration {
        defer { delay = min(delay * 2, maximum) }
        return delay
    }

    /// An attempt succeeded: the next failure waits `initial` again.
    package mutating func reset() { delay = initial }
}
