import AMQPClient
import Foundation
import ServiceKit

/// Configuration of the room service, read from the environment in one place.
package struct RoomConfiguration: Sendable {
    /// `CHAT_AMQP_URL`, default ``AMQPConfiguration/defaultURL``.
    package var amqpURL: String
    /// `CHAT_DATABASE_URL`: `sqlite:PATH` (default `sqlite:.state/rooms.sqlite`) or `postgres://…`.
    package var databaseURL: String
    /// `CHAT_HEALTH_HOST` / `CHAT_HEALTH_PORT` (default 127.0.0.1:8002): `/health`, `/health/ready`, `/stats`.
    package var healthHost: String
    package var healthPort: Int
    /// `CHAT_GATEWAY_EXPIRY_SECONDS` (default 15): a gateway not heard from for this long has its members forgotten.
    package var gatewayExpiry: Duration
    /// `CHAT_ROOMS_INSTANCE_ID` (default random): names this instance's membership queue.
    package var instanceID: String

    /// Reads every `CHAT_*` setting of the room service; a malformed or out-of-range value is refused, naming it.
    package static func fromEnvironment(_ env: EnvironmentReader = .init()) throws -> Self {
        Self(
            amqpURL: env.string("CHAT_AMQP_URL", default: AMQPConfiguration.defaultURL),
            databaseURL: env.string("CHAT_DATABASE_URL", default: "sqlite:.state/rooms.sqlite"),
            healthHost: env.string("CHAT_HEALTH_HOST", default: "127.0.0.1"),
            healthPort: try env.int("CHAT_HEALTH_PORT", default: 8002, in: 0...65535),
            gatewayExpiry: .seconds(try env.int("CHAT_GATEWAY_EXPIRY_SECONDS", default: 15, in: 1...3600)),
            instanceID: env.string("CHAT_ROOMS_INSTANCE_ID", default: String(UUID().uuidString.lowercased().prefix(8))))
    }
}
