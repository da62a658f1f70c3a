import CRabbitMQ
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The commands other threads queue for the worker (declares, binds, consumers, acks), run on its thread.
extension AMQPWorker {
    // MARK: Commands

    func runCommands() throws(Failure) {
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
    func bindPipelined(_ binds: [(BindingSpec, CheckedContinuation<Void, any Error>)]) throws(Failure) {
        for (spec, _) in binds { bindings.insert(spec) }
        do {
            try withArena { arena throws(Failure) in
                for (spec, _) in binds.dropLast() {
                    let status = chat_queue_bind_nowait(conn, Self.topologyChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                                                        arena.bytes(spec.routingKey), arena.table(spec.arguments))
                    if status != AMQP_STATUS_OK.rawValue { throw .connection("queue.bind: \(String(cString: amqp_error_string2(status)))") }
                }
                let last = binds[binds.count - 1].0
                amqp_queue_bind(conn, Self.topologyChannel, arena.bytes(last.queue), arena.bytes(last.exchange),
                                arena.bytes(last.routingKey), arena.table(last.arguments))
                try check(amqp_get_rpc_reply(conn), "queue.bind (\(binds.count) pipelined)")
            }
        } catch {
            if case .refused(_, _, channelOnly: true) = error {
                // One bind was refused and the broker ignored the rest: bind them one at a time on the reopened
                // channel, so that each caller gets its own answer.
                do {
                    try reopenTopologyChannel()
                } catch {
                    for (_, c) in binds { c.resume(throwing: error.asAMQPError) }
                    throw error
                }
                var rest = binds[...]
                while let (spec, c) = rest.popFirst() {
                    do {
                        try execute(.bind(spec, c))
                    } catch {
                        for (_, c) in rest { c.resume(throwing: error.asAMQPError) }
                        throw error
                    }
                }
                return
            }
            for (_, c) in binds { c.resume(throwing: error.asAMQPError) }
            throw error
        }
        for (_, c) in binds { c.resume() }
    }

    func execute(_ command: AMQPCommand) throws(Failure) {
        switch command {
        case .declareExchange, .declareQueue, .deleteQueue, .messageCount, .bind, .unbind: try executeTopology(command)
        case .publish, .publishTracked, .publishProduced: try executePublish(command)
        case .consume, .cancelConsumer, .releaseConsumer, .ack, .nack: try executeConsumer(command)
        }
    }

    /// Declares, binds and deletes, on the topology channel.
    private func executeTopology(_ command: AMQPCommand) throws(Failure) {
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
                    amqp_queue_delete(conn, Self.topologyChannel, arena.bytes(name), 0, 0)
                    try check(amqp_get_rpc_reply(conn), "queue.delete")
                }
                queues.removeAll { $0.name == name }
                bindings = bindings.filter { $0.queue != name }
            }
        case .messageCount(let name, let c):
            do {
                let count = try withArena { arena throws(Failure) -> Int in
                    let ok = amqp_queue_declare(conn, Self.topologyChannel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
                    try check(amqp_get_rpc_reply(conn), "queue.declare(passive)")
                    return Int(ok?.pointee.message_count ?? 0)
                }
                c.resume(returning: count)
            } catch {
                c.resume(throwing: error.asAMQPError)
                try recoverTopology(after: error)
            }
        case .bind(let spec, let c):
            bindings.insert(spec)
            try answer(c, undo: { bindings.remove(spec) }) { () throws(Failure) in try bind(spec) }
        case .unbind(let spec, let c):
            bindings.remove(spec)
            try answer(c) { () throws(Failure) in
                try withArena { arena throws(Failure) in
                    let args = arena.table(spec.arguments)
                    amqp_queue_unbind(conn, Self.topologyChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                                      arena.bytes(spec.routingKey), args)
                    try check(amqp_get_rpc_reply(conn), "queue.unbind")
                }
            }
        default:
            preconditionFailure("not a topology command")
        }
    }

    /// Publishes, on the publish channel; their confirms come back through ``ConfirmTracker``.
    private func executePublish(_ command: AMQPCommand) throws(Failure) {
        switch command {
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
        default:
            preconditionFailure("not a publish command")
        }
    }

    /// Consumers (each on a channel of its own) and the acks of their deliveries.
    private func executeConsumer(_ command: AMQPCommand) throws(Failure) {
        switch command {
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
                // Waits for close-ok; deliveries on this channel read meanwhile are queued by librabbitmq and
                // dropped when handled (no consumer has the tag), and the broker requeues them.
                try check(amqp_channel_close(conn, channel, AMQP_REPLY_SUCCESS), "channel.close")
                channels.closed(channel)
            }
        case .ack(let channel, let epoch, let tag, let multiple):
            // The broker redelivers what a closed channel or an old connection held.
            guard channels.isCurrent(channel, epoch: epoch) else { return }
            let status = amqp_basic_ack(conn, channel, tag, multiple ? 1 : 0)
            if status != AMQP_STATUS_OK.rawValue { throw .connection("basic.ack: \(String(cString: amqp_error_string2(status)))") }
        case .nack(let channel, let epoch, let tag, let requeue):
            guard channels.isCurrent(channel, epoch: epoch) else { return }
            let status = amqp_basic_nack(conn, channel, tag, 0, requeue ? 1 : 0)
            if status != AMQP_STATUS_OK.rawValue { throw .connection("basic.nack: \(String(cString: amqp_error_string2(status)))") }
        default:
            preconditionFailure("not a consumer command")
        }
    }

    /// Runs a topology call, answers its caller, and recovers from a refusal (see ``recoverTopology(after:)``).
    func answer(_ c: CheckedContinuation<Void, any Error>, undo: () -> Void = {}, _ body: () throws(Failure) -> Void) throws(Failure) {
        do {
            try body()
            c.resume()
        } catch {
            if case .refused = error { undo() }
            c.resume(throwing: error.asAMQPError)
            try recoverTopology(after: error)
        }
    }

    /// After a failed topology call: a refusal that closed only the topology channel is acknowledged and the
    /// channel opened again, and the connection carries on; anything else is rethrown and resets the connection.
    func recoverTopology(after error: Failure) throws(Failure) {
        guard case .refused(_, _, channelOnly: true) = error else { throw error }
        logger.warning("the broker refused a topology call; the connection carries on", metadata: ["error": "\(error)"])
        try reopenTopologyChannel()
    }

    func reopenTopologyChannel() throws(Failure) {
        let status = chat_send_channel_close_ok(conn, Self.topologyChannel)
        if status != AMQP_STATUS_OK.rawValue { throw .connection("channel.close-ok: \(String(cString: amqp_error_string2(status)))") }
        try openChannel(Self.topologyChannel)
        AMQPMetrics.topologyRefusals.increment()
    }

    func declare(_ spec: ExchangeSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_exchange_declare(conn, Self.topologyChannel, arena.bytes(spec.name), arena.bytes(spec.type.rawValue), 0,
                                  spec.durable ? 1 : 0, spec.autoDelete ? 1 : 0, 0, arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "exchange.declare \(spec.name)")
        }
    }

    func declare(_ spec: QueueSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_queue_declare(conn, Self.topologyChannel, arena.bytes(spec.name), 0, spec.durable ? 1 : 0,
                               spec.exclusive ? 1 : 0, spec.autoDelete ? 1 : 0, arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "queue.declare \(spec.name)")
        }
    }

    func bind(_ spec: BindingSpec) throws(Failure) {
        try withArena { arena throws(Failure) in
            amqp_queue_bind(conn, Self.topologyChannel, arena.bytes(spec.queue), arena.bytes(spec.exchange),
                            arena.bytes(spec.routingKey), arena.table(spec.arguments))
            try check(amqp_get_rpc_reply(conn), "queue.bind \(spec.queue) \(spec.exchange) \(spec.routingKey)")
        }
    }

    func startConsumer(_ record: ConsumerRecord) throws(Failure) {
        let channel = channels.take()
        try openChannel(channel)
        _ = channels.opened(channel)
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
}
