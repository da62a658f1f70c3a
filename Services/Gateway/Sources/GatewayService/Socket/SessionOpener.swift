import AMQPClient
import ChannelLayer
import ChatProtocol
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// A socket's room once it is open.
struct OpenedSession: Sendable {
    enum Kind: Sendable {
        case named
        case consult(ConsultRoom)
    }
    let kind: Kind
    let group: String
    let identity: Identity?

    /// The signed-in user this socket is counted for (``GatewayBackend/reserveSocket(ofUser:)``).
    var user: String? { identity?.email.value }

    /// Who this socket is in the room's presence: the participant's email in a consultation room; named
    /// rooms count sockets only.
    var presenceEmail: String? {
        if case .consult = kind { identity?.email.value } else { nil }
    }
}

/// The asynchronous part of opening a socket: who it is, which room, joining the room (room service) and its
/// group (broker binding), and the room's history (persistence service).
struct SessionOpener: Sendable {
    enum Outcome: Sendable {
        /// An `{"error"}` frame (with `code` when it has one), then the close code.
        case refused(String, WebSocketErrorCode, errorCode: String? = nil)
        case opened(OpenedSession, history: OpeningHistory)
    }

    let services: SocketServices
    let endpoint: SocketEndpoint
    let headers: HTTPHeaders
    let uri: String
    let member: SocketMember

    func open() async -> Outcome {
        let authenticator = services.authenticator
        // `?since=<seq>`: resume after the last seq this client has.
        var since: Int64? = nil
        if let raw = SocketEndpoint.queryValue("since", in: uri) {
            guard let value = Int64(raw), value >= 0 else {
                return .refused("'since' must be a non-negative integer", CloseCode.invalidRoom)
            }
            since = value
        }
        let kind: OpenedSession.Kind
        let room: ChatGroup
        var identity: Identity? = nil
        switch endpoint {
        case .namedRoom(let rawRoom):
            do throws(AuthError) {
                identity = try await authenticator.identify(headers: headers, uri: uri)
            } catch {
                if !services.configuration.allowAnonymous || error != .missing {
                    return .refused(error.description, CloseCode.unauthenticated)
                }
            }
            do throws(ChatError) {
                room = .named(try RoomName(pathSegment: rawRoom))
                kind = .named
            } catch {
                return .refused(error.description, CloseCode.invalidRoom)
            }
        case .consultRoom(let rawID):
            let caller: Identity
            do throws(AuthError) {
                caller = try await authenticator.identify(headers: headers, uri: uri)
            } catch {
                return .refused(error.description, CloseCode.unauthenticated)
            }
            identity = caller
            guard let id = Int64(rawID), id > 0 else {
                return .refused("room id must be a positive integer", CloseCode.invalidRoom)
            }
            switch await services.backend.consultRoom(id: id) {
            case .success(let consultRoom?):
                guard consultRoom.hasParticipant(caller.email.value, role: caller.role) else {
                    return .refused("you are not a participant of room \(id)", CloseCode.forbidden)
                }
                room = .consult(id: consultRoom.id)
                kind = .consult(consultRoom)
            case .success(nil):
                return .refused("room \(id) does not exist", CloseCode.notFound)
            case .failure:
                return .refused("room service unavailable, try again later", CloseCode.tryAgainLater)
            }
        }

        let backend = services.backend
        let presenceEmail: String? = if case .consult = kind { identity?.email.value } else { nil }
        let group = room.key
        // A signed-in user's sockets are counted on every gateway (`CHAT_MAX_SOCKETS_PER_USER`).
        let user = identity?.email.value
        if let user, !backend.reserveSocket(ofUser: user) {
            return .refused("too many connections", CloseCode.tooMany, errorCode: "too_many_connections")
        }
        do {
            switch try await backend.join(group: room, email: presenceEmail, user: user) {
            case .joined: break
            case .refused(let reason):
                if let user { backend.releaseSocket(ofUser: user) }
                return .refused(reason, CloseCode.invalidRoom)
            default:
                if let user { backend.releaseSocket(ofUser: user) }
                return .refused("room service unavailable, try again later", CloseCode.tryAgainLater)
            }
        } catch {
            if let user { backend.releaseSocket(ofUser: user) }
            services.logger.warning("room service did not answer", metadata: ["error": "\(error)"])
            return .refused("room service unavailable, try again later", CloseCode.tryAgainLater)
        }
        do {
            try await backend.addToGroup(group, member)
        } catch {
            services.logger.warning("could not join the room's group", metadata: ["error": "\(error)"])
            await backend.leave(group: group, email: presenceEmail, user: user)
            return .refused("broker unavailable, try again later", CloseCode.tryAgainLater)
        }
        GatewayMetrics.joins.increment()
        let session = OpenedSession(kind: kind, group: group, identity: identity)
        do {
            if let since {
                return .opened(session, history: try await backend.resume(group: group, afterSeq: since, limit: services.configuration.resumeLimit))
            }
            let history = try await backend.history(group: group, limit: services.configuration.historyLimit)
            return .opened(session, history: OpeningHistory(frames: history.frames, firstSeq: history.firstSeq))
        } catch {
            services.logger.warning("history unavailable", metadata: ["error": "\(error)", "chat.room": "\(group)"])
            return .opened(session, history: OpeningHistory(after: since, failed: true))
        }
    }
}
