

/// Errors a client can cause; each becomes an `{"error": ...}` frame or an HTTP error.
package enum ChatError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidRoomName(String)
    case invalidFrame(String)
    case frameTooLarge(limit: Int)
    case unavailable(String)

    package var description: String {
        switch self {
        case .invalidRoomName(let reason): reason
        case .invalidFrame(let reason): reason
        case .frameTooLarge(let limit): "frame is larger than the limit of \(limit) bytes"
        case .unavailable(let reason): reason
        }
    }
}
