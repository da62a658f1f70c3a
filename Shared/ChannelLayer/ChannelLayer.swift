import NIOCore
import Synchronization

/// A message on the channel layer: an already-encoded frame and, for room broadcasts, its sequence number.
package struct ChannelMessage: Sendable {
    package var body: ByteBuffer
    package var group: String?
    package var seq: Int64?

    package init(body: ByteBuffer, group: String? = nil, seq: Int64? = nil) {
        self.body = body
        self.group = group
        self.seq = seq
    }
}

/// Django Channels' channel layer: groups of channels (here, of sockets), added to, discarded from and sent to.
///
/// `groupAdd` returns once messages sent to the group afterwards reach the member (for AMQP: the
/// binding is confirmed by the broker), which is what lets a joining socket read history without a gap.
package protocol ChannelLayer: Sendable {
    func groupAdd(_ group: String, channel: any GroupMember) async throws
    func groupDiscard(_ group: String, channel: any GroupMember) async throws
    func groupSend(_ group: String, message: ChannelMessage) async throws
}

/// Something that belongs to groups and receives what is sent to them: in the gateway, a WebSocket
/// connection that writes straight to its socket.
package protocol GroupMember: AnyObject, Sendable {
    /// Unique within the process (``GroupRegistry/allocateID()``).
    var memberID: Int { get }
    /// The event loop `deliver` must be called on, or nil when any thread will do. The registry calls the
    /// members of one loop together, with one hop to that loop per dispatch rather than one per member.
    var deliveryLoop: (any EventLoop)? { get }
    /// Takes messages in order (a run of a room's messages arrives as one call).
    func deliver(_ messages: [ChannelMessage])
}

/// The groups of one process: which local channels are in which group. Reference-counted so that a group
/// with 1,000 local members costs one binding: `onFirstMember` / `onLastMember` run only on 0↔1 changes,
/// chained per group so that a bind and an unbind of the same group never overtake each other.
package final class GroupRegistry: Sendable {
    struct State {
        var members: [String: [Int: any GroupMember]] = [:]
        var lastOperation: [String: Task<Void, any Error>] = [:]
        var nextID = 1
    }
    private let state = Mutex(State())
    package init() {}

    /// A new member id, unique in this process.
    package func allocateID() -> Int {
        state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
    }

    /// Adds a member; when it is the group's first, runs `onFirstMember` after the group's previous operation.
    /// Returns once the group's latest operation is done.
    package func add(_ group: String, _ channel: any GroupMember, onFirstMember: @escaping @Sendable () async throws -> Void) async throws {
        let operation = state.withLock { state -> Task<Void, any Error>? in
            var members = state.members[group, default: [:]]
            let wasEmpty = members.isEmpty
            members[channel.memberID] = channel
            state.members[group] = members
            if wasEmpty {
                let previous = state.lastOperation[group]
                let task = Task {
                    _ = await previous?.result
                    try await onFirstMember()
                }
                state.lastOperation[group] = task
                return task
            }
            return state.lastOperation[group]
        }
        do {
            try await operation?.value
        } catch {
            // The group could not be joined: take the member back out so the counts stay true.
            _ = try? await remove(group, channel, onLastMember: {})
            throw error
        }
        forgetIfLatest(group, operation)
    }

    /// Drops a finished operation that is still the group's latest (nothing left to chain after): a gateway
    /// holding 19,000 rooms keeps no task per room.
    private func forgetIfLatest(_ group: String, _ operation: Task<Void, any Error>?) {
        guard let operation else { return }
        state.withLock { state in
            if let last = state.lastOperation[group], last == operation { state.lastOperation[group] = nil }
        }
    }

    /// Removes a member; when it was the last, runs `onLastMember` after the group's previous operation.
    package func remove(_ group: String, _ channel: any GroupMember, onLastMember: @escaping @Sendable () async throws -> Void) async throws {
        let operation = state.withLock { state -> Task<Void, any Error>? in
            guard var members = state.members[group], members.removeValue(forKey: channel.memberID) != nil else { return nil }
            if !members.isEmpty {
                state.members[group] = members
                return nil
            }
            state.members[group] = nil
            let previous = state.lastOperation[group]
            let task = Task {
                _ = await previous?.result
                try await onLastMember()
            }
            state.lastOperation[group] = task
            return task
        }
        try await operation?.value
        forgetIfLatest(group, operation)
    }

    /// Delivers to every local member of `group`; returns how many received it.
    @discardableResult
    package func dispatch(_ message: ChannelMessage, to group: String) -> Int {
        dispatch([message], to: group)
    }

    /// Delivers messages (in order) to every local member of `group`. Members bound to an event loop get
    /// them in one task per loop, so a broadcast to a room of 1,000 sockets costs one hop per loop.
    /// `delivered` is called with each set of members once they have the messages (on their loop).
    @discardableResult
    package func dispatch(_ messages: [ChannelMessage], to group: String,
                         delivered: (@Sendable (_ members: Int) -> Void)? = nil) -> Int {
        guard let members = state.withLock({ $0.members[group] }), !messages.isEmpty else { return 0 }
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, members: [any GroupMember])] = [:]
        for member in members.values {
            if let loop = member.deliveryLoop {
                byLoop[ObjectIdentifier(loop), default: (loop, [])].members.append(member)
            } else {
                member.deliver(messages)
                delivered?(1)
            }
        }
        for (_, bucket) in byLoop {
            let members = bucket.members
            bucket.loop.execute {
                for member in members { member.deliver(messages) }
                delivered?(members.count)
            }
        }
        return members.count
    }

    /// Members per group, for heartbeats to the room service.
    package func memberCounts() -> [String: Int] {
        state.withLock { state in state.members.mapValues(\.count) }
    }

    /// How many local members `group` has now.
    package func memberCount(_ group: String) -> Int {
        state.withLock { $0.members[group]?.count ?? 0 }
    }
}

/// A channel layer inside one process: for unit tests of pure logic, never as proof the system works.
package final class InMemoryChannelLayer: ChannelLayer {
    package let registry: GroupRegistry

    package init(registry: GroupRegistry = GroupRegistry()) {
        self.registry = registry
    }

    package func groupAdd(_ group: String, channel: any GroupMember) async throws {
        try await registry.add(group, channel, onFirstMember: {})
    }

    package func groupDiscard(_ group: String, channel: any GroupMember) async throws {
        try await registry.remove(group, channel, onLastMember: {})
    }

    package func groupSend(_ group: String, message: ChannelMessage) async throws {
        var message = message
        message.group = group
        registry.dispatch(message, to: group)
    }
}
