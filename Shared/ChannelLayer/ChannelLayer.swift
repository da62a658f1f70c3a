import NIOCore
import Synchronization

/// A message on the channel layer: an already-encoded frame and, for room broadcasts, its sequence number.
public struct ChannelMessage: Sendable {
    public var body: ByteBuffer
    public var group: String?
    public var seq: Int64?

    public init(body: ByteBuffer, group: String? = nil, seq: Int64? = nil) {
        self.body = body
        self.group = group
        self.seq = seq
    }
}

/// Django Channels' channel layer: named channels (mailboxes) and groups of channels.
///
/// `groupAdd` returns once messages sent to the group afterwards reach the channel (for AMQP: the
/// binding is confirmed by the broker), which is what lets a joining socket read history without a gap.
public protocol ChannelLayer: Sendable {
    /// A new process-local channel with a unique name.
    func newChannel() -> LocalChannel
    func groupAdd(_ group: String, channel: any GroupMember) async throws
    func groupDiscard(_ group: String, channel: any GroupMember) async throws
    func groupSend(_ group: String, message: ChannelMessage) async throws
    /// Sends to one channel by name, wherever its process is.
    func send(toChannel name: String, message: ChannelMessage) async throws
}

/// Something that belongs to groups and receives what is sent to them: a ``LocalChannel`` (a mailbox read
/// as an async sequence) or, in the gateway, a WebSocket connection that writes straight to its socket.
public protocol GroupMember: AnyObject, Sendable {
    /// Unique within the process (``GroupRegistry/allocateID()``); the channel name's `!n` part.
    var memberID: Int { get }
    /// The event loop `deliver` must be called on, or nil when any thread will do. The registry calls the
    /// members of one loop together, with one hop to that loop per dispatch rather than one per member.
    var deliveryLoop: (any EventLoop)? { get }
    /// Takes messages in order (a run of a room's messages arrives as one call).
    func deliver(_ messages: [ChannelMessage])
}

/// A channel's mailbox. It holds at most `capacity` undelivered messages: a reader that falls that far
/// behind is marked ``overflowed`` (and the gateway disconnects it) rather than growing without bound.
public final class LocalChannel: GroupMember, Hashable {
    public let name: String
    public let localID: Int
    public let messages: AsyncStream<ChannelMessage>
    let continuation: AsyncStream<ChannelMessage>.Continuation
    private let overflowFlag = Atomic<Bool>(false)

    init(processName: String, localID: Int, capacity: Int) {
        self.localID = localID
        self.name = "\(processName)!\(localID)"
        (messages, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingOldest(capacity))
    }

    public var memberID: Int { localID }
    public var deliveryLoop: (any EventLoop)? { nil }
    public func deliver(_ messages: [ChannelMessage]) {
        for message in messages { deliver(message) }
    }

    /// Whether a message was dropped because the reader fell behind.
    public var overflowed: Bool { overflowFlag.load(ordering: .relaxed) }

    func deliver(_ message: ChannelMessage) {
        if case .dropped = continuation.yield(message) {
            overflowFlag.store(true, ordering: .relaxed)
            continuation.finish()
        }
    }

    /// Ends the mailbox (the socket closed).
    public func close() { continuation.finish() }

    public static func == (lhs: LocalChannel, rhs: LocalChannel) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// The groups of one process: which local channels are in which group. Reference-counted so that a group
/// with 1,000 local members costs one binding: `onFirstMember` / `onLastMember` run only on 0↔1 changes,
/// chained per group so that a bind and an unbind of the same group never overtake each other.
public final class GroupRegistry: Sendable {
    struct State {
        var members: [String: [Int: any GroupMember]] = [:]
        var channels: [Int: any GroupMember] = [:]
        var lastOperation: [String: Task<Void, any Error>] = [:]
        var nextID = 1
    }
    private let state = Mutex(State())
    public let processName: String
    let capacity: Int

