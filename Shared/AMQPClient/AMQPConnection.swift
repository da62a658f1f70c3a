import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A connection to a RabbitMQ broker over librabbitmq-c.
///
/// librabbitmq-c is not thread-safe and its calls block, so one dedicated thread owns the C connection
/// (see ``AMQPWorker``): every public method enqueues a command for that thread and awaits its answer, and
/// nothing here blocks Swift's cooperative pool or a NIO event loop. The thread connects, keeps heartbeats
/// alive, reconnects with exponential backoff when the broker goes away, and then declares again every
/// exchange, queue, binding and consumer that was declared through this connection.
///
/// It is a swift-service-lifecycle `Service`: `run()` waits for graceful shutdown and then closes the
/// connection, so list it first in a `ServiceGroup` (services shut down in reverse order) to keep it up
/// while the parts that use it drain.
package final class AMQPConnection: Service, Sendable {
    package let configuration: AMQPConfiguration
    let logger: Logger
    let shared: Mutex<SharedState>
    let connected: Atomic<Bool>
    let wakeReadFD: Int32
    let wakeWriteFD: Int32
    private let nextConsumerID = Atomic<Int>(1)

    struct SharedState {
        var commands: [AMQPCommand] = []
        var workerSleeping = false
        var closing = false
        var exited = false
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var connectWaiters: [CheckedContinuation<Void, Never>] = []
    }

    package init(configuration: AMQPConfiguration, logger: Logger = Logger(label: "amqp")) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "amqp.host"] = "\(configuration.host):\(configuration.port)"
        self.logger = logger
        self.shared = Mutex(SharedState())
        self.connected = Atomic(false)
        var fds: [Int32] = [0, 0]
        let rc = pipe(&fds)
        precondition(rc == 0, "pipe() failed: \(errno)")
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        self.wakeReadFD = fds[0]
        self.wakeWriteFD = fds[1]
        let worker = AMQPWorker(owner: self)
        // Named from inside the thread (a name set before start() does not reach the OS thread here), so that
        // top and perf show the AMQP thread apart from the pool thread it was started from.
        let name = String("amqp-\(configuration.connectionName)".utf8.prefix(15)) ?? "amqp"
        let thread = Thread {
            Thread.current.name = name
            worker.run()
        }
        thread.start()
    }

    deinit {
        Glibc.close(wakeReadFD)
        Glibc.close(wakeWriteFD)
    }

    /// Whether the broker connection is up now (for readiness checks).
    package var isConnected: Bool { connected.load(ordering: .acquiring) }

    /// How many times this connection has connected (1 after the first, more after reconnects).
    package var connectCount: Int { connects.load(ordering: .relaxed) }
    let connects = Atomic<Int>(0)

    /// Waits until the connection is up (or the connection is closed).
    package func waitUntilConnected() async {
        if isConnected { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = shared.withLock { state -> Bool in
                if connected.load(ordering: .acquiring) || state.exited { return true }
                state.connectWaiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    // MARK: Service

    package func run() async throws {
        // Throws only when cancelled: the connection closes either way.
        try? await gracefulShutdown()
        await self.close()
    }

    /// Closes the connection: pending publishes fail with ``AMQPError/closed``, consumers' streams finish.
    package func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = shared.withLock { state -> Bool in
                if state.exited { return true }
                state.closing = true
                state.closeWaiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() } else { wake() }
        }
    }

    // MARK: Topology

    /// Declares an exchange (and again after every reconnect).
    package func declareExchange(_ name: String, type: AMQPExchangeType, durable: Bool = true, autoDelete: Bool = false,
                                arguments: AMQPTable = [:]) async throws {
        let spec = ExchangeSpec(name: name, type: type, durable: durable, autoDelete: autoDelete, arguments: arguments)
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.declareExchange(spec, c))
        }
    }

    /// Declares a named queue. Exclusive queues belong to this connection and are declared again after a reconnect.
    package func declareQueue(_ name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false,
                             arguments: AMQPTable = [:]) async throws {
        precondition(!name.isEmpty, "queues are named by their owner so that they can be declared again after a reconnect")
        let spec = QueueSpec(name: name, durable: durable, exclusive: exclusive, autoDelete: autoDelete, arguments: arguments)
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.declareQueue(spec, c))
        }
    }

    /// Deletes a queue and forgets it, so that it is not declared again after a reconnect.
    package func deleteQueue(_ name: String) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.deleteQueue(name, c))
        }
    }

    /// Returns the number of ready messages in a queue (a passive declare).
    package func messageCount(queue: String) async throws -> Int {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int, any Error>) in
            enqueue(.messageCount(queue, c))
        }
    }

    /// Binds a queue to an exchange (and again after every reconnect); returns once the broker has confirmed it.
    package func bindQueue(_ queue: String, exchange: String, routingKey: String, arguments: AMQPTable = [:]) async throws {
        let spec = BindingSpec(queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.bind(spec, c))
        }
    }

    /// Removes a binding, and forgets it for reconnects.
    package func unbindQueue(_ queue: String, exchange: String, routingKey: String, arguments: AMQPTable = [:]) async throws {
        let spec = BindingSpec(queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.unbind(spec, c))
        }
    }

    // MARK: Publishing

    /// Publishes one message and returns once the broker has confirmed it (publisher confirms).
    package func publish(_ message: AMQPOutgoingMessage) async throws {
        try await publish([message])
    }

    /// Publishes messages back to back (pipelined) and returns once the broker has confirmed all of them.
    /// Throws if any is nacked, returned as unroutable (when mandatory), or the connection drops first.
    package func publish(_ messages: [AMQPOutgoingMessage]) async throws {
        if messages.isEmpty { return }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.publish(messages, c))
        }
    }

    /// Enqueues messages for publishing **now** (so calls keep their order on the wire) and returns a
    /// confirmation to await later: a caller can publish message after message without waiting a broker
    /// round trip (and, for persistent messages, its disk sync) between them.
    @discardableResult
    package func publishPipelined(_ messages: [AMQPOutgoingMessage], confirmation: AMQPConfirmation = AMQPConfirmation()) -> AMQPConfirmation {
        if messages.isEmpty {
            confirmation.complete(.success(()))
        } else {
            enqueue(.publishTracked(messages, confirmation))
        }
        return confirmation
    }

    /// Publishes what `produce` returns when the connection's thread gets to it: a caller that gathers
    /// messages (from many sockets) until then sends them as one batch, as large as the thread's backlog
    /// makes it, with no task or timer per batch. `produce` runs on the connection's thread, in order with
    /// the other publishes; it returns nil when there is nothing to send.
    package func publishWhenReady(_ produce: @escaping @Sendable () -> AMQPProducedBatch?) {
        enqueue(.publishProduced(produce))
    }

    // MARK: Consuming

    /// Starts a consumer with manual acknowledgements (unless `autoAck`) and at most `prefetch` unacknowledged
    /// deliveries. The consumer survives reconnects; ending the iteration cancels it.
    package func consume(queue: String, prefetch: UInt16 = 100, autoAck: Bool = false) -> AMQPConsumer {
        let id = nextConsumerID.wrappingAdd(1, ordering: .relaxed).oldValue
        let (stream, continuation) = AsyncStream<[AMQPDelivery]>.makeStream(bufferingPolicy: .unbounded)
        let sink = ConsumerSink(deliver: { continuation.yield($0) }, finish: { continuation.finish() })
        let record = ConsumerRecord(id: id, queue: queue, prefetch: prefetch, autoAck: autoAck, sink: sink)
        continuation.onTermination = { [weak self] _ in
            self?.enqueue(.cancelConsumer(id))
        }
        enqueue(.consume(record))
        return AMQPConsumer(stream: stream)
    }

    /// Starts a consumer whose deliveries are handed to `deliver` on the connection's own thread, in the
    /// batches they were read off the socket in: no task sits between the socket and the handler, which saves
    /// a thread wake-up per batch on the hot path. `deliver` must return quickly and never block (it holds up
    /// the connection: heartbeats, confirms, every other consumer); it hands work on (to an event loop, a
    /// continuation) rather than doing it. `finished` is called once, when the consumer ends (cancelled, the
    /// connection closed, or refused by the broker). The consumer survives reconnects.
    package func consume(queue: String, prefetch: UInt16 = 100, autoAck: Bool = false,
                        finished: @escaping @Sendable () -> Void = {},
                        deliver: @escaping @Sendable ([AMQPDelivery]) -> Void) -> AMQPConsumerHandle {
        let id = nextConsumerID.wrappingAdd(1, ordering: .relaxed).oldValue
        let record = ConsumerRecord(id: id, queue: queue, prefetch: prefetch, autoAck: autoAck,
                                    sink: ConsumerSink(deliver: deliver, finish: finished))
        enqueue(.consume(record))
        return AMQPConsumerHandle(connection: self, id: id)
    }

    // MARK: Commands to the worker thread

    func enqueueAck(channel: UInt16, epoch: UInt64, deliveryTag: UInt64, multiple: Bool) {
        enqueue(.ack(channel: channel, epoch: epoch, tag: deliveryTag, multiple: multiple))
    }

    func enqueueNack(channel: UInt16, epoch: UInt64, deliveryTag: UInt64, requeue: Bool) {
        enqueue(.nack(channel: channel, epoch: epoch, tag: deliveryTag, requeue: requeue))
    }

    func enqueue(_ command: AMQPCommand) {
        let (accepted, mustWake) = shared.withLock { state -> (Bool, Bool) in
            if state.exited || state.closing { return (false, false) }
            state.commands.append(command)
            let mustWake = state.workerSleeping
            state.workerSleeping = false
            return (true, mustWake)
        }
        if !accepted {
            command.fail(AMQPError.closed)
            return
        }
        if mustWake { wake() }
    }

    func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWriteFD, &byte, 1)
    }
}

