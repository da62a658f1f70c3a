import ChatProtocol
import Foundation
import Hummingbird

/// An API error, thrown by any route and answered by Hummingbird as `{"error": "<text>", "status": <code>}`
/// with its status (docs/openapi.yaml's `Error`).
struct APIError: HTTPResponseError {
    let status: HTTPResponse.Status
    let message: String
    /// Extra headers of the answer (`Allow` on a 405).
    let headers: HTTPFields

    init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }

    struct Body: Encodable {
        var error: String
        var status: Int
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = try context.responseEncoder.encode(Body(error: message, status: Int(status.code)), from: request, context: context)
        response.status = status
        for field in headers { response.headers.append(field) }
        return response
    }
}

/// `POST /api/dev/token`'s body.
struct TokenRequest: Decodable {
    var email: String
    var role: String
}

/// `POST /api/dev/token`'s answer.
struct TokenBody: ResponseEncodable {
    var token: String
    var email: String
    var role: UserRole
}

/// `POST /api/rooms`'s body.
struct CreateRoomRequest: Decodable {
    var shopUserEmail: String
    var visitorUserEmail: String

    enum CodingKeys: String, CodingKey {
        case shopUserEmail = "shop_user_email", visitorUserEmail = "visitor_user_email"
    }
}

/// A consultation room; in lists, with its unread count and last message (`null` when it has none).
struct RoomBody: ResponseEncodable {
    var room: ConsultRoom
    var summary: RoomSummary?

    enum CodingKeys: String, CodingKey {
        case id, shopUserEmail = "shop_user_email", visitorUserEmail = "visitor_user_email", createdAt = "created_at"
        case unreadCount = "unread_count", lastMessage = "last_message"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(room.id, forKey: .id)
        try container.encode(room.shopUserEmail, forKey: .shopUserEmail)
        try container.encode(room.visitorUserEmail, forKey: .visitorUserEmail)
        try container.encode(Timestamp.iso8601(millis: room.createdAt), forKey: .createdAt)
        if let summary {
            try container.encode(summary.unread, forKey: .unreadCount)
            try container.encode(summary.lastMessage.map(MessageBody.init), forKey: .lastMessage)  // null when none
        }
    }
}

/// `GET /api/rooms`'s answer.
struct RoomListBody: ResponseEncodable {
    var rooms: [RoomBody]
}

/// A stored message as the API shows it: the same fields as the frame a socket receives.
struct MessageBody: Codable, Equatable {
    var message: String
    var id: String
    var seq: Int64
    var room: String
    var time: String
    var senderEmail: String?

    enum CodingKeys: String, CodingKey {
        case message, id, seq, room, time, senderEmail = "sender_email"
    }

    init(_ stored: StoredChatMessage) {
        message = stored.text
        id = stored.id
        seq = stored.seq
        room = ChatGroup.displayName(ofKey: stored.group)
        time = Timestamp.iso8601(millis: stored.createdAt)
        senderEmail = stored.sender
    }
}

/// `GET /api/rooms/{id}/messages`'s answer: a page, oldest first, and the `before` of the page older than it.
struct MessagePageBody: ResponseEncodable {
    var roomID: Int64
    var messages: [MessageBody]
    var nextBefore: Int64?

    enum CodingKeys: String, CodingKey {
        case roomID = "room_id", messages, nextBefore = "next_before"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(roomID, forKey: .roomID)
        try container.encode(messages, forKey: .messages)
        try container.encode(nextBefore, forKey: .nextBefore)  // null on the room's first page
    }
}

/// `GET /api/chat/{room}/messages`'s answer: a page of a named room, oldest first.
struct NamedMessagePageBody: ResponseEncodable {
    var room: String
    var messages: [MessageBody]
    var nextBefore: Int64?

    enum CodingKeys: String, CodingKey {
        case room, messages, nextBefore = "next_before"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(room, forKey: .room)
        try container.encode(messages, forKey: .messages)
        try container.encode(nextBefore, forKey: .nextBefore)  // null on the room's first page
    }
}
