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

    /// Who is asking for which room (the refusal when they may not), then the join, then the history.
    func open() async -> Outcome {
        // `?since=<seq>`: resume after the last seq this client has.
        var since: Int64? = nil
        if let raw = SocketEndpoint.queryValue("since", in: uri) {
            guard let value = Int64(raw), value >= 0 else {
                return .refused("'since' must be a non-negative integer", CloseCode.invalidRoom)
            }
            since = value
        }
        let target: Target
        switch await resolve() {
        case .success(let resolved): target = resolved
        case .failure(let refusal): return refusal.outcome
        }
        if let refusal = await join(target) { return refusal.outcome }
        GatewayMetrics.joins.increment()
        let session = OpenedSession(kind: target.kind, group: target.room.key, identity: target.identity)
        return .opened(session, history: await history(of: session.group, since: since))
    }

    /// The room a socket asks for and who asks, once allowed.
    struct Target {
        let room: ChatGroup
        let kind: OpenedSession.Kind
        let identity: Identity?
        var presenceEmail: String? { if case .consult = kind { identity?.email.value } else { nil } }
    }

    /// A refusal as an error, so that the steps can return it through `Result`.
    struct Refusal: Error {
        let outcome: Outcome
        init(_ text: String, _ code: WebSocketErrorCode, errorCode: String? = nil) {
            outcome = .refused(text, code, errorCode: errorCode)
        }
    }

    /// Who the caller is and which room: a named room (anonymous when allowed), or a consultation room the
    /// caller takes part in.
    func resolve() async -> Result<Target, Refusal> {
        let authenticator = services.authenticator
        switch endpoint {
        case .namedRoom(let rawRoom):
            var identity: Identity? = nil
            do throws(AuthError) {
                identity = try await authenticator.identify(headers: headers, uri: uri)
            } catch {
                if !services.configuration.allowAnonymous || error != .missing {
                    return .failure(Refusal(error.description, CloseCode.unauthenticated))
                }
            }
            do throws(ChatError) {
                return .success(Target(room: .named(try RoomName(pathSegment: rawRoom)), kind: .named, identity: identity))
            } catch {
                return .failure(Refusal(error.description, CloseCode.invalidRoom))
            }
        case .consultRoom(let rawID):
            let caller: Identity
            do throws(AuthError) {
                caller = try await authenticator.identify(headers: headers, uri: uri)
            } catch {
                return .failure(Refusal(error.description, CloseCode.unauthenticated))
            }
            guard let id = Int64(rawID), id > 0 else {
                return .failure(Refusal("room id must be a positive integer", CloseCode.invalidRoom))
            }
            switch await services.backend.consultRoom(id: id) {
            case .success(let consultRoom?):
                guard consultRoom.hasParticipant(caller.email.value, role: caller.role) else {
                    return .failure(Refusal("you are not a participant of room \(id)", CloseCode.forbidden))
                }
                return .success(Target(room: .consult(id: consultRoom.id), kind: .consult(consultRoom), identity: caller))
            case .success(nil):
                return .failure(Refusal("room \(id) does not exist", CloseCode.notFound))
            case .failure:
                return .failure(Refusal("room service unavailable, try again later", CloseCode.tryAgainLater))
            }
        }
    }

    /// Counts the user's socket (`CHAT_MAX_SOCKETS_PER_USER`, on every gateway), joins the room (room
    /// service) and its group (broker binding); nil when joined, the refusal otherwise (nothing left counted).
    func join(_ target: Target) async -> Refusal? {
        let backend = services.backend, group = target.room.key
        let user = target.identity?.email.value
        if let user, !backend.reserveSocket(ofUser: user) {
            return Refusal("too many connections", CloseCode.tooMany, errorCode: "too_many_connections")
        }
        do {
            switch try await backend.join(group: target.room, email: target.presenceEmail, user: user) {
            case .joined: break
            case .refused(let reason):
                if let user { backend.releaseSocket(ofUser: user) }
                return Refusal(reason, CloseCode.invalidRoom)
            default:
                if let user { backend.releaseSocket(ofUser: user) }
                return Refusal("room service unavailable, try again later", CloseCode.tryAgainLater)
            }
        } catch {
            if let user { backend.releaseSocket(ofUser: user) }
            services.logger.warning("room service did not answer", metadata: ["error": "\(error)"])
            return Refusal("room service unavailable, try again later", CloseCode.tryAgainLater)
        }
        do {
            try await backend.addToGroup(group, member)
        } catch {
            services.logger.warning("could not join the room's group", metadata: ["error": "\(error)"])
            await backend.leave(group: group, email: target.presenceEmail, user: user)
            return Refusal("broker unavailable, try again later", CloseCode.tryAgainLater)
        }
        return nil
    }

    /// What the socket is sent first: what it missed after `since`, or the room's last messages; a history that
    /// does not answer is said in an error frame, and live messages follow.
    func history(of group: String, since: Int64?) async -> OpeningHistory {
        let backend = services.backend
        do {
            if let since {
                return try await backend.resume(group: group, afterSeq: since, limit: services.configuration.resumeLimit)
            }
            let history = try await backend.history(group: group, limit: services.configuration.historyLimit)
            return OpeningHistory(frames: history.frames, firstSeq: history.firstSeq)
        } catch {
            services.logger.warning("history unavailable", metadata: ["error": "\(error)", "chat.room": "\(group)"])
            return OpeningHistory(after: since, failed: true)
        }
    }
}