/// Messages for ``AMQPConnection/publishWhenReady(_:)`` and the confirmation they complete.
package struct AMQPProducedBatch: Sendable {
    package var messages: [AMQPOutgoingMessage]
    package var confirmation: AMQPConfirmation

    package init(messages: [AMQPOutgoingMessage], confirmation: AMQPConfirmation) {
        self.messages = messages
        self.confirmation = confirmation
    }
}

/// The deliveries of one consumer, as an async sequence of single deliveries, or of the batches in which
/// they were read off the socket (``batches``), which lets a consumer handle many in one go.
package struct AMQPConsumer: AsyncSequence, Sendable {
    package typealias Element = AMQPDelivery
    let stream: AsyncStream<[AMQPDelivery]>

    /// Deliveries in the batches the connection read them in (never empty).
    package var batches: AsyncStream<[AMQPDelivery]> { stream }

    package func makeAsyncIterator() -> Iterator {
        Iterator(batches: stream.makeAsyncIterator())
    }

    package struct Iterator: AsyncIteratorProtocol {
        var batches: AsyncStream<[AMQPDelivery]>.AsyncIterator
        var current: [AMQPDelivery] = []
        var index = 0

        package mutating func next() async -> AMQPDelivery? {
            while index >= current.count {
                guard let batch = await batches.next() else { return nil }
                current = batch
                index = 0
            }
            defer { index += 1 }
            return current[index]
        }
    }
}

