import CRabbitMQ
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Owns the librabbitmq-c connection handle and runs on one dedicated thread.
///
/// Safety: every stored property is read and written only on that thread (`run()` and what it calls);
/// other threads reach the worker only through ``AMQPConnection``'s locked command queue and wake pipe.
/// That is why it can be `@unchecked Sendable`: it is handed to its thread once and never shared after.
final class AMQPWorker: @unchecked Sendable {
    /// Why the current connection must be torn down.
    enum Failure: Error {
        case connection(String)
        /// The broker closed the channel (`channelOnly`) or the whole connection.
        case refused(code: Int, text: String, channelOnly: Bool)
    }

    /// Strong on purpose: a connection lives until it is closed, like a socket; the thread ends on close.
    let owner: AMQPConnection
    var logger: Logger { owner.logger }
    /// The connection state while connected (nil between a loss and the next connect).
    var handle: AMQPHandle?
    /// The state librabbitmq-c's calls take; nil (which they refuse) while not connected.
    var conn: amqp_connection_state_t? { handle?.state }
    var generation: UInt64 = 0
    lazy var reconnect = Backoff(maximum: owner.configuration.maxReconnectDelay)

    // Topology to declare again after a reconnect, in declaration order.
    var exchanges: [ExchangeSpec] = []
    var queues: [QueueSpec] = []
    /// A set: a gateway holds one binding per room with local members (tens of thousands), so no linear scans.
    var bindings: Set<BindingSpec> = []
    var consumers: [Int: ConsumerRecord] = [:]
    var consumersByTag: [String: ConsumerRecord] = [:]
    /// The consumer channels: numbers in use and reused, and the epoch of each opening (acks must match it).
    var channels = ConsumerChannels(first: AMQPWorker.firstConsumerChannel)

    /// Publishes and their confirms.
    static let publishChannel: amqp_channel_t = 1
    /// Declares, binds, deletes and passive declares: a refusal closes this channel only, which is opened again,
    /// so publishes waiting for their confirms on channel 1 and the consumers carry on.
    static let topologyChannel: amqp_channel_t = 2
    static let firstConsumerChannel: UInt16 = 3
    /// Who waits for which publish's confirm on ``publishChannel``.
    var confirms = ConfirmTracker()
    static let publishTagHeader = "x-chat-publish-tag"

    // Heartbeats, sent by us on a timer and checked against the last frame received.
    var lastHeartbeatSent = ContinuousClock.now
    var lastFrameReceived = ContinuousClock.now

    let allocator = ByteBufferAllocator()
    /// Deliveries read in the current pass, handed to each consumer as one batch at its end.
    var readyDeliveries: [Int: [AMQPDelivery]] = [:]

    /// ``AMQPConfiguration/linger`` in microseconds, nil when there is none.
    let lingerMicroseconds: UInt32?

    init(owner: AMQPConnection) {
        self.owner = owner
        let linger = owner.configuration.linger / .microseconds(1)
        self.lingerMicroseconds = linger >= 1 ? UInt32(min(linger, 1_000_000)) : nil
    }

    // MARK: Main loop

    func run() {
        while true {
            if owner.shared.withLock({ $0.closing }) {
                // Send what is queued (acknowledgements above all) before saying goodbye.
                // Best effort on the way out: a failure here fails what it touched, and shutdown() fails the rest.
                if conn != nil { try? runCommands() }
                break
            }
            if conn == nil {
                connectOnce()
                continue
            }
            do {
                try runCommands()
                try readFrames(limit: 512)
                try keepAlive()
                try sleepUntilReadable()
            } catch {
                handleDisconnect(error)
            }
        }
        shutdown()
    }

    func connectOnce() {
        do {
            try connect()
            reconnect.reset()
            if owner.connects.add(1, ordering: .relaxed).newValue > 1 { AMQPMetrics.reconnects.increment() }
            owner.connected.store(true, ordering: .releasing)
            let waiters = owner.shared.withLock { state -> [CheckedContinuation<Void, Never>] in
                defer { state.connectWaiters.removeAll() }
                return state.connectWaiters
            }
            waiters.forEach { $0.resume() }
            logger.info("AMQP connected", metadata: ["amqp.generation": "\(generation)"])
        } catch {
            destroyConnection()
            let delay = reconnect.next()
            logger.warning("AMQP connect failed, retrying", metadata: ["error": "\(error)", "retry.in": "\(delay)"])
            sleepInterruptibly(delay)
        }
    }

