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
        case refused(code: Int, text: String)
    }

    /// Strong on purpose: a connection lives until it is closed, like a socket; the thread ends on close.
    private let owner: AMQPConnection
    private var logger: Logger { owner.logger }
    private var conn: amqp_connection_state_t?
    private var generation: UInt64 = 0
    private var reconnectDelay: Duration = .milliseconds(100)

    // Topology to declare again after a reconnect, in declaration order.
    private var exchanges: [ExchangeSpec] = []
    private var queues: [QueueSpec] = []
    /// A set: a gateway holds one binding per room with local members (tens of thousands), so no linear scans.
    private var bindings: Set<BindingSpec> = []
    private var consumers: [Int: ConsumerRecord] = [:]
    private var consumersByTag: [String: ConsumerRecord] = [:]
    private var nextChannel: UInt16 = 2
    /// Consumer channels closed on this connection, to be opened again before a new number is taken
    /// (the broker allows 2,047 channels per connection).
    private var freeChannels: [UInt16] = []
    /// The epoch of each open consumer channel; deliveries carry it, and acks must match it.
    private var channelEpochs: [UInt16: UInt64] = [:]
    private var nextEpoch: UInt64 = 1

    // Publisher confirms on channel 1.
    private static let controlChannel: amqp_channel_t = 1
    private var nextPublishTag: UInt64 = 1
    private var pendingConfirms: [UInt64: ConfirmBatch] = [:]
    private var pendingOrder: [UInt64] = []
    private var pendingHead = 0
    private var returnedTags: Set<UInt64> = []
    private static let publishTagHeader = "x-chat-publish-tag"

    // Heartbeats, sent by us on a timer and checked against the last frame received.
    private var lastHeartbeatSent = ContinuousClock.now
    private var lastFrameReceived = ContinuousClock.now

    private let allocator = ByteBufferAllocator()
    /// Deliveries read in the current pass, handed to each consumer as one batch at its end.
    private var readyDeliveries: [Int: [AMQPDelivery]] = [:]

    init(owner: AMQPConnection) {
        self.owner = owner
    }

    // MARK: Main loop

    func run() {
        while true {
            if owner.shared.withLock({ $0.closing }) {
                // Send what is queued (acknowledgements above all) before saying goodbye.
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

    private func connectOnce() {
        do {
            try connect()
            reconnectDelay = .milliseconds(100)
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
            logger.warning("AMQP connect failed, retrying", metadata: ["error": "\(error)", "retry.in": "\(reconnectDelay)"])
            sleepInterruptibly(reconnectDelay)
            reconnectDelay = min(reconnectDelay * 2, owner.configuration.maxReconnectDelay)
        }
    }

    private func handleDisconnect(_ error: any Error) {
        logger.warning("AMQP connection lost", metadata: ["error": "\(error)"])
        AMQPMetrics.connectionsLost.increment()
        owner.connected.store(false, ordering: .releasing)
        destroyConnection()
        failPendingConfirms(AMQPError.connectionLost)
    }

    private func shutdown() {
        if let conn {
            _ = amqp_connection_close(conn, AMQP_REPLY_SUCCESS)
        }
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

    private func destroyConnection() {
        if let conn {
            amqp_destroy_connection(conn)
        }
        conn = nil
        consumersByTag.removeAll()
    }

    // MARK: Connecting

    private func connect() throws(Failure) {
        let config = owner.configuration
        guard let conn = amqp_new_connection() else { throw .connection("amqp_new_connection failed") }
        self.conn = conn
        generation += 1
        guard let socket = amqp_tcp_socket_new(conn) else { throw .connection("amqp_tcp_socket_new failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, config.host, Int32(config.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw .connection("cannot open socket to \(config.host):\(config.port): \(String(cString: amqp_error_string2(status)))")
        }
        try check(chat_amqp_login_plain(conn, config.virtualHost, 0, 131_072, Int32(config.heartbeatSeconds), config.user, config.password), "login")
        try openChannel(Self.controlChannel)
        amqp_confirm_select(conn, Self.controlChannel)
        try check(amqp_get_rpc_reply(conn), "confirm.select")
        nextPublishTag = 1
        nextChannel = 2
        freeChannels.removeAll()
        channelEpochs.removeAll()
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
    private func startConsumerOrDrop(_ record: ConsumerRecord) throws(Failure) {
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

    private func openChannel(_ channel: amqp_channel_t) throws(Failure) {
        amqp_channel_open(conn, channel)
        try check(amqp_get_rpc_reply(conn), "channel.open")
    }

    // MARK: Commands

    private func runCommands() throws(Failure) {
        var commands = owner.shared.withLock { state -> [AMQPCommand] in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return state.commands
        }
        // Binds from many callers (a gateway binds one key per room as sockets join) go last and pipelined, so
        // that a storm of joins costs one broker round trip per batch and publishes never wait behind them.
        // Every caller awaits its own topology change, so none depends on another's within one batch.
        var binds: [(BindingSpec, CheckedContinuation<Void, any Error>)] = []
        if commands.count > 1 {
            var others: [AMQPCommand] = []
            others.reserveCapacity(commands.count)
            for command in commands {
                if case .bind(let spec, let c) = command { binds.append((spec, c)) } else { others.append(command) }
            }
            if binds.count > 1 { commands = others } else { binds = [] }
        }
        var index = 0
        do {
            while index < commands.count {
                try execute(commands[index])
                index += 1
            }
        } catch {
            // The failing command has been answered; put the rest back in front, in order, for the next connection.
            commands.removeFirst(index + 1)
            commands += binds.map { AMQPCommand.bind($0.0, $0.1) }
            if !commands.isEmpty {
                owner.shared.withLock { state in state.commands.insert(contentsOf: commands, at: 0) }
            }
            throw error
        }
        if !binds.isEmpty { try bindPipelined(binds) }
    }

    /// Sends every bind but the last with no-wait, then the last as usual: its bind-ok confirms them all.
    /// If the broker refuses one, the channel closes and all of them fail (their callers see the error).
    private func bindPipelined(_ binds: [(BindingSpec, CheckedContinuation<Void, any Error>)]) throws(Failure) {
        for (spec, _) in binds { bindings.insert(spec) }
        do {
            try withArena { arena throws(Failure) in
                for (spec, _) in binds.dropLast() {
                    let status = chat_queue_bind_nowait(conn, Self.controlChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                                                        arena.bytes(spec.routingKey), arena.table(spec.arguments))
                    if status != AMQP_STATUS_OK.rawValue { throw .connection("queue.bind: \(String(cString: amqp_error_string2(status)))") }
                }
                let last = binds[binds.count - 1].0
                amqp_queue_bind(conn, Self.controlChannel, arena.bytes(last.queue), arena.bytes(last.exchange),
                                arena.bytes(last.routingKey), arena.table(last.arguments))
                try check(amqp_get_rpc_reply(conn), "queue.bind (\(binds.count) pipelined)")
            }
        } catch {
            if case .refused = error { for (spec, _) in binds { bindings.remove(spec) } }
            for (_, c) in binds { c.resume(throwing: error.asAMQPError) }
            throw error
        }
        for (_, c) in binds { c.resume() }
    }

    private func execute(_ command: AMQPCommand) throws(Failure) {
        switch command {
        // Topology is recorded before it is declared: if the connection drops midway, the next connection
        // declares it; only a refusal by the broker takes it back out.
        case .declareExchange(let spec, let c):
            if !exchanges.contains(where: { $0.name == spec.name }) { exchanges.append(spec) }
            try answer(c, undo: { exchanges.removeAll { $0 == spec } }) { () throws(Failure) in try declare(spec) }
        case .declareQueue(let spec, let c):
            if !queues.contains(where: { $0.name == spec.name }) { queues.append(spec) }
            try answer(c, undo: { queues.removeAll { $0 == spec } }) { () throws(Failure) in try declare(spec) }
        case .deleteQueue(let name, let c):
            try answer(c) { () throws(Failure) in
                try withArena { arena throws(Failure) in
                    amqp_queue_delete(conn, Self.controlChannel, arena.bytes(name), 0, 0)
                    try check(amqp_get_rpc_reply(conn), "queue.delete")
                }
                queues.removeAll { $0.name == name }
                bindings = bindings.filter { $0.queue != name }
            }
        case .messageCount(let name, let c):
            do {
                let count = try withArena { arena throws(Failure) -> Int in
                    let ok = amqp_queue_declare(conn, Self.controlChannel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
                    try check(amqp_get_rpc_reply(conn), "queue.declare(passive)")
                    return Int(ok?.pointee.message_count ?? 0)
                }
                c.resume(returning: count)
            } catch {
                c.resume(throwing: error.asAMQPError)
                throw error
            }
        case .bind(let spec, let c):
            bindings.insert(spec)
            try answer(c, undo: { bindings.remove(spec) }) { () throws(Failure) in try bind(spec) }
        case .unbind(let spec, let c):
            bindings.remove(spec)
            try answer(c) { () throws(Failure) in
                try withArena { arena throws(Failure) in
                    let args = arena.table(spec.arguments)
                    amqp_queue_unbind(conn, Self.controlChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                                      arena.bytes(spec.routingKey), args)
                    try check(amqp_get_rpc_reply(conn), "queue.unbind")
                }
            }
        case .publish(let messages, let c):
            try publish(messages, batch: ConfirmBatch(remaining: messages.count, continuation: c))
        case .publishTracked(let messages, let confirmation):
            try publish(messages, batch: ConfirmBatch(remaining: messages.count, confirmation: confirmation))
        case .publishProduced(let produce):
            if let batch = produce() {
                if batch.messages.isEmpty {
                    batch.confirmation.complete(.success(()))
                } else {
                    try publish(batch.messages, batch: ConfirmBatch(remaining: batch.messages.count, confirmation: batch.confirmation))
                }
            }
        case .consume(let record):
            consumers[record.id] = record
            try startConsumerOrDrop(record)
        case .cancelConsumer(let id):
            guard let record = consumers.removeValue(forKey: id) else { return }
            consumersByTag[record.tag] = nil
            record.sink.finish()
            if record.channel != 0 {
                // The channel stays open: acknowledgements of deliveries already handed out must still reach the broker.
                withArena { arena in
                    _ = amqp_basic_cancel(conn, record.channel, arena.bytes(record.tag))
                }
                try check(amqp_get_rpc_reply(conn), "basic.cancel")
            }
        case .releaseConsumer(let id):
            guard let record = consumers.removeValue(forKey: id) else { return }
            consumersByTag[record.tag] = nil
            record.sink.finish()
            if record.channel != 0 {
                let channel = record.channel
                channelEpochs[channel] = nil
                // Waits for close-ok; deliveries on this channel read meanwhile are queued by librabbitmq and
                // dropped when handled (no consumer has the tag), and the broker requeues them.
                try check(amqp_channel_close(conn, channel, AMQP_REPLY_SUCCESS), "channel.close")
                freeChannels.append(channel)
            }
        case .ack(let channel, let epoch, let tag, let multiple):
            // The broker redelivers what a closed channel or an old connection held.
            guard channelEpochs[channel] == epoch else { return }
            let status = amqp_basic_ack(conn, channel, tag, multiple ? 1 : 0)
            if status != AMQP_STATUS_OK.rawValue { throw .connection("basic.ack: \(String(cString: amqp_error_string2(status)))") }
        case .nack(let channel, let epoch, let tag, let requeue):
            guard channelEpochs[channel] == epoch else { return }
            let status = amqp_basic_nack(conn, channel, tag, 0, requeue ? 1 : 0)
            if status != AMQP_STATUS_OK.rawValue { throw .connection("basic.nack: \(String(cString: amqp_error_string2(status)))") }
        }
    }

    /// Runs `body`, answers the caller, and rethrows so that a failed operation resets the connection
    /// (the broker has closed the channel or the connection).
    private func answer(_ c: CheckedContinuation<Void, any Error>, undo: () -> Void = {}, _ body: () throws(Failure) -> Void) throws(Failure) {
        do {
            try body()
            c.resume()
        } catch {
            if case .refused = error { undo() }
            c.resume(throwing: error.asAMQPError)
            throw error
        }
    }

    private func declare(_ spec: ExchangeSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_exchange_declare(conn, Self.controlChannel, arena.bytes(spec.name), arena.bytes(spec.type.rawValue), 0,
                                  spec.durable ? 1 : 0, spec.autoDelete ? 1 : 0, 0, arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "exchange.declare \(spec.name)")
        }
    }

    private func declare(_ spec: QueueSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_queue_declare(conn, Self.controlChannel, arena.bytes(spec.name), 0, spec.durable ? 1 : 0,
                               spec.exclusive ? 1 : 0, spec.autoDelete ? 1 : 0, arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "queue.declare \(spec.name)")
        }
    }

    private func bind(_ spec: BindingSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_queue_bind(conn, Self.controlChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                            arena.bytes(spec.routingKey), arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "queue.bind \(spec.queue) \(spec.exchange) \(spec.routingKey)")
        }
    }

    private func startConsumer(_ record: ConsumerRecord) throws(Failure) {
        let channel: UInt16
        if let reused = freeChannels.popLast() {
            channel = reused
        } else {
            channel = nextChannel
            nextChannel += 1
        }
        try openChannel(channel)
        channelEpochs[channel] = nextEpoch
        nextEpoch += 1
        amqp_basic_qos(conn, channel, 0, record.prefetch, 0)
        try check(amqp_get_rpc_reply(conn), "basic.qos")
        try withArena { arena throws(Failure) in
            amqp_basic_consume(conn, channel, arena.bytes(record.queue), arena.bytes(record.tag), 0, record.autoAck ? 1 : 0, 0,
                               amqp_empty_table)
            try check(amqp_get_rpc_reply(conn), "basic.consume \(record.queue)")
        }
        record.channel = channel
        consumersByTag[record.tag] = record
    }

    // MARK: Publishing

    private func publish(_ messages: [AMQPOutgoingMessage], batch: ConfirmBatch) throws(Failure) {
        for message in messages {
            let tag = nextPublishTag
            nextPublishTag += 1
            pendingConfirms[tag] = batch
            pendingOrder.append(tag)
            let status = withArena { arena -> Int32 in
                var properties = message.properties
                if message.mandatory {
                    properties.headers[Self.publishTagHeader] = .int(Int64(tag))
                }
                var props = arena.properties(properties)
                return message.body.withUnsafeReadableBytes { raw in
                    let body = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
                    return amqp_basic_publish(conn, Self.controlChannel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
                                              message.mandatory ? 1 : 0, 0, &props, body)
                }
            }
            if status != AMQP_STATUS_OK.rawValue {
                throw .connection("basic.publish: \(String(cString: amqp_error_string2(status)))")
            }
        }
        AMQPMetrics.publishes.increment(by: messages.count)
    }

    private func confirm(tag: UInt64, multiple: Bool, ok: Bool) {
        func settle(_ tag: UInt64) {
            guard let batch = pendingConfirms.removeValue(forKey: tag) else { return }
            (ok ? AMQPMetrics.confirms : AMQPMetrics.nacks).increment()
            if !ok {
                batch.failure = batch.failure ?? .nacked
            } else if returnedTags.remove(tag) != nil {
                batch.failure = batch.failure ?? batch.returnedError ?? .unroutable(exchange: "", routingKey: "")
            }
            batch.remaining -= 1
            if batch.remaining == 0 { batch.finish() }
        }
        if multiple {
            while pendingHead < pendingOrder.count, pendingOrder[pendingHead] <= tag {
                settle(pendingOrder[pendingHead])
                pendingHead += 1
            }
        } else {
            settle(tag)
            while pendingHead < pendingOrder.count, pendingConfirms[pendingOrder[pendingHead]] == nil { pendingHead += 1 }
        }
        if pendingHead > 1024, pendingHead * 2 > pendingOrder.count {
            pendingOrder.removeFirst(pendingHead)
            pendingHead = 0
        }
    }

    private func failPendingConfirms(_ error: AMQPError) {
        var seen = Set<ObjectIdentifier>()
        for batch in pendingConfirms.values where seen.insert(ObjectIdentifier(batch)).inserted {
            batch.failure = error
            batch.finish()
        }
        if !seen.isEmpty { logger.debug("failed pending confirms", metadata: ["batches": "\(seen.count)"]) }
        pendingConfirms.removeAll()
        pendingOrder.removeAll()
        pendingHead = 0
        returnedTags.removeAll()
    }

    // MARK: Reading frames

    private func readFrames(limit: Int) throws(Failure) {
        defer { flushDeliveries() }
        var frame = amqp_frame_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        for _ in 0..<limit {
            let status = amqp_simple_wait_frame_noblock(conn, &frame, &zero)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                throw .connection("wait_frame: \(String(cString: amqp_error_string2(status)))")
            }
            lastFrameReceived = .now
            logger.trace("frame", metadata: ["type": "\(frame.frame_type)", "channel": "\(frame.channel)"])
            try handle(frame)
            // Releasing walks librabbitmq's queue of frames read ahead (during an RPC wait) once per channel:
            // per frame while thousands are queued, that is quadratic. The pools are released once it is empty.
            if amqp_frames_enqueued(conn) == 0 { amqp_maybe_release_buffers(conn) }
        }
    }

    private func flushDeliveries() {
        guard !readyDeliveries.isEmpty else { return }
        for (id, batch) in readyDeliveries {
            consumers[id]?.sink.deliver(batch)
        }
        readyDeliveries.removeAll(keepingCapacity: true)
    }

    private func handle(_ frame: amqp_frame_t) throws(Failure) {
        guard frame.frame_type == CHAT_FRAME_METHOD else { return }  // heartbeats; content is read with its method
        var framePointer = frame
        let methodID = chat_frame_method_id(&framePointer)
        let decoded = chat_frame_method_decoded(&framePointer)
        switch methodID {
        case CHAT_BASIC_DELIVER:
            let deliver = decoded!.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let consumerTag = String(amqpBytes: deliver.consumer_tag)
            let exchange = String(amqpBytes: deliver.exchange)
            let routingKey = String(amqpBytes: deliver.routing_key)
            let (properties, body) = try readContent(channel: frame.channel)
            guard let record = consumersByTag[consumerTag] else { return }
            let delivery = AMQPDelivery(
                body: body, exchange: exchange, routingKey: routingKey, properties: properties,
                redelivered: deliver.redelivered != 0, deliveryTag: deliver.delivery_tag, channel: frame.channel,
                channelEpoch: channelEpochs[frame.channel] ?? 0, connection: owner)
            readyDeliveries[record.id, default: []].append(delivery)
            AMQPMetrics.deliveries.increment()
            if delivery.redelivered { AMQPMetrics.redeliveries.increment() }
        case CHAT_BASIC_ACK:
            let ack = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            confirm(tag: ack.delivery_tag, multiple: ack.multiple != 0, ok: true)
        case CHAT_BASIC_NACK:
            let nack = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            confirm(tag: nack.delivery_tag, multiple: nack.multiple != 0, ok: false)
        case CHAT_BASIC_RETURN:
            let ret = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let exchange = String(amqpBytes: ret.exchange)
            let routingKey = String(amqpBytes: ret.routing_key)
            let (properties, _) = try readContent(channel: frame.channel)
            if let tag = properties.headers[Self.publishTagHeader]?.intValue {
                returnedTags.insert(UInt64(tag))
                AMQPMetrics.returns.increment()
                pendingConfirms[UInt64(tag)]?.returnedError = .unroutable(exchange: exchange, routingKey: routingKey)
            }
        case CHAT_BASIC_CANCEL:
            let cancel = decoded!.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = String(amqpBytes: cancel.consumer_tag)
            logger.warning("broker cancelled consumer", metadata: ["amqp.consumer": "\(tag)"])
            if let record = consumersByTag.removeValue(forKey: tag) {
                consumers[record.id] = nil
                record.sink.finish()
            }
        case CHAT_CHANNEL_CLOSE:
            let close = decoded!.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            throw .refused(code: Int(close.reply_code), text: String(amqpBytes: close.reply_text))
        case CHAT_CONNECTION_CLOSE:
            let close = decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            throw .connection("broker closed the connection (\(close.reply_code)): \(String(amqpBytes: close.reply_text))")
        default:
            break
        }
    }

    private func readContent(channel: amqp_channel_t) throws(Failure) -> (AMQPProperties, ByteBuffer) {
        var message = amqp_message_t()
        let reply = amqp_read_message(conn, channel, &message, 0)
        try check(reply, "read content")
        defer { amqp_destroy_message(&message) }
        let properties = AMQPProperties(amqp: message.properties)
        var buffer = allocator.buffer(capacity: message.body.len)
        if message.body.len > 0 {
            buffer.writeBytes(UnsafeRawBufferPointer(start: message.body.bytes, count: message.body.len))
        }
        return (properties, buffer)
    }

    // MARK: Waiting and heartbeats

    private func keepAlive() throws(Failure) {
        let heartbeat = owner.configuration.heartbeatSeconds
        guard heartbeat > 0 else { return }
        let now = ContinuousClock.now
        if now - lastHeartbeatSent >= .milliseconds(heartbeat * 500) {
            var frame = amqp_frame_t()
            frame.frame_type = UInt8(AMQP_FRAME_HEARTBEAT)
            frame.channel = 0
            let status = amqp_send_frame(conn, &frame)
            if status != AMQP_STATUS_OK.rawValue { throw .connection("heartbeat send failed") }
            lastHeartbeatSent = now
        }
        if now - lastFrameReceived > .seconds(heartbeat * 3) {
            throw .connection("no frame from the broker for \(heartbeat * 3) s (missed heartbeats)")
        }
    }

    /// Blocks in poll(2) until the socket is readable, a command arrives, or the next heartbeat is due.
    private func sleepUntilReadable() throws(Failure) {
        if amqp_frames_enqueued(conn) != 0 || amqp_data_in_buffer(conn) != 0 { return }
        let mustSleep = owner.shared.withLock { state -> Bool in
            if !state.commands.isEmpty || state.closing { return false }
            state.workerSleeping = true
            return true
        }
        guard mustSleep else { return }
        defer { owner.shared.withLock { $0.workerSleeping = false } }
        let heartbeat = owner.configuration.heartbeatSeconds
        let timeoutMs: Int32 = heartbeat > 0 ? Int32(min(1000, heartbeat * 250)) : 1000
        var fds = [
            pollfd(fd: amqp_get_sockfd(conn), events: Int16(POLLIN), revents: 0),
            pollfd(fd: owner.wakeReadFD, events: Int16(POLLIN), revents: 0),
        ]
        let rc = poll(&fds, 2, timeoutMs)
        if rc < 0 && errno != EINTR { throw .connection("poll failed: \(errno)") }
        if fds[1].revents != 0 { drainWakePipe() }
        // librabbitmq consumes heartbeat frames inside its read calls without returning them, so any bytes
        // from the broker count as a sign of life.
        if fds[0].revents & Int16(POLLIN) != 0 { lastFrameReceived = .now }
        if fds[0].revents & Int16(POLLERR | POLLHUP) != 0 && fds[0].revents & Int16(POLLIN) == 0 {
            throw .connection("socket closed")
        }
    }

    private func drainWakePipe() {
        var buffer = [UInt8](repeating: 0, count: 256)
        while read(owner.wakeReadFD, &buffer, buffer.count) > 0 {}
    }

    private func sleepInterruptibly(_ duration: Duration) {
        let ms = Int32(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        var fds = [pollfd(fd: owner.wakeReadFD, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, ms)
        drainWakePipe()
    }

    // MARK: Helpers

    private func check(_ reply: amqp_rpc_reply_t, _ what: String) throws(Failure) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == CHAT_CHANNEL_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                throw .refused(code: Int(close.reply_code), text: "\(what): \(String(amqpBytes: close.reply_text))")
            }
            if reply.reply.id == CHAT_CONNECTION_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                throw .refused(code: Int(close.reply_code), text: "\(what): \(String(amqpBytes: close.reply_text))")
            }
            throw .connection("\(what): server exception \(reply.reply.id)")
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw .connection("\(what): \(String(cString: amqp_error_string2(reply.library_error)))")
        default:
            throw .connection("\(what): no reply")
        }
    }

    private func withArena<R, E: Error>(_ body: (CArena) throws(E) -> R) throws(E) -> R {
        let arena = CArena()
        defer { arena.free() }
        return try body(arena)
    }
}

/// The caller waiting for the confirms of one `publish` call (a continuation, or a pipelined confirmation).
final class ConfirmBatch {
    var remaining: Int
    var failure: AMQPError?
    var returnedError: AMQPError?
    private var continuation: CheckedContinuation<Void, any Error>?
    private var confirmation: AMQPConfirmation?

    init(remaining: Int, continuation: CheckedContinuation<Void, any Error>) {
        self.remaining = remaining
        self.continuation = continuation
    }

    init(remaining: Int, confirmation: AMQPConfirmation) {
        self.remaining = remaining
        self.confirmation = confirmation
    }

    func finish() {
        let result: Result<Void, AMQPError> = failure.map { .failure($0) } ?? .success(())
        if let continuation {
            self.continuation = nil
            continuation.resume(with: result.mapError { $0 as any Error })
        }
        if let confirmation {
            self.confirmation = nil
            confirmation.complete(result)
        }
    }
}

extension AMQPWorker.Failure {
    var asAMQPError: AMQPError {
        switch self {
        case .connection: .connectionLost
        case .refused(let code, let text): .brokerRefused(code: code, text: text)
        }
    }
}

/// C memory that lives for one library call: strings and tables copied out of Swift values
/// (`amqp_cstring_bytes` on a Swift String would dangle).
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    func bytes(_ string: String) -> amqp_bytes_t {
        let utf8 = Array(string.utf8)
        if utf8.isEmpty { return amqp_empty_bytes }
        let pointer = malloc(utf8.count)!
        utf8.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: utf8.count) }
        allocations.append(pointer)
        return amqp_bytes_t(len: utf8.count, bytes: pointer)
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        if table.isEmpty { return amqp_empty_table }
        let entries = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: table.count)
        allocations.append(UnsafeMutableRawPointer(entries))
        for (index, (key, value)) in table.sorted(by: { $0.key < $1.key }).enumerated() {
            let field: amqp_field_value_t = switch value {
            case .string(let s): chat_field_utf8(bytes(s))
            case .int(let i): chat_field_i64(i)
            case .bool(let b): chat_field_bool(b ? 1 : 0)
            case .strings(let strings): array(strings)
            }
            (entries + index).initialize(to: amqp_table_entry_t(key: bytes(key), value: field))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    func array(_ strings: [String]) -> amqp_field_value_t {
        let entries = UnsafeMutablePointer<amqp_field_value_t>.allocate(capacity: max(1, strings.count))
        allocations.append(UnsafeMutableRawPointer(entries))
        for (index, string) in strings.enumerated() { (entries + index).initialize(to: chat_field_utf8(bytes(string))) }
        return chat_field_array(entries, Int32(strings.count))
    }

    func properties(_ p: AMQPProperties) -> amqp_basic_properties_t {
        var props = amqp_basic_properties_t()
        var flags: amqp_flags_t = 0
        if let v = p.contentType { props.content_type = bytes(v); flags |= CHAT_FLAG_CONTENT_TYPE }
        if let v = p.correlationID { props.correlation_id = bytes(v); flags |= CHAT_FLAG_CORRELATION_ID }
        if let v = p.replyTo { props.reply_to = bytes(v); flags |= CHAT_FLAG_REPLY_TO }
        if let v = p.messageID { props.message_id = bytes(v); flags |= CHAT_FLAG_MESSAGE_ID }
        if let v = p.type { props.type = bytes(v); flags |= CHAT_FLAG_TYPE }
        if let v = p.expiration { props.expiration = bytes(v); flags |= CHAT_FLAG_EXPIRATION }
        if p.persistent { props.delivery_mode = 2; flags |= CHAT_FLAG_DELIVERY_MODE }
        if !p.headers.isEmpty { props.headers = table(p.headers); flags |= CHAT_FLAG_HEADERS }
        props._flags = flags
        return props
    }

    func free() {
        for pointer in allocations { Glibc.free(pointer) }
        allocations.removeAll()
    }
}