struct ExchangeSpec: Sendable, Hashable {
    var name: String
    var type: AMQPExchangeType
    var durable: Bool
    var autoDelete: Bool
    var arguments: AMQPTable
}

struct QueueSpec: Sendable, Hashable {
    var name: String
    var durable: Bool
    var exclusive: Bool
    var autoDelete: Bool
    var arguments: AMQPTable
}

struct BindingSpec: Sendable, Hashable {
    var queue: String
    var exchange: String
    var routingKey: String
    var arguments: AMQPTable
}

/// Stops a consumer started with ``AMQPConnection/consume(queue:prefetch:autoAck:finished:deliver:)``.
package struct AMQPConsumerHandle: Sendable {
    let connection: AMQPConnection
    let id: Int

    /// Cancels the consumer; its `finished` runs once the worker has dropped it (or at once if the connection is gone).
    package func cancel() {
        connection.enqueue(.cancelConsumer(id))
    }

    /// Cancels the consumer by closing its channel: the broker requeues every delivery not acknowledged yet,
    /// in its place in the queue, and acknowledgements of them sent later are dropped. For handing a queue
    /// over to another consumer (single active consumer) without it overtaking what this one still held.
    package func release() {
        connection.enqueue(.releaseConsumer(id))
    }
}

/// Where a consumer's deliveries go, called on the worker thread: `deliver` per batch read off the socket,
/// `finish` once when the consumer ends.
struct ConsumerSink: Sendable {
    let deliver: @Sendable ([AMQPDelivery]) -> Void
    let finish: @Sendable () -> Void
}

