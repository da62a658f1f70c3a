import Foundation

/// Where and how to reach the broker. Built from an `amqp://user:pass@host:port/vhost` URL.
package struct AMQPConfiguration: Sendable, Equatable {
    package var host: String
    package var port: Int
    package var user: String
    package var password: String
    package var virtualHost: String
    /// Heartbeat interval negotiated with the broker, in seconds (0 disables heartbeats).
    package var heartbeatSeconds: Int
    /// Connection name shown in the broker's management tools.
    package var connectionName: String
    /// Upper bound of the exponential reconnect backoff.
    package var maxReconnectDelay: Duration
    /// How long the connection's thread waits, once woken from idle, before it reads and sends: what arrives
    /// meanwhile (publishes, acks, deliveries) goes in the same pass, so moderate load makes fewer, larger
    /// AMQP messages and fewer thread wake-ups (zero: none). Under load the thread is never idle and never waits.
    package var linger: Duration

    package init(
        host: String = "127.0.0.1",
        port: Int = 5672,
        user: String = "guest",
        password: String = "guest",
        virtualHost: String = "/",
        heartbeatSeconds: Int = 10,
        connectionName: String = "swift-chat",
        maxReconnectDelay: Duration = .seconds(5),
        linger: Duration = .zero
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
        self.heartbeatSeconds = heartbeatSeconds
        self.connectionName = connectionName
        self.maxReconnectDelay = maxReconnectDelay
        self.linger = linger
    }

    /// Parses `amqp://user:pass@host:port/vhost`. An empty path means the vhost `/`;
    /// `%2F` in the path is the encoded `/`.
    /// `CHAT_AMQP_URL`'s default: the local broker's guest account.
    package static let defaultURL = "amqp://guest:guest@127.0.0.1:5672/%2F"

    package init(url: String, connectionName: String = "swift-chat", linger: Duration = .zero) throws(AMQPError) {
        guard let components = URLComponents(string: url), components.scheme == "amqp" else {
            throw AMQPError.invalidURL(url)
        }
        self.init(connectionName: connectionName, linger: linger)
        if let host = components.host, !host.isEmpty { self.host = host }
        if let port = components.port { self.port = port }
        if let user = components.user { self.user = user.removingPercentEncoding ?? user }
        if let password = components.password { self.password = password.removingPercentEncoding ?? password }
        let path = components.percentEncodedPath
        if path.count > 1 {
            let raw = String(path.dropFirst())
            self.virtualHost = raw.removingPercentEncoding ?? raw
        }
    }
}
