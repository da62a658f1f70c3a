import ChannelLayer
import ChatProtocol
import Presence
import Synchronization

/// Who is in a room as this gateway sees it, the seam between the sockets and where presence comes from: this
/// gateway's own sockets, and the other gateways' as their membership events tell. ``MembershipPresence`` is
/// the one on the membership fanout; a test or another transport may bring its own.
protocol PresenceManager: Sendable {
    /// One of this gateway's sockets joined (`email`: who, in a consultation room; named rooms count sockets).
    func joined(_ group: String, email: String?)
    func left(_ group: String, email: String?)
    /// Another gateway's event (joins, leaves, heartbeats, stops).
    func apply(_ event: MembershipEvent)
    /// This gateway's heartbeat: its members per room and its consultation participants.
    func heartbeat(gateway: String) -> MembershipEvent
    /// The presence frame of a room now: `{"type":"presence","count"}` or `{"type":"presence","online"}`.
    func frame(for group: String) -> String
    /// Forgets the gateways not heard from within the expiry; returns them.
    func expire() -> [String]
    /// Counts a socket of a signed-in user here, unless the user has `limit` sockets on every gateway already
    /// (0: no limit); false when refused.
    func reserveSocket(ofUser user: String, limit: Int) -> Bool
    /// A counted socket of the user closed (or did not open).
    func releaseSocket(ofUser user: String)
}

/// Presence from the membership fanout: the others' members in a ``Membership``, this gateway's own named
/// sockets from its group hub (never behind), its consultation participants counted here.
final class MembershipPresence: PresenceManager {
    let gatewayID: String
    let hub: Hub
    /// The other gateways' members.
    let others: Membership
    /// This gateway's consultation sockets per room and email.
    private let localOnline = Mutex<[String: [String: Int]]>([:])
    /// This gateway's sockets per signed-in user.
    private let localUsers = Mutex<[String: Int]>([:])

    init(gatewayID: String, hub: Hub, expiry: Duration) {
        self.gatewayID = gatewayID
        self.hub = hub
        self.others = Membership(expiry: expiry)
    }

    func joined(_ group: String, email: String?) {
        guard let email else { return }
        localOnline.withLock { $0[group, default: [:]][email, default: 0] += 1 }
    }

    func left(_ group: String, email: String?) {
        guard let email else { return }
        localOnline.withLock { online in
            guard let count = online[group]?[email] else { return }
            online[group]![email] = count > 1 ? count - 1 : nil
            if online[group]!.isEmpty { online[group] = nil }
        }
    }

    func apply(_ event: MembershipEvent) {
        // This gateway's own events come back on the fanout: its members are counted from the hub.
        guard event.gateway != gatewayID else { return }
        event.apply(to: others)
    }

    func heartbeat(gateway: String) -> MembershipEvent {
        MembershipEvent(kind: .heartbeat, gateway: gateway, rooms: hub.memberCounts(), online: localOnline.withLock { $0 },
                        users: localUsers.withLock { $0 })
    }

    func frame(for group: String) -> String {
        if case .consult = ChatGroup(key: group) {
            var online = Set(others.online(in: group, excluding: gatewayID).keys)
            online.formUnion(localOnline.withLock { $0[group]?.keys.map { $0 } ?? [] })
            return PresenceFrame.consult(online: Array(online))
        }
        let count = hub.memberCount(group) + others.members(of: group, excluding: gatewayID)
        return PresenceFrame.named(room: ChatGroup.displayName(ofKey: group), count: count)
    }

    func expire() -> [String] { others.expire() }

    func reserveSocket(ofUser user: String, limit: Int) -> Bool {
        let elsewhere = limit > 0 ? others.sockets(ofUser: user, excluding: gatewayID) : 0
        return localUsers.withLock { users in
            let here = users[user] ?? 0
            if limit > 0 && here + elsewhere >= limit { return false }
            users[user] = here + 1
            return true
        }
    }

    func releaseSocket(ofUser user: String) {
        localUsers.withLock { users in
            guard let count = users[user] else { return }
            users[user] = count > 1 ? count - 1 : nil
        }
    }
}
