import Synchronization

/// This gateway's signed-in sockets by user, for the server API's disconnect (which reaches every gateway on
/// the membership fanout). Anonymous sockets are not kept.
final class UserSockets: Sendable {
    private let sockets = Mutex<[String: [Int: SocketMember]]>([:])

    func add(_ user: String, _ member: SocketMember) {
        sockets.withLock { $0[user, default: [:]][member.memberID] = member }
    }

    func remove(_ user: String, _ member: SocketMember) {
        sockets.withLock { sockets in
            sockets[user]?[member.memberID] = nil
            if sockets[user]?.isEmpty == true { sockets[user] = nil }
        }
    }

    /// Closes every socket of `user` here (4403), each on its own loop.
    func disconnect(_ user: String, reason: String) {
        let members = sockets.withLock { $0[user].map { Array($0.values) } ?? [] }
        for member in members {
            let handler = member.handler
            handler.eventLoop.execute { handler.value.disconnectedByServer(reason) }
        }
    }
}
