import ChannelLayer
import ChatProtocol
import Foundation
@testable import GatewayService
import NIOCore
import NIOWebSocket
import Testing

/// The rules of one socket, without NIO: close handshake, drain, slow consumer, oversize frames, the
/// consultation participant check, and that nothing is written after a close frame.
@Suite struct SocketStateMachineTests {
    /// Feeds the machine and keeps what it emitted, each action as a short text.
    struct Driver {
        var machine = SocketStateMachine(maxFrameBytes: 64, mailboxCapacity: 4, rates: nil)
        var actions: [String] = []

        static func describe(_ action: SocketStateMachine.Action) -> String {
            switch action {
            case .write(let frame): "write \(String(buffer: frame))"
            case .writeEncoded(let wire): "encoded \(wire.readableBytes)"
            case .errorFrame(let json): "error \(json)"
            case .frame(let json): "frame \(json)"
            case .flush: "flush"
            case .pong(let data): "pong \(String(buffer: data))"
            case .sendClose(let code, let reason): "close \(UInt16(webSocketErrorCode: code)) \(reason)"
            case .answerClose(let code): "answer close \(code.getInteger(at: code.readerIndex, as: UInt16.self).map(String.init) ?? "-")"
            case .closeChannel: "close channel"
            case .attach(let room): "attach \(room.group)"
            case .fillGap(_, let after, let before): "fill \(after)..<\(before)"
            case .submit(_, let text, let sender, let clientID): "submit \(text) from \(sender?.value ?? "-") id \(clientID ?? "-")"
            case .markRead(let room, let reader, let seq): "read \(room.id) \(reader.value) \(seq)"
            case .verifyRefresh(let token, _): "verify \(token)"
            case .scheduleExpiry(let date): "expiry \(date == nil ? "none" : "set")"
            case .scheduleDrainDeadline: "drain deadline"
            case .warn(let text): "warn \(text)"
            case .leave(let room): "leave \(room.group)"
            case .release(let room): "release \(room?.group ?? "-")"
            }
        }

        mutating func run(_ body: (inout SocketStateMachine, (SocketStateMachine.Action) -> Void) -> Void) {
            var emitted: [String] = []
            body(&machine) { emitted.append(Self.describe($0)) }
            actions = emitted
        }

        mutating func open(_ room: OpenedSession) {
            run { m, emit in m.opened(.opened(room, history: OpeningHistory()), socketID: 1, presence: { ByteBuffer(string: "p") }, emit: emit) }
        }
        mutating func text(_ text: String) { run { m, emit in m.text(ByteBuffer(string: text), emit: emit) } }
        mutating func deliver(_ seqs: ClosedRange<Int64>, writable: Bool = true) {
            run { m, emit in
                m.deliver(seqs.map { ChannelMessage(body: ByteBuffer(string: "m\($0)"), seq: $0) }, writable: { writable }, emit: emit)
            }
        }
    }

    static let named = OpenedSession(kind: .named, group: "named:lobby", identity: nil)
    static let shop = try! Email(validating: "shop@example.com")
    static let visitor = try! Email(validating: "visitor@example.com")
    static let consultRoom = ConsultRoom(id: 7, shopUserEmail: shop.value, visitorUserEmail: visitor.value, createdAt: 0)
    static let consult = OpenedSession(kind: .consult(consultRoom), group: consultRoom.group, identity: Identity(email: visitor, role: .visitor))

