import ChannelLayer
import ChatProtocol
import ChatStorage
import Foundation
import Logging
import Presence
@testable import GatewayService
import ServiceKit
import Testing

@Suite struct TokenBucketTests {
    let second: UInt64 = 1_000_000_000

    @Test func passesTheBurstThenRefusesWithTheTimeToTheNextToken() {
        var bucket = TokenBucket(rate: 10, burst: 3, now: 0)
        #expect((0..<3).map { _ in bucket.take(now: 0) } == [.allowed, .allowed, .allowed])
        #expect(bucket.take(now: 0) == .refused(retryAfterMs: 100))
        #expect(bucket.take(now: second / 20) == .refused(retryAfterMs: 50))
        #expect(bucket.take(now: second / 10) == .allowed)
        #expect(bucket.take(now: 100 * second) == .allowed)  // refilled, but never past the burst
        #expect(bucket.tokens == 2)
    }

    @Test func aFullBucketCanBeForgotten() {
        var bucket = TokenBucket(rate: 1, burst: 2, now: 0)
        _ = bucket.take(now: 0)
        let halfway = bucket.isFull(now: second / 2)
        let later = bucket.isFull(now: second)
        #expect(!halfway && later)
    }

    @Test func usersShareABucketAcrossSocketsAndLoseItWithTheLast() {
        let limits = UserRateLimits(perSecond: 1, burst: 2)!
        limits.attach("user:a")
        limits.attach("user:a")
        #expect(limits.take("user:a", now: 0) == .allowed)
        #expect(limits.take("user:a", now: 0) == .allowed)
        #expect(limits.take("user:a", now: 0) == .refused(retryAfterMs: 1000))
        limits.detach("user:a")
        #expect(limits.userCount == 1)
        limits.detach("user:a")
        #expect(limits.userCount == 0)
        #expect(UserRateLimits(perSecond: 0, burst: 30) == nil)
    }

    @Test func connectionBucketsAreTwiceTheRateAndPerAddress() {
        let limits = ConnectRateLimits(perSecond: 2)!
        #expect((0..<4).map { _ in limits.take("192.0.2.1", now: 0) } == Array(repeating: .allowed, count: 4))
        #expect(limits.take("192.0.2.1", now: 0) == .refused(retryAfterMs: 500))
        #expect(limits.take("192.0.2.2", now: 0) == .allowed)
    }

    @Test func aSocketIsClosedAfterAHundredRefusalsWithinTenSeconds() {
        var window = RefusalWindow()
        var closed = (0..<100).map { window.refused(now: UInt64($0) * 1_000_000) }
        #expect(!closed.contains(true))
        let overLimit = window.refused(now: 200_000_000)
        #expect(overLimit)
        var slow = RefusalWindow()
        closed = (0..<300).map { slow.refused(now: UInt64($0) * 200_000_000) }  // 5 a second: never 101 in 10 s
        #expect(!closed.contains(true))
    }
}

@Suite struct TrustedProxiesTests {
    @Test func blocksMatchAddressesOfTheirFamily() throws {
        let proxies = try TrustedProxies(parsing: "10.88.0.0/16, 127.0.0.1, ::1, fd00::/8")
        #expect(proxies.trusts("10.88.3.4"))
        #expect(!proxies.trusts("10.89.0.1"))
        #expect(proxies.trusts("127.0.0.1"))
        #expect(proxies.trusts("::ffff:127.0.0.1"))
        #expect(proxies.trusts("::1"))
        #expect(proxies.trusts("fd12::1"))
        #expect(!proxies.trusts("192.0.2.1"))
    }

    @Test func theClientIsTheLastForwardedAddressOfATrustedProxyOnly() throws {
        let proxies = try TrustedProxies(parsing: "127.0.0.1")
        #expect(proxies.clientAddress(peer: "127.0.0.1", forwardedFor: ["198.51.100.1, 192.0.2.9"]) == "192.0.2.9")
        #expect(proxies.clientAddress(peer: "127.0.0.1", forwardedFor: ["198.51.100.1", "192.0.2.9"]) == "192.0.2.9")
        #expect(proxies.clientAddress(peer: "127.0.0.1", forwardedFor: ["garbage"]) == "127.0.0.1")
        #expect(proxies.clientAddress(peer: "192.0.2.5", forwardedFor: ["198.51.100.1"]) == "192.0.2.5")
        #expect(TrustedProxies().clientAddress(peer: "127.0.0.1", forwardedFor: ["198.51.100.1"]) == "127.0.0.1")
    }

    @Test(arguments: ["localhost", "10.0.0.0/33", "::1/129", "1.2.3", "10.0.0.0/x"])
    func refusesWhatIsNotAnAddressOrBlock(_ text: String) {
        #expect(throws: ConfigurationError.self) { try TrustedProxies(parsing: text) }
    }

