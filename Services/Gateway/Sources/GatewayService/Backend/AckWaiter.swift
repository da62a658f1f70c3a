import ChannelLayer
import ChatProtocol
import NIOCore
import Synchronization

/// A server API publish waiting for persistence's ack: a member of the hub that is not a socket, reached by
/// its id as a socket's acks are.
final class AckWaiter: GroupMember {
    let memberID: Int
    private enum State {
        case waiting(CheckedContinuation<MessageAck, any Error>?)
        case done(Result<MessageAck, any Error>)
    }
    private let state = Mutex(State.waiting(nil))

    init(memberID: Int) {
        self.memberID = memberID
    }

    var deliveryLoop: (any EventLoop)? { nil }
    func deliver(_ messages: [ChannelMessage]) {}
    func acknowledge(_ acks: [MessageAck]) {
        if let ack = acks.first { finish(.success(ack)) }
    }

    /// The first outcome wins: the ack, the broker's refusal or the timeout.
    func finish(_ result: Result<MessageAck, any Error>) {
        let continuation = state.withLock { state -> CheckedContinuation<MessageAck, any Error>? in
            guard case .waiting(let continuation) = state else { return nil }
            state = .done(result)
            return continuation
        }
        continuation?.resume(with: result)
    }

    func wait(timeout: Duration) async throws -> MessageAck {
        let timer = Task { [weak self] in
            try await Task.sleep(for: timeout)
            self?.finish(.failure(APIError(.serviceUnavailable,
                                           "the message was not confirmed in time; send it again with the same idempotency_key")))
        }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            let done = state.withLock { state -> Result<MessageAck, any Error>? in
                switch state {
                case .done(let result): return result
                case .waiting: state = .waiting(continuation); return nil
                }
            }
            if let done { continuation.resume(with: done) }
        }
    }
}
