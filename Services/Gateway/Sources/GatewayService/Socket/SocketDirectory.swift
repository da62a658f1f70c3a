import ChatProtocol
import NIOCore
import Synchronization

/// This gateway's open sockets by member id, so that persistence's acks (which name the socket a message came
/// from) reach it. An ack for a socket that closed meanwhile is dropped: its client resends on reconnect.
final class SocketDirectory: Sendable {
    private let sockets = Mutex<[Int: SocketMember]>([:])

    func add(_ member: SocketMember) { sockets.withLock { $0[member.memberID] = member } }
    func remove(_ member: SocketMember) { _ = sockets.withLock { $0.removeValue(forKey: member.memberID) } }

    /// Hands each ack to its socket, on the socket's loop.
    func deliverAcks(_ acks: [MessageAck]) {
        for ack in acks {
            guard let member = sockets.withLock({ $0[ack.socket] }) else { continue }
            let frame = ByteBuffer(string: ClientFrame.ack(clientID: ack.clientID, id: ack.id, seq: ack.seq))
            member.handler.eventLoop.execute { member.handler.value.writeAck(frame) }
        }
    }
}
