import ChannelLayer
import ChatProtocol
import NIOCore

/// What a socket is sent first: its room's history, what it missed since `after` (a resume), or a reset.
struct OpeningHistory: Sendable {
    /// Stored frames, oldest first; the first has seq `firstSeq` (seqs are contiguous).
    var frames: [ByteBuffer] = []
    var firstSeq: Int64?
    /// The seq the client already has (`?since=`): live messages after it follow, a gap is filled.
    var after: Int64?
    /// More was missed than a resume sends (or the client knows seqs the room does not have): tell the client,
    /// and go on after this seq, the room's last.
    var reset: Int64?
    /// History did not answer.
    var failed = false
}

/// The order of one socket's frames, apart from NIO so that it is tested without a broker: the handler feeds it
/// what happens (opened, broadcasts, client frames, a filled gap) and carries out the actions it emits.
///
/// - While the socket opens, broadcasts are held and client frames kept; once the history is written, the held
///   broadcasts follow (skipping every seq the history had), then the kept client frames.
/// - A seq already written (history overlap, a redelivery) is skipped; a gap (messages missed while the
///   gateway's queue was re-created) is filled from history before anything after it is written.
/// - More than `capacity` held broadcasts or kept client frames means the socket fell behind.
///
/// - A resume (`?since=`) writes what was missed after `since`, or `{"type":"reset","last_seq"}` when more was
///   missed than the cap: then live messages follow `last_seq`.
///
/// Actions are emitted through a closure rather than returned in an array: it runs for every socket of every
/// broadcast.
struct ChatSession {
    enum Phase: Equatable { case opening, live, closed }

    enum Action: Equatable {
        /// Write this frame to the socket.
        case write(ByteBuffer)
        /// Write this WebSocket frame, encoded already (header included), to the socket.
        case writeEncoded(ByteBuffer)
        /// Read the stored messages with `after < seq < before` and hand them to ``ChatSession/gapFilled(_:before:emit:)``.
        case fillGap(after: Int64, before: Int64)
        /// Handle this client frame now (it arrived while the socket was opening).
        case clientFrame(ByteBuffer)
        /// Send an `{"error"}` frame.
        case error(String)
        /// The socket fell behind: close it (4008).
        case disconnectSlow
        /// A gap history could not fill: close the socket (1013), and the client resumes with `?since=` from
        /// what it has, so it misses nothing.
        case resumeRequired
    }

    let capacity: Int
    private(set) var phase = Phase.opening
    /// The seq of the last message written.
    private(set) var lastSeq: Int64?
    private var held: [ChannelMessage] = []
    private var early: [ByteBuffer] = []
    private var fillingGap = false
    /// The last presence frame written: a presence frame that says the same again is skipped.
    private var lastPresence: ByteBuffer?

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// A client frame: kept while opening (the room is not joined yet), handled at once when live.
    mutating func clientFrame(_ bytes: ByteBuffer, emit: (Action) -> Void) {
        switch phase {
        case .live: emit(.clientFrame(bytes))
        case .opening:
            if early.count < capacity { early.append(bytes) } else { emit(.error("too many messages before the room was joined")) }
        case .closed: break
        }
    }

    /// The room is joined and its history read: writes the history (or the reset), then `presence`, then what
    /// was held and kept meanwhile.
    mutating func opened(_ history: OpeningHistory, presence: ByteBuffer, emit: (Action) -> Void) {
        guard phase == .opening else { return }
        if let reset = history.reset {
            emit(.write(ByteBuffer(string: ClientFrame.reset(lastSeq: reset))))
            lastSeq = reset
        } else {
            for frame in history.frames { emit(.write(frame)) }
            if let firstSeq = history.firstSeq, !history.frames.isEmpty {
                lastSeq = firstSeq + Int64(history.frames.count) - 1
            } else if let after = history.after {
                lastSeq = after
            }
        }
        if history.failed { emit(.error("history unavailable")) }
        lastPresence = presence
        emit(.write(presence))
        phase = .live
        let held = self.held, early = self.early
        self.held = []
        self.early = []
        deliver(held, emit: emit)
        for bytes in early where phase == .live { emit(.clientFrame(bytes)) }
    }

    /// Broadcasts, in the order the broker delivered them.
    mutating func deliver(_ messages: [ChannelMessage], emit: (Action) -> Void) {
        guard phase == .live, !fillingGap else {
            if phase != .closed { hold(messages[...], emit: emit) }
            return
        }
        for (index, message) in messages.enumerated() {
            if let seq = message.seq {
                if let last = lastSeq, seq <= last { continue }
                if let last = lastSeq, seq > last + 1 {
                    fillingGap = true
                    emit(.fillGap(after: last, before: seq))
                    hold(messages[index...], emit: emit)
                    return
                }
                lastSeq = seq
            } else if message.body.readableBytesView.starts(with: Self.presencePrefix) {
                if message.body == lastPresence { continue }
                lastPresence = message.body
            }
            if let wire = message.wire { emit(.writeEncoded(wire)) } else { emit(.write(message.body)) }
        }
    }

    static let presencePrefix = Array(#"{"type":"presence""#.utf8)

    /// The stored messages of a gap, then what was held behind it. When they do not cover the whole gap
    /// (history did not answer, or the gap is longer than one read), the socket is closed for a resume.
    mutating func gapFilled(_ missing: (firstSeq: Int64?, frames: [ByteBuffer])?, before seq: Int64, emit: (Action) -> Void) {
        guard phase == .live, fillingGap, let last = lastSeq else { return }
        guard let missing, let first = missing.firstSeq, first <= last + 1, first + Int64(missing.frames.count) >= seq else {
            close()
            emit(.resumeRequired)
            return
        }
        for (offset, frame) in missing.frames.enumerated() where first + Int64(offset) > last && first + Int64(offset) < seq {
            emit(.write(frame))
        }
        lastSeq = seq - 1
        fillingGap = false
        let held = self.held
        self.held = []
        deliver(held, emit: emit)
    }

    /// The socket closed: nothing more is written or kept.
    mutating func close() {
        phase = .closed
        held = []
        early = []
    }

    private mutating func hold(_ messages: ArraySlice<ChannelMessage>, emit: (Action) -> Void) {
        held.append(contentsOf: messages)
        if held.count > capacity {
            close()
            emit(.disconnectSlow)
        }
    }
}