    func handleDisconnect(_ error: any Error) {
        logger.warning("AMQP connection lost", metadata: ["error": "\(error)"])
        AMQPMetrics.connectionsLost.increment()
        owner.connected.store(false, ordering: .releasing)
        destroyConnection()
        failPendingConfirms(AMQPError.connectionLost)
    }

    func shutdown() {
        handle?.close()
        owner.connected.store(false, ordering: .releasing)
        destroyConnection()
        failPendingConfirms(AMQPError.closed)
        let (commands, closeWaiters, connectWaiters) = owner.shared.withLock { state in
            state.exited = true
            defer {
                state.commands.removeAll()
                state.closeWaiters.removeAll()
                state.connectWaiters.removeAll()
            }
            return (state.commands, state.closeWaiters, state.connectWaiters)
        }
        commands.forEach { $0.fail(.closed) }
        for consumer in consumers.values { consumer.sink.finish() }
        consumers.removeAll()
        consumersByTag.removeAll()
        closeWaiters.forEach { $0.resume() }
        connectWaiters.forEach { $0.resume() }
        logger.debug("AMQP connection closed")
    }

    func destroyConnection() {
        handle = nil
        consumersByTag.removeAll()
    }

    // MARK: Connecting

    func connect() throws(Failure) {
        let config = owner.configuration
        handle = try AMQPHandle()
        let conn = self.conn
        generation += 1
        guard let socket = amqp_tcp_socket_new(conn) else { throw .connection("amqp_tcp_socket_new failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, config.host, Int32(config.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw .connection("cannot open socket to \(config.host):\(config.port): \(String(cString: amqp_error_string2(status)))")
        }
        try check(chat_amqp_login_plain(conn, config.virtualHost, 0, 131_072, Int32(config.heartbeatSeconds), config.user, config.password), "login")
        try openChannel(Self.publishChannel)
        amqp_confirm_select(conn, Self.publishChannel)
        try check(amqp_get_rpc_reply(conn), "confirm.select")
        try openChannel(Self.topologyChannel)
        confirms.failAll(.connectionLost)  // none is left by now; a new connection numbers its publishes from 1
        channels.reset()
        lastFrameReceived = .now
        lastHeartbeatSent = .now

        // Declare again what was declared before, then restart the consumers.
        for spec in exchanges { try declare(spec) }
        for spec in queues { try declare(spec) }
        for spec in bindings { try bind(spec) }
        for consumer in consumers.values.sorted(by: { $0.id < $1.id }) { try startConsumerOrDrop(consumer) }
    }

    /// Starts a consumer; one the broker refuses (its queue is gone) ends its stream and is forgotten, so it
    /// cannot fail every later connection too.
    func startConsumerOrDrop(_ record: ConsumerRecord) throws(Failure) {
        do {
            try startConsumer(record)
        } catch {
            if case .refused = error {
                logger.error("consumer refused by the broker; ending it", metadata: ["amqp.queue": "\(record.queue)", "error": "\(error)"])
                consumers[record.id] = nil
                record.sink.finish()
            }
            throw error
        }
    }

    func openChannel(_ channel: amqp_channel_t) throws(Failure) {
        amqp_channel_open(conn, channel)
        try check(amqp_get_rpc_reply(conn), "channel.open")
    }

    // MARK: Helpers

    func check(_ reply: amqp_rpc_reply_t, _ what: String) throws(Failure) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == CHAT_CHANNEL_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                throw .refused(code: Int(close.reply_code), text: "\(what): \(String(amqpBytes: close.reply_text))", channelOnly: true)
            }
            if reply.reply.id == CHAT_CONNECTION_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                throw .refused(code: Int(close.reply_code), text: "\(what): \(String(amqpBytes: close.reply_text))", channelOnly: false)
            }
            throw .connection("\(what): server exception \(reply.reply.id)")
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw .connection("\(what): \(String(cString: amqp_error_string2(reply.library_error)))")
        default:
            throw .connection("\(what): no reply")
        }
    }

    func withArena<R, E: Error>(_ body: (CArena) throws(E) -> R) throws(E) -> R {
        let arena = CArena()
        defer { arena.free() }
        return try body(arena)
    }
}
