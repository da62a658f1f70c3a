/// A token bucket: `rate` tokens a second up to `burst`; a take that finds less than one token is refused with
/// the time until one will be there. Pure (the caller passes the clock), so it is tested without waiting.
struct TokenBucket: Sendable, Equatable {
    let rate: Double
    let burst: Double
    private(set) var tokens: Double
    private(set) var updatedNanos: UInt64

    init(rate: Double, burst: Double, now: UInt64) {
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = self.burst
        self.updatedNanos = now
    }

    enum Decision: Equatable {
        case allowed
        /// Refused: the next take passes in this many milliseconds (at least 1).
        case refused(retryAfterMs: Int)
    }

    mutating func take(now: UInt64) -> Decision {
        refill(now: now)
        if tokens >= 1 {
            tokens -= 1
            return .allowed
        }
        let wait = (1 - tokens) / rate
        return .refused(retryAfterMs: max(1, Int((wait * 1000).rounded(.up))))
    }

    /// True once the bucket is full again: it has nothing to remember and may be dropped.
    mutating func isFull(now: UInt64) -> Bool {
        refill(now: now)
        return tokens >= burst
    }

    private mutating func refill(now: UInt64) {
        guard now > updatedNanos else { return }
        tokens = min(burst, tokens + Double(now - updatedNanos) / 1e9 * rate)
        updatedNanos = now
    }
}
