/// The publisher-confirm bookkeeping of one connection, apart from its C I/O so that it is unit-tested without a
/// broker (ConfirmTrackerTests): which caller waits for which delivery tag, the broker's acks (single or
/// `multiple`), nacks and returns, and failing what is left when the connection drops.
struct ConfirmTracker {
    /// The tag the next publish gets (the broker numbers a channel's publishes from 1).
    private(set) var nextTag: UInt64 = 1
    private var pending: [UInt64: ConfirmBatch] = [:]
    /// Tags in publish order from `head` on, for `multiple` acks.
    private var order: [UInt64] = []
    private var head = 0
    private var returned: Set<UInt64> = []

    /// Publishes whose confirm has not come.
    var pendingCount: Int { pending.count }

    /// The tag of the next publish, waited for by `batch`.
    mutating func register(_ batch: ConfirmBatch) -> UInt64 {
        let tag = nextTag
        nextTag += 1
        pending[tag] = batch
        order.append(tag)
        return tag
    }

    /// The broker returned a mandatory message as unroutable; its confirm follows, and then the batch fails.
    mutating func returned(tag: UInt64, _ error: AMQPError) {
        guard let batch = pending[tag] else { return }
        returned.insert(tag)
        batch.returnedError = error
    }

    /// The broker's basic.ack (`ok`) or basic.nack for `tag`, or for every tag up to it (`multiple`).
    mutating func confirm(tag: UInt64, multiple: Bool, ok: Bool) {
        if multiple {
            while head < order.count, order[head] <= tag {
                settle(order[head], ok: ok)
                head += 1
            }
        } else {
            settle(tag, ok: ok)
            while head < order.count, pending[order[head]] == nil { head += 1 }
        }
        if head > 1024, head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    private mutating func settle(_ tag: UInt64, ok: Bool) {
        guard let batch = pending.removeValue(forKey: tag) else { return }
        (ok ? AMQPMetrics.confirms : AMQPMetrics.nacks).increment()
        if !ok {
            batch.failure = batch.failure ?? .nacked
        } else if returned.remove(tag) != nil {
            batch.failure = batch.failure ?? batch.returnedError ?? .unroutable(exchange: "", routingKey: "")
        }
        batch.remaining -= 1
        if batch.remaining == 0 { batch.finish() }
    }

    /// Fails every batch still waiting (the connection dropped or closed) and starts again from tag 1;
    /// returns how many batches it failed.
    @discardableResult
    mutating func failAll(_ error: AMQPError) -> Int {
        var seen = Set<ObjectIdentifier>()
        for batch in pending.values where seen.insert(ObjectIdentifier(batch)).inserted {
            batch.failure = error
            batch.finish()
        }
        self = ConfirmTracker()
        return seen.count
    }
}

/// The consumer channels of one connection: which numbers are open, numbers reused after a close (the
/// broker allows 2,047 a connection), and the epoch of each opening, so that an ack for a channel closed
/// since, or of an earlier connection, is dropped rather than sent to a channel that reuses the number.
struct ConsumerChannels {
    let first: UInt16
    private var next: UInt16
    private var free: [UInt16] = []
    private var epochs: [UInt16: UInt64] = [:]
    /// Never reset: epochs are unique across connections too.
    private var nextEpoch: UInt64 = 1

    init(first: UInt16) {
        self.first = first
        self.next = first
    }

    /// A channel number to open: a closed one first, else a new one.
    mutating func take() -> UInt16 {
        if let reused = free.popLast() { return reused }
        defer { next += 1 }
        return next
    }

    /// `channel` is open: its deliveries carry the returned epoch.
    mutating func opened(_ channel: UInt16) -> UInt64 {
        defer { nextEpoch += 1 }
        epochs[channel] = nextEpoch
        return nextEpoch
    }

    /// `channel` is closed: its number can be taken again, and acks of its deliveries are dropped.
    mutating func closed(_ channel: UInt16) {
        guard epochs.removeValue(forKey: channel) != nil else { return }
        free.append(channel)
    }

    func epoch(of channel: UInt16) -> UInt64? { epochs[channel] }

    /// Whether an ack of a delivery from `channel` in `epoch` still belongs to an open channel.
    func isCurrent(_ channel: UInt16, epoch: UInt64) -> Bool { epochs[channel] == epoch }

    /// A new connection: no channel is open.
    mutating func reset() {
        next = first
        free.removeAll()
        epochs.removeAll()
    }
}
