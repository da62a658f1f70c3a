import ChannelLayer
import NIOCore
import Testing
@testable import GatewayService

/// The per-socket order (``ChatSession``) without NIO or a broker: held and early frames, skipped seqs, gaps.
@Suite struct ChatSessionTests {
    /// A session and everything it emitted, written frames as strings.
    struct Recorder {
        var session: ChatSession
        var actions: [ChatSession.Action] = []
        init(capacity: Int = 8) { session = ChatSession(capacity: capacity) }

        var written: [String] {
            actions.compactMap { if case .write(let frame) = $0 { String(buffer: frame) } else { nil } }
        }
        mutating func deliver(_ seqs: ClosedRange<Int64>) {
            var emitted: [ChatSession.Action] = []
            session.deliver(seqs.map { ChannelMessage(body: ByteBuffer(string: "m\($0)"), seq: $0) }) { emitted.append($0) }
            actions += emitted
        }
        mutating func open(history: ClosedRange<Int64>?, failed: Bool = false, after: Int64? = nil, reset: Int64? = nil,
                           presence: String = #"{"type":"presence","count":1}"#) {
            var emitted: [ChatSession.Action] = []
            let frames = history.map { $0.map { ByteBuffer(string: "m\($0)") } } ?? []
            session.opened(OpeningHistory(frames: frames, firstSeq: history?.lowerBound, after: after, reset: reset, failed: failed),
                           presence: ByteBuffer(string: presence)) { emitted.append($0) }
            actions += emitted
        }
        mutating func fill(_ missing: ClosedRange<Int64>?, before seq: Int64) {
            var emitted: [ChatSession.Action] = []
            let reply = missing.map { (firstSeq: Optional($0.lowerBound), frames: $0.map { ByteBuffer(string: "m\($0)") }) }
            session.gapFilled(reply, before: seq) { emitted.append($0) }
            actions += emitted
        }
        mutating func client(_ text: String) {
            var emitted: [ChatSession.Action] = []
            session.clientFrame(ByteBuffer(string: text)) { emitted.append($0) }
            actions += emitted
        }
    }

    static let presence = #"{"type":"presence","count":1}"#

    @Test func broadcastsDuringOpeningWaitForTheHistoryAndSkipWhatItHad() {
        var r = Recorder()
        r.deliver(3...5)           // joined the group; history not read yet
        #expect(r.actions.isEmpty)
        r.open(history: 1...4)     // history already has 3 and 4
        #expect(r.written == ["m1", "m2", "m3", "m4", Self.presence, "m5"])
        #expect(r.session.phase == .live && r.session.lastSeq == 5)
    }

    @Test func redeliveredSeqsAreSkipped() {
        var r = Recorder()
        r.open(history: nil)
        r.deliver(1...3)
        r.deliver(2...4)
        #expect(r.written == [Self.presence, "m1", "m2", "m3", "m4"])
    }

    @Test func aGapIsFilledFromHistoryBeforeAnythingAfterIt() {
        var r = Recorder()
        r.open(history: 1...2)
        r.deliver(6...7)                      // 3...5 were missed
        #expect(r.actions.last == .fillGap(after: 2, before: 6))
        r.deliver(8...8)                      // held behind the gap
        #expect(r.written == ["m1", "m2", Self.presence])
        r.fill(3...5, before: 6)
        #expect(r.written == ["m1", "m2", Self.presence, "m3", "m4", "m5", "m6", "m7", "m8"])
        #expect(r.session.lastSeq == 8)
    }

    /// Passing over a gap would lose messages for this socket: it is closed, and the client resumes from m1.
    @Test func aGapHistoryCannotFillClosesTheSocketForAResume() {
        var r = Recorder()
        r.open(history: 1...1)
        r.deliver(4...4)
        r.fill(nil, before: 4)                // history did not answer
        #expect(r.written == ["m1", Self.presence])
        #expect(r.actions.last == .resumeRequired)
        #expect(r.session.phase == .closed)

        var long = Recorder()
        long.open(history: 1...1)
        long.deliver(300...300)
        long.fill(99...299, before: 300)      // one read holds the newest 200 of the 298 missed
        #expect(long.written == ["m1", Self.presence])
        #expect(long.actions.last == .resumeRequired)
    }

    @Test func clientFramesBeforeTheRoomIsJoinedAreHandledAfterTheHistory() {
        var r = Recorder(capacity: 2)
        r.client("a")
        r.client("b")
        r.client("c")                         // over the capacity
        #expect(r.actions == [.error("too many messages before the room was joined")])
        r.open(history: nil)
        #expect(r.actions.suffix(2) == [.clientFrame(ByteBuffer(string: "a")), .clientFrame(ByteBuffer(string: "b"))])
        r.client("d")
        #expect(r.actions.last == .clientFrame(ByteBuffer(string: "d")))
    }

    @Test func theSamePresenceIsNotWrittenTwice() {
        var r = Recorder()
        r.open(history: nil)
        var emitted: [ChatSession.Action] = []
        let same = ChannelMessage(body: ByteBuffer(string: Self.presence))
        let other = ChannelMessage(body: ByteBuffer(string: #"{"type":"presence","count":2}"#))
        r.session.deliver([same, other, other]) { emitted.append($0) }
        #expect(emitted == [.write(other.body)])
    }

    @Test func aSocketThatFallsBehindIsDisconnectedAndKeepsNothing() {
        var r = Recorder(capacity: 4)
        r.deliver(1...3)
        #expect(r.actions.isEmpty)
        r.deliver(4...5)
        #expect(r.actions == [.disconnectSlow])
        #expect(r.session.phase == .closed)
        r.open(history: nil)
        r.deliver(6...6)
        #expect(r.actions == [.disconnectSlow])
    }

    @Test func aResumeWritesWhatWasMissedThenLiveWithoutAGapOrADuplicate() {
        var r = Recorder()
        r.deliver(8...9)                       // live while the resume is read
        r.open(history: 6...8, after: 5)       // the client had up to 5
        #expect(r.written == ["m6", "m7", "m8", Self.presence, "m9"])
        var q = Recorder()
        q.open(history: nil, after: 5)         // nothing was missed
        q.deliver(5...6)
        q.deliver(8...8)                       // 7 missing: filled from history first
        #expect(q.written == [Self.presence, "m6"] && q.actions.last == .fillGap(after: 6, before: 8))
    }

    @Test func aResetIsSaidAndLiveGoesOnAfterIt() {
        var r = Recorder()
        r.open(history: nil, after: 5, reset: 900)
        r.deliver(900...901)
        #expect(r.written == [#"{"type":"reset","last_seq":900}"#, Self.presence, "m901"])
    }

    @Test func historyThatFailedIsSaid() {
        var r = Recorder()
        r.open(history: nil, failed: true)
        #expect(r.actions.first == .error("history unavailable"))
    }
}