    public init(processName: String, mailboxCapacity: Int) {
        self.processName = processName
        self.capacity = mailboxCapacity
    }

    public func newChannel() -> LocalChannel {
        state.withLock { state in
            let channel = LocalChannel(processName: processName, localID: state.nextID, capacity: capacity)
            state.nextID += 1
            state.channels[channel.localID] = channel
            return channel
        }
    }

    /// A new member id, for a member the caller makes (``register(_:)`` makes it reachable by name).
    public func allocateID() -> Int {
        state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
    }

    public func register(_ member: any GroupMember) {
        state.withLock { state in state.channels[member.memberID] = member }
    }

    public func forget(_ member: any GroupMember) {
        state.withLock { state in _ = state.channels.removeValue(forKey: member.memberID) }
    }

    func channel(localID: Int) -> (any GroupMember)? {
        state.withLock { $0.channels[localID] }
    }

    /// Adds a member; when it is the group's first, runs `onFirstMember` after the group's previous operation.
    /// Returns once the group's latest operation is done.
    public func add(_ group: String, _ channel: any GroupMember, onFirstMember: @escaping @Sendable () async throws -> Void) async throws {
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
    public func remove(_ group: String, _ channel: any GroupMember, onLastMember: @escaping @Sendable () async throws -> Void) async throws {
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
    public func dispatch(_ message: ChannelMessage, to group: String) -> Int {
        dispatch([message], to: group)
    }

    /// Delivers messages (in order) to every local member of `group`. Members bound to an event loop get
    /// them in one task per loop, so a broadcast to a room of 1,000 sockets costs one hop per loop.
    /// `delivered` is called with each set of members once they have the messages (on their loop).
    @discardableResult
    public func dispatch(_ messages: [ChannelMessage], to group: String,
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

    public func deliver(_ message: ChannelMessage, toLocalID id: Int) -> Bool {
        guard let member = channel(localID: id) else { return false }
        if let loop = member.deliveryLoop {
            loop.execute { member.deliver([message]) }
        } else {
            member.deliver([message])
        }
        return true
    }

    /// Members per group, for heartbeats to the room service.
    public func memberCounts() -> [String: Int] {
        state.withLock { state in state.members.mapValues(\.count) }
    }

    public func memberCount(_ group: String) -> Int {
        state.withLock { $0.members[group]?.count ?? 0 }
    }
}

/// A channel layer inside one process: for unit tests of pure logic, never as proof the system works.
public final class InMemoryChannelLayer: ChannelLayer {
    public let registry: GroupRegistry

    public init(processName: String = "memory", mailboxCapacity: Int = 1024) {
        registry = GroupRegistry(processName: processName, mailboxCapacity: mailboxCapacity)
    }

    public func newChannel() -> LocalChannel { registry.newChannel() }

    public func groupAdd(_ group: String, channel: any GroupMember) async throws {
        try await registry.add(group, channel, onFirstMember: {})
    }

    public func groupDiscard(_ group: String, channel: any GroupMember) async throws {
        try await registry.remove(group, channel, onLastMember: {})
    }

    public func groupSend(_ group: String, message: ChannelMessage) async throws {
        var message = message
        message.group = group
        registry.dispatch(message, to: group)
    }

    public func send(toChannel name: String, message: ChannelMessage) async throws {
        guard let id = ChannelNames.localID(of: name, inProcess: registry.processName) else { return }
        _ = registry.deliver(message, toLocalID: id)
    }
}

public enum ChannelNames {
    /// `gateway-abc!42` → 42 when the process is `gateway-abc`.
    public static func localID(of name: String, inProcess process: String) -> Int? {
        guard let bang = name.lastIndex(of: "!"), name[..<bang] == process else { return nil }
        return Int(name[name.index(after: bang)...])
    }

    public static func process(of name: String) -> String? {
        guard let bang = name.lastIndex(of: "!") else { return nil }
        return String(name[..<bang])
    }
}
