import ChatProtocol
import Foundation
import Testing

@Suite struct RoomNameTests {
    @Test(arguments: ["lobby", "상담실", "café-2", "Room_1.b", String(repeating: "상", count: 100), "٣٤", "नमस्ते"])
    func acceptsLettersDigitsAndSeparators(_ name: String) throws {
        #expect(try RoomName(validating: name).value == name)
    }

    @Test(arguments: ["", "a b", "</script>", "';alert(1);'", "a/b", "a%2Fb", "tab\there", String(repeating: "x", count: 101), "emoji😀"])
    func refusesEverythingElse(_ name: String) {
        #expect(throws: ChatError.self) { try RoomName(validating: name) }
    }

    @Test func longNamesGetAShortStableRoutingKey() throws {
        let long = try RoomName(validating: String(repeating: "상", count: 100))
        #expect(ChatGroup.named(long).routingKey.utf8.count <= 255)
        #expect(ChatGroup.named(long).routingKey == ChatGroup.named(try RoomName(validating: String(repeating: "상", count: 100))).routingKey)
        #expect(ChatGroup.named(try RoomName(validating: "lobby")).routingKey == "named:lobby")
    }
}

@Suite struct ChatGroupTests {
    @Test func keysRoundTrip() throws {
        let lobby = ChatGroup.named(try RoomName(validating: "lobby"))
        #expect(lobby.key == "named:lobby" && lobby.displayName == "lobby")
        #expect(ChatGroup(key: "named:lobby") == lobby)
        #expect(ChatGroup(key: "consult:42") == .consult(id: 42))
        #expect(ChatGroup.consult(id: 42).key == "consult:42")
        #expect(ChatGroup.displayName(ofKey: "consult:42") == "42")
    }

    @Test(arguments: ["lobby", "named:", "named:a b", "consult:0", "consult:-1", "consult:x", "other:1", ""])
    func refusesWhatIsNotARoom(_ key: String) throws {
        #expect(ChatGroup(key: key) == nil)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(ChatGroup.self, from: Data("\"\(key)\"".utf8)) }
    }

