import Synchronization

/// Items handed over from one task to another, taken all at once: ``next()`` returns everything appended
/// since the previous call (waiting when there is nothing), or nil once finished and drained.
final class Gathering<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var waiter: CheckedContinuation<[Element]?, Never>?
        var finished = false
    }
    private let state = Mutex(State())

    func append(_ items: [Element]) {
        let resume = state.withLock { s -> (CheckedContinuation<[Element]?, Never>, [Element])? in
            s.items += items
            guard let waiter = s.waiter else { return nil }
            s.waiter = nil
            defer { s.items = [] }
            return (waiter, s.items)
        }
        if let (waiter, items) = resume { waiter.resume(returning: items) }
    }

    func finish() {
        let waiter = state.withLock { s -> CheckedContinuation<[Element]?, Never>? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> [Element]? {
        await withCheckedContinuation { (c: CheckedContinuation<[Element]?, Never>) in
            let ready = state.withLock { s -> [Element]?? in
                if !s.items.isEmpty {
                    defer { s.items = [] }
                    return .some(s.items)
                }
                if s.finished { return .some(nil) }
                s.waiter = c
                return .none
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}
