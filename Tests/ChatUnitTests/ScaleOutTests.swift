import AMQPClient
import ChatProtocol
import Foundation
@testable import GatewayService
@testable import PersistenceService
import Presence
import Testing

/// The logic that lets every service run as several instances, without a broker.
@Suite struct PartitionOwnershipTests {
    let t0 = ContinuousClock.now

    @Test func aLoneWorkerOwnsEveryPartition() {
        let alone = PartitionOwnership(me: "a", partitions: 8, lease: .seconds(3))
        #expect(alone.mine == Set(0..<8))
    }

    @Test func workersSplitThePartitionsEvenlyAndAgree() {
        var views = ["a", "b", "c"].map { PartitionOwnership(me: $0, partitions: 8, lease: .seconds(3)) }
        for i in views.indices { for w in ["a", "b", "c"] { views[i].heard(from: w, at: t0) } }
        let shares = views.map(\.mine)
        #expect(shares.map(\.count).sorted() == [2, 3, 3])
        #expect(shares[0].union(shares[1]).union(shares[2]) == Set(0..<8))
        #expect(shares[0].isDisjoint(with: shares[1]) && shares[1].isDisjoint(with: shares[2]) && shares[0].isDisjoint(with: shares[2]))
        // Every view names the same owner for every partition.
        for p in 0..<8 { #expect(Set(views.map { $0.owner(of: p) }).count == 1) }
    }

    @Test func aSilentWorkerExpiresAndItsPartitionsComeBack() {
        var a = PartitionOwnership(me: "a", partitions: 4, lease: .seconds(3))
        let new = a.heard(from: "b", at: t0)
        let again = a.heard(from: "b", at: t0 + .seconds(1))
        #expect(new && !again)
        #expect(a.mine == [0, 2])
        let early = a.expire(at: t0 + .seconds(2))
        #expect(early.isEmpty)
        let late = a.expire(at: t0 + .seconds(5))
        #expect(late == ["b"])
        #expect(a.mine == Set(0..<4))
        let back = a.heard(from: "b", at: t0 + .seconds(6))
        let forgotten = a.forget("b")
        #expect(back && forgotten && a.mine == Set(0..<4))
    }
}

@Suite struct PartitionTests {
    @Test func aRoomAlwaysMapsToTheSamePartitionAndRoomsSpread() {
        #expect(ChatTopology.partition(of: "named:lobby", count: 8) == ChatTopology.partition(of: "named:lobby", count: 8))
        // FNV-1a 64 of "named:lobby", fixed: gateways and workers of different builds must agree.
        #expect(ChatTopology.partition(of: "named:lobby", count: 1) == 0)
        let counts = (0..<800).reduce(into: [Int: Int]()) { $0[ChatTopology.partition(of: "named:room-\($1)", count: 8), default: 0] += 1 }
        #expect(counts.count == 8)
        #expect(counts.values.allSatisfy { $0 > 50 })
    }
}

@Suite struct MessageTextTests {
    @Test(arguments: ["plain", "tab\tnew\nline\r", "안녕 😀", "\u{A0}non-breaking", "£5", "\u{FFFD}"])
    func allowed(_ text: String) {
        #expect(MessageText.firstRefusedScalar(in: text) == nil)
    }

    @Test(arguments: [("nul\u{0}", 0x0), ("bell\u{7}", 0x7), ("esc\u{1B}[1m", 0x1B), ("del\u{7F}", 0x7F), ("c1\u{85}", 0x85), ("c1\u{9F}", 0x9F)])
    func refused(_ text: String, _ scalar: UInt32) throws {
        #expect(MessageText.firstRefusedScalar(in: text)?.value == scalar)
        #expect(throws: ChatError.self) { try ClientFrame.parseChatMessage(Array("{\"message\": \(JSONWriter.quoted(text))}".utf8)) }
    }

    @Test func theErrorNamesTheCharacter() {
        #expect(throws: ChatError.invalidFrame("'message' must not contain the control character U+0000")) {
            try ClientFrame.parseChatMessage(Array(#"{"message": "a\u0000b"}"#.utf8))
        }
    }
}

@Suite struct MembershipTests {
    @Test func joinsLeavesAndHeartbeatsOfSeveralGateways() {
        let m = Membership(expiry: .seconds(3))
        let t0 = ContinuousClock.now
        m.join(gateway: "g1", room: "named:a", now: t0)
        m.join(gateway: "g1", room: "named:a", now: t0)
        m.join(gateway: "g2", room: "named:a", now: t0)
        m.join(gateway: "g2", room: "consult:1", email: "v@x.io", now: t0)
        m.join(gateway: "g2", room: "consult:1", email: "v@x.io", now: t0)
        #expect(m.members(of: "named:a") == 3)
        #expect(m.members(of: "named:a", excluding: "g1") == 1)
        m.leave(gateway: "g2", room: "consult:1", email: "v@x.io", now: t0)
        #expect(m.online(in: "consult:1") == ["v@x.io": 1])
        m.leave(gateway: "g2", room: "consult:1", email: "v@x.io", now: t0)
        #expect(m.online(in: "consult:1").isEmpty)
        // A heartbeat is the gateway's whole truth.
        m.heartbeat(gateway: "g1", rooms: ["named:a": 5], now: t0 + .seconds(2))
        #expect(m.members(of: "named:a") == 6)
        // g2 went silent at t0; g1 was heard at t0 + 2.
        #expect(m.expire(now: t0 + .seconds(4)) == ["g2"])
        #expect(m.snapshot().rooms == ["named:a": 5])
        MembershipEvent(kind: .stop, gateway: "g1").apply(to: m)
        #expect(m.snapshot().gateways == 0)
    }

    @Test func eventsRoundTripAsJSON() throws {
        let event = MembershipEvent(kind: .heartbeat, gateway: "g", rooms: ["named:a": 2], online: ["consult:3": ["a@b.c": 1]])
        #expect(try JSONDecoder().decode(MembershipEvent.self, from: JSONEncoder().encode(event)) == event)
        #expect(PresenceFrame.named(room: "a\"b", count: 2) == #"{"type":"presence","room":"a\"b","count":2}"#)
        #expect(PresenceFrame.consult(online: ["b@x.io", "a@x.io"]) == #"{"type":"presence","online":["a@x.io","b@x.io"]}"#)
    }
}
