import Synchronization

/// Who owns which partition, as one worker sees it: every worker announces itself on a fanout exchange, each
/// keeps the workers heard from within the lease, and partition `p` belongs to the `p mod M`-th of the `M`
/// live workers in name order. Every worker computes the same answer from the same announcements, so they
/// agree within one announcement; while they do not, the partition queues' single active consumer keeps
/// any two from consuming one partition at once. A pure state machine, tested without a broker.
package struct PartitionOwnership: Sendable {
    package let me: String
    package let partitions: Int
    package let lease: Duration
    private(set) var lastSeen: [String: ContinuousClock.Instant] = [:]

    package init(me: String, partitions: Int, lease: Duration) {
        self.me = me
        self.partitions = partitions
        self.lease = lease
    }

    /// Records an announcement; returns whether the worker is new (the assignment changed).
    @discardableResult
    package mutating func heard(from worker: String, at now: ContinuousClock.Instant = .now) -> Bool {
        lastSeen.updateValue(now, forKey: worker) == nil
    }

    /// Forgets a worker that said it is leaving; returns whether it was known.
    package mutating func forget(_ worker: String) -> Bool {
        lastSeen.removeValue(forKey: worker) != nil
    }

    /// Forgets workers not heard from within the lease; returns them.
    package mutating func expire(at now: ContinuousClock.Instant = .now) -> [String] {
        let dead = lastSeen.filter { $0.key != me && now - $0.value > lease }.map(\.key).sorted()
        for worker in dead { lastSeen[worker] = nil }
        return dead
    }

    /// The live workers, in name order (this one always among them).
    package var workers: [String] { Array(Set(lastSeen.keys).union([me])).sorted() }

    /// The worker that owns `partition` among the live ones.
    package func owner(of partition: Int) -> String {
        let live = workers
        return live[partition % live.count]
    }

    /// The partitions this worker should consume now.
    package var mine: Set<Int> { Set((0..<partitions).filter { owner(of: $0) == me }) }
}
