import Synchronization

/// A bounded cache of values that never change once read (rooms): two generations, each of at most half the
/// capacity. A lookup that finds an entry in the older generation moves it to the newer; when the newer is
/// full it becomes the older, and the older is dropped. So memory stays within `capacity` entries whatever
/// the number of rooms, and the rooms in use stay cached.
package final class RecentCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Generations {
        var current: [Key: Value] = [:]
        var previous: [Key: Value] = [:]
    }
    private let generations = Mutex(Generations())
    package let capacity: Int

    package init(capacity: Int) {
        self.capacity = max(2, capacity)
    }

    package subscript(key: Key) -> Value? {
        generations.withLock { g in
            if let value = g.current[key] { return value }
            guard let value = g.previous.removeValue(forKey: key) else { return nil }
            Self.insert(key, value, into: &g, half: capacity / 2)
            return value
        }
    }

    package func set(_ key: Key, _ value: Value) {
        generations.withLock { Self.insert(key, value, into: &$0, half: capacity / 2) }
    }

    package var count: Int { generations.withLock { $0.current.count + $0.previous.count } }

    private static func insert(_ key: Key, _ value: Value, into g: inout Generations, half: Int) {
        if g.current[key] == nil && g.current.count >= half {
            g.previous = g.current
            g.current = [:]
        }
        g.current[key] = value
    }
}