    @Test func theLimitsAreReadFromTheEnvironment() throws {
        let configuration = try GatewayConfiguration.fromEnvironment(EnvironmentReader([
            "CHAT_RATE_PER_SECOND": "0", "CHAT_RATE_BURST": "5", "CHAT_CONNECT_RATE_PER_SECOND": "7",
            "CHAT_TRUSTED_PROXIES": "127.0.0.1", "CHAT_MAX_SOCKETS_PER_USER": "3"]))
        #expect(configuration.ratePerSecond == 0 && configuration.rateBurst == 5 && configuration.connectRatePerSecond == 7)
        #expect(configuration.maxSocketsPerUser == 3 && configuration.trustedProxies.trusts("127.0.0.1"))
        let defaults = try GatewayConfiguration.fromEnvironment(EnvironmentReader([:]))
        #expect(defaults.ratePerSecond == 10 && defaults.rateBurst == 30 && defaults.connectRatePerSecond == 50 && defaults.maxSocketsPerUser == 16)
        #expect(throws: ConfigurationError.self) { try GatewayConfiguration.fromEnvironment(EnvironmentReader(["CHAT_RATE_PER_SECOND": "-1"])) }
        #expect(throws: ConfigurationError.self) { try GatewayConfiguration.fromEnvironment(EnvironmentReader(["CHAT_RATE_BURST": "0"])) }
    }
}

@Suite struct RefreshFrameTests {
    @Test func namedAndConsultSocketsParseARefresh() throws {
        #expect(try ClientFrame.parseNamed(Array(#"{"type":"refresh","token":"a.b.c"}"#.utf8)) == .refresh(token: "a.b.c"))
        #expect(try ClientFrame.parseNamed(Array(#"{"message":"hi","client_id":"c"}"#.utf8)) == .message(text: "hi", clientID: "c"))
        #expect(try ConsultClientFrame.parse(Array(#"{"type":"refresh","token":"a.b.c"}"#.utf8)) == .refresh(token: "a.b.c"))
        #expect(throws: ChatError.self) { try ClientFrame.parseNamed(Array(#"{"type":"refresh","token":""}"#.utf8)) }
        #expect(throws: ChatError.self) { try ClientFrame.parseNamed(Array(#"{"type":"refresh","token":5}"#.utf8)) }
    }

    @Test func codedErrorsCarryTheirRetryHint() {
        #expect(ClientFrame.error("rate limit exceeded", code: "rate_limited", retryAfterMs: 250)
            == #"{"error":"rate limit exceeded","code":"rate_limited","retry_after_ms":250}"#)
        #expect(ClientFrame.error("token expired", code: "token_expired") == #"{"error":"token expired","code":"token_expired"}"#)
    }
}

@Suite struct SocketsPerUserTests {
    @Test func aUsersSocketsAreCountedOnEveryGateway() {
        let presence = MembershipPresence(gatewayID: "g1", hub: Hub(), expiry: .seconds(15))
        #expect(presence.reserveSocket(ofUser: "a@x.com", limit: 3))
        presence.apply(MembershipEvent(kind: .join, gateway: "g2", room: "named:r", user: "a@x.com"))
        presence.apply(MembershipEvent(kind: .join, gateway: "g2", room: "named:s", user: "a@x.com"))
        #expect(!presence.reserveSocket(ofUser: "a@x.com", limit: 3))
        #expect(presence.reserveSocket(ofUser: "b@x.com", limit: 3))
        presence.apply(MembershipEvent(kind: .leave, gateway: "g2", room: "named:r", user: "a@x.com"))
        #expect(presence.reserveSocket(ofUser: "a@x.com", limit: 3))
        #expect(presence.heartbeat(gateway: "g1").users == ["a@x.com": 2, "b@x.com": 1])
        presence.releaseSocket(ofUser: "a@x.com")
        presence.releaseSocket(ofUser: "b@x.com")
        #expect(presence.heartbeat(gateway: "g1").users == ["a@x.com": 1])
        // A heartbeat replaces what was known of a gateway; 0 means no limit.
        presence.apply(MembershipEvent(kind: .heartbeat, gateway: "g2", rooms: [:], users: ["a@x.com": 5]))
        #expect(!presence.reserveSocket(ofUser: "a@x.com", limit: 6))
        #expect(presence.reserveSocket(ofUser: "a@x.com", limit: 0))
    }
}

@Suite struct GatewayStartTests {
    static func threadCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? 0
    }

    /// A configuration refused at start leaves no AMQP thread behind (it used to start before the check).
    @Test func aRefusedConfigurationStartsNoThread() async throws {
        var configuration = GatewayConfiguration(amqpURL: "amqp://guest:guest@127.0.0.1:1/%2F")
        configuration.jwtSecret = "short"
        let before = Self.threadCount()
        for _ in 0..<3 {
            await #expect(throws: GatewayConfigurationError.self) {
                _ = try await buildApplication(configuration, logger: Logger(label: "test"))
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(Self.threadCount() <= before + 1)
    }
}

@Suite struct RecentCacheTests {
    /// The room caches are bounded (they grew with every room ever joined) and keep what is in use.
    @Test func staysWithinItsCapacityAndKeepsWhatIsUsed() {
        let cache = RecentCache<Int, String>(capacity: 100)
        cache.set(0, "hot")
        for key in 1...10_000 {
            cache.set(key, "room \(key)")
            if key % 10 == 0 { #expect(cache[0] == "hot") }  // used all along: never dropped
        }
        #expect(cache.count <= 100)
        #expect(cache[10_000] == "room 10000")
        #expect(cache[1] == nil)
    }
}
