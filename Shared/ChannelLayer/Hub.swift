import ChatProtocol
import NIOCore
import Synchronization

/// The one owner of this process's sockets (members): which are open, by id (for persistence's acks), and
/// which are in which group (for broadcasts). Groups are reference-counted so that a group with 1,000 local
/// members costs one binding: `onFirstMember` / `onLastMember` run only on 0↔1 changes, chained per group so
/// that a bind and an unbind of the same group never overtake each other.
///
/// A broadcast reaches the members of one event loop in one hop to that loop, however many rooms and members
/// it holds (``deliver(_:delivered:)``); its frames come encoded once, WebSocket header included
/// (``WebSocketWire``), and every socket writes the same bytes.
package final class Hub: Sendable {
    struct State {
        var members: [String: [Int: any GroupMember]] = [:]
        var open: [Int: any GroupMember] = [:]
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

    // MARK: Open members

    /// An open socket, reachable by its id from now on (``acknowledge(_:)``).
    package func register(_ member: any GroupMember) {
        state.withLock { $0.open[member.memberID] = member }
    }

    /// A closed socket: an ack for it is dropped from now on (its client resends on reconnect).
    package func unregister(_ member: any GroupMember) {
        _ = state.withLock { $0.open.removeValue(forKey: member.memberID) }
    }

    /// Open members now.
    package var openCount: Int { state.withLock { $0.open.count } }

    /// Hands each ack to its member: one hop per event loop for all the acks of its members.
    package func acknowledge(_ acks: [MessageAck]) {
        var byMember: [Int: (member: any GroupMember, acks: [MessageAck])] = [:]
        state.withLock { state in
            for ack in acks {
                guard let member = state.open[ack.socket] else { continue }
                byMember[ack.socket, default: (member, [])].acks.append(ack)
            }
        }
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, work: [(any GroupMember, [MessageAck])])] = [:]
        for (_, entry) in byMember {
            if let loop = entry.member.deliveryLoop {
                byLoop[ObjectIdentifier(loop), default: (loop, [])].work.append((entry.member, entry.acks))
            } else {
                entry.member.acknowledge(entry.acks)
            }
        }
        for (_, bucket) in byLoop {
            let work = bucket.work
            bucket.loop.execute { for (member, acks) in work { member.acknowledge(acks) } }
        }
    }

    // MARK: Groups

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

    // MARK: Broadcasts

    /// Delivers to every local member of `group`; returns how many received it.
    @discardableResult
    package func dispatch(_ message: ChannelMessage, to group: String) -> Int {
        dispatch([message], to: group)
    }

    /// Delivers messages (in order) to every local member of `group`. `delivered` is called with each set of
    /// members once they have the messages (on their loop).
    @discardableResult
    package func dispatch(_ messages: [ChannelMessage], to group: String,
                         delivered: (@Sendable (_ members: Int) -> Void)? = nil) -> Int {
        deliver([Broadcast(group: group, messages: messages, delivered: delivered)])
    }

    /// One room's messages in a broadcast, in seq order, and what to call with the number of members that got them.
    package struct Broadcast: Sendable {
        package var group: String
        package var messages: [ChannelMessage]
        package var delivered: (@Sendable (_ members: Int) -> Void)?

        package init(group: String, messages: [ChannelMessage], delivered: (@Sendable (_ members: Int) -> Void)? = nil) {
            self.group = group
            self.messages = messages
            self.delivered = delivered
        }
    }

    /// Delivers several rooms' messages with one hop per event loop in all: each loop's task hands each of its
    /// members its room's messages (one call, so one flush per socket). Returns the deliveries made (members
    /// × messages).
    @discardableResult
    package func deliver(_ broadcasts: [Broadcast]) -> Int {
        typealias Work = (members: [any GroupMember], broadcast: Int)
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, work: [Work])] = [:]
        var total = 0
        let groups = state.withLock { state in broadcasts.map { $0.messages.isEmpty ? nil : state.members[$0.group] } }
        for (index, members) in groups.enumerated() {
            guard let members, !members.isEmpty else { continue }
            let broadcast = broadcasts[index]
            total += members.count * broadcast.messages.count
            var local: [ObjectIdentifier: [any GroupMember]] = [:]
            for member in members.values {
                if let loop = member.deliveryLoop {
                    let key = ObjectIdentifier(loop)
                    if byLoop[key] == nil { byLoop[key] = (loop, []) }
                    local[key, default: []].append(member)
                } else {
                    member.deliver(broadcast.messages)
                    broadcast.delivered?(1)
                }
            }
            for (key, members) in local { byLoop[key]!.work.append((members, index)) }
        }
        for (_, bucket) in byLoop {
            let work = bucket.work
            bucket.loop.execute {
                for (members, index) in work {
                    let broadcast = broadcasts[index]
                    for member in members { member.deliver(broadcast.messages) }
                    broadcast.delivered?(members.count)
                }
            }
        }
        return total
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

/// Server-to-client WebSocket frames, encoded once per broadcast rather than once per socket. Hand-written
/// (RFC 6455 §5.2, unmasked text frames) because encoding per socket cost an extra buffer and write per frame
/// per socket (docs/benchmarks.md, "Issue 19", the hub).
package enum WebSocketWire {
    /// Encodes `payloads` as text frames back to back in one buffer, and returns each frame as a slice of it.
    package static func textFrames(_ payloads: [ByteBuffer], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [ByteBuffer] {
        var size = 0
        for payload in payloads { size += headerSize(payload.readableBytes) + payload.readableBytes }
        var buffer = allocator.buffer(capacity: size)
        var bounds: [(Int, Int)] = []
        bounds.reserveCapacity(payloads.count)
        for payload in payloads {
            let start = buffer.writerIndex
            writeHeader(length: payload.readableBytes, into: &buffer)
            var payload = payload
            buffer.writeBuffer(&payload)
            bounds.append((start, buffer.writerIndex - start))
        }
        return bounds.map { buffer.getSlice(at: $0.0, length: $0.1)! }
    }

    static func headerSize(_ length: Int) -> Int {
        length <= 125 ? 2 : length <= 0xFFFF ? 4 : 10
    }

    /// FIN and opcode 1 (text), no mask, then the payload length in 7, 7+16 or 7+64 bits.
    static func writeHeader(length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x81))
        if length <= 125 {
            buffer.writeInteger(UInt8(length))
        } else if length <= 0xFFFF {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
    }
}