extension String {
    init(amqpBytes bytes: amqp_bytes_t) {
        if bytes.len == 0 || bytes.bytes == nil {
            self = ""
        } else {
            self = String(decoding: UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.len), as: UTF8.self)
        }
    }
}

extension AMQPProperties {
    init(amqp p: amqp_basic_properties_t) {
        func string(_ flag: amqp_flags_t, _ bytes: amqp_bytes_t) -> String? {
            p._flags & flag != 0 ? String(amqpBytes: bytes) : nil
        }
        var headers: AMQPTable = [:]
        if p._flags & CHAT_FLAG_HEADERS != 0, let entries = p.headers.entries {
            for index in 0..<Int(p.headers.num_entries) {
                var entry = entries[index]
                let key = String(amqpBytes: entry.key)
                let bytes = chat_field_as_bytes(&entry.value)
                if bytes.len > 0 || entry.value.kind == UInt8(ascii: "S") {
                    headers[key] = .string(String(amqpBytes: bytes))
                } else {
                    headers[key] = .int(chat_field_as_i64(&entry.value, 0))
                }
            }
        }
        self.init(
            contentType: string(CHAT_FLAG_CONTENT_TYPE, p.content_type),
            correlationID: string(CHAT_FLAG_CORRELATION_ID, p.correlation_id),
            replyTo: string(CHAT_FLAG_REPLY_TO, p.reply_to),
            messageID: string(CHAT_FLAG_MESSAGE_ID, p.message_id),
            type: string(CHAT_FLAG_TYPE, p.type),
            expiration: string(CHAT_FLAG_EXPIRATION, p.expiration),
            persistent: p._flags & CHAT_FLAG_DELIVERY_MODE != 0 && p.delivery_mode == 2,
            headers: headers)
    }
}