    @Test func roomMessagesAreTypedOnTheWire() throws {
        let requests: [RoomRequest] = [
            .join(group: .named(try RoomName(validating: "상담실"))), .consultGet(id: 7),
            .consultCreate(shop: try Email(validating: "s@example.com"), visitor: try Email(validating: "v@example.com")),
            .consultList(email: try Email(validating: "v@example.com"), role: .visitor),
            .consultRead(roomID: 7, email: try Email(validating: "v@example.com"), seq: 3),
        ]
        for request in requests {
            #expect(try JSONDecoder().decode(RoomRequest.self, from: JSONEncoder().encode(request)) == request)
        }
        let replies: [RoomReply] = [.joined(roomID: 1, created: true), .notFound, .refused(reason: "no"), .readUpTo(seq: 4),
                                    .consultRooms([ConsultRoom(id: 1, shopUserEmail: "s@x.io", visitorUserEmail: "v@x.io", createdAt: 5)])]
        for reply in replies {
            #expect(try JSONDecoder().decode(RoomReply.self, from: JSONEncoder().encode(reply)) == reply)
        }
        // What the old bag of optionals accepted, a join of a room that is no room, cannot be decoded now.
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(RoomRequest.self, from: Data(#"{"join":{"group":"lobby"}}"#.utf8))
        }
        #expect(throws: ChatError.self) {
            try JSONDecoder().decode(RoomRequest.self, from: Data(#"{"consultList":{"email":"not an email","role":"shop"}}"#.utf8))
        }
        let history = HistoryRequest.messages(group: "named:a", limit: 50, beforeSeq: nil)
        #expect(try JSONDecoder().decode(HistoryRequest.self, from: JSONEncoder().encode(history)) == history)
    }
}

@Suite struct FrameTests {
    func parse(_ s: String) throws(ChatError) -> String { try ClientFrame.parseChatMessage(Array(s.utf8)) }

    @Test func parsesTheTutorialFrame() throws {
        #expect(try parse(#"{"message": "hi"}"#) == "hi")
        #expect(try parse(#"{"message": "안녕", "extra": 1}"#) == "안녕")
    }

    @Test func namesEachWayAFrameIsWrong() {
        #expect(throws: ChatError.invalidFrame("frame is not valid JSON")) { try parse("nope") }
        #expect(throws: ChatError.invalidFrame("frame must be a JSON object")) { try parse("[1]") }
        #expect(throws: ChatError.invalidFrame("missing field 'message'")) { try parse("{}") }
        #expect(throws: ChatError.invalidFrame("'message' must be a string")) { try parse(#"{"message": 1}"#) }
        #expect(throws: ChatError.invalidFrame("'message' must be a string")) { try parse(#"{"message": false}"#) }
        #expect(throws: ChatError.invalidFrame("'message' must not be empty")) { try parse(#"{"message": " "}"#) }
    }

    @Test func framesAreValidJSONAndSafeInHTML() throws {
        let message = StoredChatMessage(id: "i", group: "named:r", seq: 7, sender: nil,
                                        text: "</script>\"\\\n\u{1}&", createdAt: 1_763_800_000_123)
        let frame = message.clientFrame
        #expect(!frame.contains("<") && !frame.contains(">") && !frame.contains("&"))
        let decoded = try JSONSerialization.jsonObject(with: Data(frame.utf8)) as! [String: Any]
        #expect(decoded["message"] as? String == message.text)
        #expect(decoded["seq"] as? Int == 7)
        #expect(decoded["room"] as? String == "r")
        #expect(decoded["time"] as? String == "2025-11-22T08:26:40.123Z")
        #expect(decoded["sender_email"] == nil)
    }

    @Test func timestampsAreISO8601WithMilliseconds() {
        #expect(Timestamp.iso8601(millis: 0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.iso8601(millis: 1_763_800_000_007) == "2025-11-22T08:26:40.007Z")
        #expect(Timestamp.iso8601(millis: 253_402_300_799_999) == "9999-12-31T23:59:59.999Z")
    }

    @Test(arguments: ["", "plain", "안녕 😀 café", "a\u{2028}b\u{2029}c", "\u{2026}…€", "\u{7f}\u{0}\u{1f}\t\r\n",
                      String((0..<0x80).map { Character(Unicode.Scalar(UInt8($0))) }), "\"\\\"<>&", "\u{E2}x"])
    func quotedStringsRoundTripAndNeedNoHTMLEscaping(_ text: String) throws {
        let quoted = JSONWriter.quoted(text)
        #expect(!quoted.contains("<") && !quoted.contains(">") && !quoted.contains("&"))
        #expect(!quoted.unicodeScalars.contains("\u{2028}") && !quoted.unicodeScalars.contains("\u{2029}"))
        let decoded = try JSONSerialization.jsonObject(with: Data("[\(quoted)]".utf8)) as! [String]
        #expect(decoded == [text])
    }
}

@Suite struct MessageIDTests {
    @Test func idsAreLowercaseVersion7UUIDsAndDistinct() {
        let ids = (0..<1000).map { _ in MessageID.timeOrdered() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(50) {
            let groups = id.split(separator: "-")
            #expect(groups.map(\.count) == [8, 4, 4, 4, 12])
            #expect(id.utf8.allSatisfy { ("0"..."9").contains(Character(UnicodeScalar($0))) || ("a"..."f").contains(Character(UnicodeScalar($0))) || $0 == UInt8(ascii: "-") })
            #expect(groups[2].first == "7")
            #expect("89ab".contains(groups[3].first!))
        }
    }

    @Test func idsStartWithTheirMillisecondAndSortByIt() {
        #expect(MessageID.timeOrdered(millis: 0x0192_3456_789A).hasPrefix("01923456-789a-7"))
        let earlier = MessageID.timeOrdered(millis: 1_763_800_000_000)
        let later = MessageID.timeOrdered(millis: 1_763_800_000_001)
        #expect(earlier < later)
    }
}
