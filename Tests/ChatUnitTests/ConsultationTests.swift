import ChatProtocol
import Foundation
@testable import GatewayService
import Testing

@Suite struct EmailTests {
    @Test func normalizesCaseAndSpaces() throws {
        #expect(try Email(validating: " Shop@Example.COM ").value == "shop@example.com")
        #expect(try Email(validating: "shop@example.com").value == "shop@example.com")
        #expect(try Email(validating: "Jürgen@Bücher.DE").value == "jürgen@bücher.de")
    }

    @Test(arguments: ["", "plain", "@x.com", "a@", "a@b", "a@.b.com", "a@b..com", "a b@c.com", "<a>@c.com", "a@b.c@d.com",
                       "a\"b@c.com", "a;b@c.com", "a\\b@c.com", "a[b]@c.com", "a\u{7f}b@c.com", "a\tb@c.com"])
    func refusesWhatIsNotAnAddress(_ raw: String) {
        #expect(throws: ChatError.self) { try Email(validating: raw) }
    }
}

@Suite struct ConsultFrameTests {
    func parse(_ s: String) throws(ChatError) -> ConsultClientFrame { try ConsultClientFrame.parse(Array(s.utf8)) }

    @Test func parsesMessagesAndReadReceipts() throws {
        #expect(try parse(#"{"message":"hi","shop_user_email":"S@x.com","visitor_user_email":"v@x.com"}"#)
            == .message(text: "hi", sender: nil, shop: try Email(validating: "s@x.com"), visitor: try Email(validating: "v@x.com"), clientID: nil))
        #expect(try parse(#"{"message":"hi","sender_email":"v@x.com","shop_user_email":"s@x.com","visitor_user_email":"v@x.com"}"#)
            == .message(text: "hi", sender: try Email(validating: "v@x.com"), shop: try Email(validating: "s@x.com"), visitor: try Email(validating: "v@x.com"), clientID: nil))
        #expect(try parse(#"{"type":"read","up_to_seq":12}"#) == .read(upToSeq: 12))
    }

    @Test(arguments: [
        (#"{"type":"read","up_to_seq":true}"#, "'up_to_seq' must be a non-negative integer"),
        (#"{"type":"read","up_to_seq":1.5}"#, "'up_to_seq' must be a non-negative integer"),
        (#"{"type":"read","up_to_seq":-1}"#, "'up_to_seq' must be a non-negative integer"),
        (#"{"type":"typing"}"#, "unknown frame type 'typing'"),
        (#"{"message":"hi","shop_user_email":"s@x.com"}"#, "missing field 'visitor_user_email'"),
        (#"{"message":"hi","shop_user_email":5,"visitor_user_email":"v@x.com"}"#, "'shop_user_email' must be a string"),
    ])
    func namesWhatIsWrong(_ frame: String, _ error: String) {
        #expect(throws: ChatError.invalidFrame(error)) { try parse(frame) }
    }
}

@Suite struct OriginPolicyTests {
    @Test func defaultsAllowTheGatewaysOwnHostAndLocalhostOnly() {
        let policy = OriginPolicy(allowed: GatewayConfiguration(host: "chat.example.com").allowedOrigins)
        #expect(policy.allows("https://chat.example.com"))
        #expect(policy.allows("http://localhost:3000"))
        #expect(policy.allows("http://127.0.0.1:8000"))
        #expect(!policy.allows("https://evil.example"))
        #expect(!policy.allows("https://chat.example.com.evil.example"))
        #expect(!policy.allows(nil))
        #expect(!policy.allows("null"))
    }

    @Test func entriesCanBeSubdomainsFullOriginsOrAnything() {
        let policy = OriginPolicy(allowed: [".example.com", "https://app.other.org:8443"])
        #expect(policy.allows("https://a.example.com"))
        #expect(policy.allows("https://example.com"))
        #expect(policy.allows("https://app.other.org:8443"))
        #expect(!policy.allows("http://app.other.org:8443"))
        #expect(OriginPolicy(allowed: ["*"]).allows(nil))
    }
}
