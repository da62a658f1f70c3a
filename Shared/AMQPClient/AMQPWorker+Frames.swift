import CRabbitMQ
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Reading the broker's frames (deliveries, confirms, returns, closes), heartbeats, and sleeping until there is work.
extension AMQPWorker {
    // MARK: Reading frames

    func readFrames(limit: Int) throws(Failure) {
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

    func flushDeliveries() {
        guard !readyDeliveries.isEmpty else { return }
        for (id, batch) in readyDeliveries {
            consumers[id]?.sink.deliver(batch)
        }
        readyDeliveries.removeAll(keepingCapacity: true)
    }

    func handle(_ frame: amqp_frame_t) throws(Failure) {
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
                channelEpoch: channels.epoch(of: frame.channel) ?? 0, connection: owner)
            readyDeliveries[record.id, default: []].append(delivery)
            AMQPMetrics.deliveries.increment()
            if delivery.redelivered { AMQPMetrics.redeliveries.increment() }
        case CHAT_BASIC_ACK:
            let ack = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            confirms.confirm(tag: ack.delivery_tag, multiple: ack.multiple != 0, ok: true)
        case CHAT_BASIC_NACK:
            let nack = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            confirms.confirm(tag: nack.delivery_tag, multiple: nack.multiple != 0, ok: false)
        case CHAT_BASIC_RETURN:
            let ret = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let exchange = String(amqpBytes: ret.exchange)
            let routingKey = String(amqpBytes: ret.routing_key)
            let (properties, _) = try readContent(channel: frame.channel)
            if let tag = properties.headers[Self.publishTagHeader]?.intValue {
                AMQPMetrics.returns.increment()
                confirms.returned(tag: UInt64(tag), .unroutable(exchange: exchange, routingKey: routingKey))
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
            throw .refused(code: Int(close.reply_code), text: String(amqpBytes: close.reply_text), channelOnly: true)
        case CHAT_CONNECTION_CLOSE:
            let close = decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            throw .connection("broker closed the connection (\(close.reply_code)): \(String(amqpBytes: close.reply_text))")
        default:
            break
        }
    }

    func readContent(channel: amqp_channel_t) throws(Failure) -> (AMQPProperties, ByteBuffer) {
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

    func keepAlive() throws(Failure) {
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
    func sleepUntilReadable() throws(Failure) {
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
        if rc > 0, let linger = lingerMicroseconds { usleep(linger) }
        if fds[1].revents != 0 { drainWakePipe() }
        // librabbitmq consumes heartbeat frames inside its read calls without returning them, so any bytes
        // from the broker count as a sign of life.
        if fds[0].revents & Int16(POLLIN) != 0 { lastFrameReceived = .now }
        if fds[0].revents & Int16(POLLERR | POLLHUP) != 0 && fds[0].revents & Int16(POLLIN) == 0 {
            throw .connection("socket closed")
        }
    }

    func drainWakePipe() {
        var buffer = [UInt8](repeating: 0, count: 256)
        while read(owner.wakeReadFD, &buffer, buffer.count) > 0 {}
    }

    func sleepInterruptibly(_ duration: Duration) {
        let ms = Int32(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        var fds = [pollfd(fd: owner.wakeReadFD, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, ms)
        drainWakePipe()
    }
}