/// A consumer as the worker thread knows it. Its fields other than `channel` never change; `channel` is
/// read and written on the worker thread only.
final class ConsumerRecord: @unchecked Sendable {
    let id: Int
    let queue: String
    let prefetch: UInt16
    let autoAck: Bool
    let sink: ConsumerSink
    var channel: UInt16 = 0

    init(id: Int, queue: String, prefetch: UInt16, autoAck: Bool, sink: ConsumerSink) {
        self.id = id
        self.queue = queue
        self.prefetch = prefetch
        self.autoAck = autoAck
        self.sink = sink
    }

    var tag: String { "consumer-\(id)" }
}

enum AMQPCommand: Sendable {
    case declareExchange(ExchangeSpec, CheckedContinuation<Void, any Error>)
    case declareQueue(QueueSpec, CheckedContinuation<Void, any Error>)
    case deleteQueue(String, CheckedContinuation<Void, any Error>)
    case messageCount(String, CheckedContinuation<Int, any Error>)
    case bind(BindingSpec, CheckedContinuation<Void, any Error>)
    case unbind(BindingSpec, CheckedContinuation<Void, any Error>)
    case publish([AMQPOutgoingMessage], CheckedContinuation<Void, any Error>)
    case publishTracked([AMQPOutgoingMessage], AMQPConfirmation)
    case publishProduced(@Sendable () -> AMQPProducedBatch?)
    case consume(ConsumerRecord)
    case cancelConsumer(Int)
    case releaseConsumer(Int)
    case ack(channel: UInt16, epoch: UInt64, tag: UInt64, multiple: Bool)
    case nack(channel: UInt16, epoch: UInt64, tag: UInt64, requeue: Bool)

    func fail(_ error: AMQPError) {
        switch self {
        case .declareExchange(_, let c), .declareQueue(_, let c), .deleteQueue(_, let c), .bind(_, let c),
             .unbind(_, let c), .publish(_, let c):
            c.resume(throwing: error)
        case .messageCount(_, let c):
            c.resume(throwing: error)
        case .publishTracked(_, let confirmation):
            confirmation.complete(.failure(error))
        case .publishProduced(let produce):
            produce()?.confirmation.complete(.failure(error))
        case .consume(let record):
            record.sink.finish()
        case .cancelConsumer, .releaseConsumer, .ack, .nack:
            break
        }
    }
}

/// The broker's answer to a pipelined publish: await it with ``wait()`` (any number of times, from any task).
package final class AMQPConfirmation: Sendable {
    private enum State {
        case pending([CheckedContinuation<Void, any Error>], [@Sendable (AMQPError) -> Void])
        case done(Result<Void, AMQPError>)
    }
    private let state = Mutex<State>(.pending([], []))

    package init() {}

    /// Returns once every message was confirmed; throws if one was nacked, returned, or the connection dropped.
    package func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let result = state.withLock { state -> Result<Void, AMQPError>? in
                switch state {
                case .pending(var waiters, let callbacks):
                    waiters.append(continuation)
                    state = .pending(waiters, callbacks)
                    return nil
                case .done(let result):
                    return result
                }
            }
            if let result { continuation.resume(with: result) }
        }
    }

    /// Calls `callback` (on whichever thread completes the confirmation, or at once) if it fails: for callers
    /// that report a failure without waiting in a task.
    package func onFailure(_ callback: @escaping @Sendable (AMQPError) -> Void) {
        let result = state.withLock { state -> Result<Void, AMQPError>? in
            switch state {
            case .pending(let waiters, var callbacks):
                callbacks.append(callback)
                state = .pending(waiters, callbacks)
                return nil
            case .done(let result):
                return result
            }
        }
        if case .failure(let error) = result { callback(error) }
    }

    /// Completes it (the connection does; a caller may, for a message that never reached the connection).
    package func complete(_ result: Result<Void, AMQPError>) {
        let (waiters, callbacks) = state.withLock { state -> ([CheckedContinuation<Void, any Error>], [@Sendable (AMQPError) -> Void]) in
            guard case .pending(let waiters, let callbacks) = state else { return ([], []) }
            state = .done(result)
            return (waiters, callbacks)
        }
        for waiter in waiters { waiter.resume(with: result) }
        if case .failure(let error) = result { for callback in callbacks { callback(error) } }
    }
}