    @Test func theClientsCloseIsAnsweredWithItsCodeAndOursEndsWhenTheClientAnswers() {
        var d = Driver()
        d.open(Self.named)
        var code = ByteBuffer()
        code.write(webSocketErrorCode: .normalClosure)
        d.run { m, emit in m.clientClosed(code, emit: emit) }
        #expect(d.actions == ["answer close 1000"])
        d.deliver(1...1)
        #expect(d.actions == [], "nothing is written after a close frame")
        d.run { m, emit in m.clientClosed(code, emit: emit) }
        #expect(d.actions == ["close channel"])

        var ours = Driver()
        ours.open(Self.named)
        ours.run { m, emit in m.disconnectedByServer("bye", emit: emit) }
        #expect(ours.actions == [#"error {"error":"bye","code":"disconnected"}"#, "close 4403 disconnected"])
        ours.text(#"{"message":"late"}"#)
        #expect(ours.actions == [])
        ours.run { m, emit in m.clientClosed(code, emit: emit) }
        #expect(ours.actions == ["close channel"])
        ours.run { m, emit in m.closed(emit: emit) }
        #expect(ours.actions == ["release named:lobby"])
        ours.run { m, emit in m.closed(emit: emit) }
        #expect(ours.actions == [], "released once")
    }

    @Test func aDrainingSocketClosesOnceItsAcksAreInAndRefusesNewMessages() {
        var d = Driver()
        d.open(Self.named)
        d.text(#"{"message":"hi","client_id":"c1"}"#)
        #expect(d.actions == ["submit hi from - id c1"])
        d.run { m, emit in m.quiesce(emit: emit) }
        #expect(d.actions == ["drain deadline"])
        d.text(#"{"message":"more","client_id":"c2"}"#)
        #expect(d.actions == [#"error {"error":"server shutting down; send it again once reconnected"}"#])
        d.run { m, emit in m.acknowledged([MessageAck(socket: 1, clientID: "c1", id: "i1", seq: 1)], emit: emit) }
        #expect(d.actions == [#"write {"type":"ack","client_id":"c1","id":"i1","seq":1}"#, "flush", "close 1001 server shutting down"])

        var idle = Driver()
        idle.open(Self.named)
        idle.run { m, emit in m.quiesce(emit: emit) }
        #expect(idle.actions == ["close 1001 server shutting down"])

        var stuck = Driver()
        stuck.open(Self.named)
        stuck.text(#"{"message":"hi","client_id":"c1"}"#)
        stuck.run { m, emit in m.quiesce(emit: emit) }
        stuck.run { m, emit in m.drainDeadlinePassed(emit: emit) }
        #expect(stuck.actions == ["close 1001 server shutting down"])
    }

    @Test func aClientThatStopsReadingIsClosedPastTheMailbox() {
        var d = Driver()
        d.open(Self.named)
        d.deliver(1...3, writable: false)
        #expect(d.actions == ["write m1", "write m2", "write m3", "flush"])
        d.run { m, _ in m.writabilityChanged(writable: true) }
        d.deliver(4...7, writable: false)
        #expect(!d.actions.contains { $0.hasPrefix("close") }, "4 behind is within the mailbox of 4")
        d.deliver(8...8, writable: false)
        #expect(d.actions.suffix(2) == ["warn socket fell behind; disconnecting it", "close 4008 too slow"])
        d.deliver(9...9)
        #expect(d.actions == [])
    }

    @Test func anOversizeFrameIsRefusedAndOneOverTheAggregatorsLimitCloses1009() {
        var d = Driver()
        d.open(Self.named)
        d.text(#"{"message":""# + String(repeating: "x", count: 80) + #""}"#)
        #expect(d.actions == [#"error {"error":"frame is larger than the limit of 64 bytes"}"#])
        d.text(#"{"message":"ok"}"#)
        #expect(d.actions == ["submit ok from - id -"], "the socket goes on")
        d.run { m, emit in m.frameTooLarge(emit: emit) }
        #expect(d.actions == [#"error {"error":"frame is larger than the limit of 64 bytes"}"#, "close 1009 message too large"])
    }

    @Test func aConsultationMessageMustNameTheRoomsPairAndItsOwnSender() {
        var d = Driver()
        d.machine = SocketStateMachine(maxFrameBytes: 1024, mailboxCapacity: 4, rates: nil)
        d.open(Self.consult)
        #expect(d.actions.prefix(2) == ["attach consult:7", "expiry none"])
        let pair = #""shop_user_email":"shop@example.com","visitor_user_email":"visitor@example.com""#
        d.text(#"{"message":"hi",\#(pair)}"#)
        #expect(d.actions == ["submit hi from visitor@example.com id -"])
        d.text(#"{"message":"hi","shop_user_email":"other@example.com","visitor_user_email":"visitor@example.com"}"#)
        #expect(d.actions == [#"error {"error":"shop_user_email and visitor_user_email do not match room 7"}"#])
        d.text(#"{"message":"hi","sender_email":"shop@example.com",\#(pair)}"#)
        #expect(d.actions == [#"error {"error":"sender_email must be your own email (visitor@example.com)"}"#])
        d.text(#"{"type":"read","up_to_seq":3}"#)
        #expect(d.actions == ["read 7 visitor@example.com 3"])
    }

    @Test func aRoomOpenedAfterTheSocketClosedIsLeftAndARefusalIsSaidThenClosed() {
        var d = Driver()
        d.run { m, emit in m.closed(emit: emit) }
        #expect(d.actions == ["release -"])
        d.open(Self.named)
        #expect(d.actions == ["leave named:lobby"])

        var refused = Driver()
        refused.run { m, emit in
            m.opened(.refused("no such room", CloseCode.notFound, errorCode: nil), socketID: 1, presence: { ByteBuffer() }, emit: emit)
        }
        #expect(refused.actions == [#"error {"error":"no such room"}"#, "close 4404 no such room"])
    }

    @Test func aRefreshForTheSameUserMovesTheExpiryAndAnotherUsersCloses4401() {
        var d = Driver()
        d.machine = SocketStateMachine(maxFrameBytes: 1024, mailboxCapacity: 4, rates: nil)
        d.open(Self.consult)
        d.text(#"{"type":"refresh","token":"t"}"#)
        #expect(d.actions == ["verify t"])
        let current = Identity(email: Self.visitor, role: .visitor)
        d.run { m, emit in m.refreshChecked(.success(Identity(email: Self.visitor, role: .visitor, expiresAt: Date(timeIntervalSince1970: 2))), for: current, emit: emit) }
        #expect(d.actions == ["expiry set", #"frame {"type":"refreshed","expires_at":2000}"#])
        d.run { m, emit in m.refreshChecked(.success(Identity(email: Self.shop, role: .shop)), for: current, emit: emit) }
        #expect(d.actions == [#"error {"error":"token refresh refused: the token is for another user","code":"token_invalid"}"#,
                              "close 4401 token refresh refused"])
    }
}
