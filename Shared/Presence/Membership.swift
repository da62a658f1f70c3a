import Synchronization

/// Who is in which room, per gateway, as told by the gateways' joins, leaves and heartbeats on the
/// membership fanout: every room service instance and every gateway keeps one, so any of them answers alike.
/// A heartbeat replaces the gateway's whole state (it is the truth; events in between keep it current); a
/// gateway that stops sending them (it died) is forgotten after `expiry`. Consultation rooms also keep who
/// is online, by email.
package final class Membership: Sendable {
    struct GatewayState {
        var lastSeen: ContinuousClock.Instant
        var rooms: [String: Int] = [:]
        /// Consultation rooms: sockets per email.
        var online: [String: [String: Int]] = [:]
        /// Sockets per signed-in user.
        var users: [String: Int] = [:]
    }
    private let state = Mutex<[String: GatewayState]>([:])
    package let expiry: Duration

    package init(expiry: Duration) {
        self.expiry = expiry
    }

    /// A socket of `gateway` joined `room` (`email`: who, in a consultation room).
    package func join(gateway: String, room: String, email: String? = nil, user: String? = nil, now: ContinuousClock.Instant = .now) {
        state.withLock { gateways in
            var entry = gateways[gateway] ?? GatewayState(lastSeen: now)
            entry.lastSeen = now
            entry.rooms[room, default: 0] += 1
            if let email { entry.online[room, default: [:]][email, default: 0] += 1 }
            if let user { entry.users[user, default: 0] += 1 }
            gateways[gateway] = entry
        }
    }

    /// A socket of `gateway` left `room`.
    package func leave(gateway: String, room: String, email: String? = nil, user: String? = nil, now: ContinuousClock.Instant = .now) {
        state.withLock { gateways in
            guard var entry = gateways[gateway] else { return }
            entry.lastSeen = now
            if let count = entry.rooms[room] { entry.rooms[room] = count > 1 ? count - 1 : nil }
            if let email, let count = entry.online[room]?[email] {
                entry.online[room]![email] = count > 1 ? count - 1 : nil
                if entry.online[room]!.isEmpty { entry.online[room] = nil }
            }
            if let user, let count = entry.users[user] { entry.users[user] = count > 1 ? count - 1 : nil }
            gateways[gateway] = entry
        }
    }

    /// `gateway`'s whole membership now: it replaces what was known of it, and mends any lost join or leave.
    package func heartbeat(gateway: String, rooms: [String: Int], online: [String: [String: Int]] = [:], users: [String: Int] = [:],
                           now: ContinuousClock.Instant = .now) {
        state.withLock {
            $0[gateway] = GatewayState(lastSeen: now, rooms: rooms.filter { $0.value > 0 },
                                       online: online.mapValues { $0.filter { $0.value > 0 } }.filter { !$0.value.isEmpty },
                                       users: users.filter { $0.value > 0 })
        }
    }

    /// Forgets a gateway at once (it said it stops).
    package func forget(gateway: String) {
        _ = state.withLock { $0.removeValue(forKey: gateway) }
    }

    /// Members of a room on every gateway (but `excluding`, whose count the caller knows better).
    package func members(of room: String, excluding: String? = nil) -> Int {
        state.withLock { gateways in
            gateways.reduce(0) { $0 + ($1.key == excluding ? 0 : ($1.value.rooms[room] ?? 0)) }
        }
    }

    /// A signed-in user's sockets on every gateway (but `excluding`).
    package func sockets(ofUser user: String, excluding: String? = nil) -> Int {
        state.withLock { gateways in
            gateways.reduce(0) { $0 + ($1.key == excluding ? 0 : ($1.value.users[user] ?? 0)) }
        }
    }

    /// The emails online in a consultation room (but on `excluding`), with their socket counts.
    package func online(in room: String, excluding: String? = nil) -> [String: Int] {
        state.withLock { gateways in
            var out: [String: Int] = [:]
            for (gateway, entry) in gateways where gateway != excluding {
                for (email, count) in entry.online[room] ?? [:] { out[email, default: 0] += count }
            }
            return out
        }
    }

    /// Forgets gateways not heard from within `expiry`; returns their ids.
    package func expire(now: ContinuousClock.Instant = .now) -> [String] {
        state.withLock { gateways in
            let dead = gateways.filter { now - $0.value.lastSeen > expiry }.map(\.key).sorted()
            for id in dead { gateways[id] = nil }
            return dead
        }
    }

    /// How many gateways are known, and the members per room across them.
    package func snapshot() -> (gateways: Int, rooms: [String: Int]) {
        state.withLock { gateways in
            var rooms: [String: Int] = [:]
            for entry in gateways.values { for (room, count) in entry.rooms { rooms[room, default: 0] += count } }
            return (gateways.count, rooms)
        }
    }
}
