import AMQPClient
import Foundation
import NIOCore
import Testing

/// The AMQP client against the real RabbitMQ node of the test run.
@Suite(.serialized) struct AMQPConnectionTests {
    @Test func parsesURLs() throws {
        let c = try AMQPConfiguration(url: "amqp://u%40x:p%3Aw@broker.local:5999/%2Fchat")
        #expect(c.host == "broker.local")
        #expect(c.port == 5999)
        #expect(c.user == "u@x")
        #expect(c.password == "p:w")
        #expect(c.virtualHost == "/chat")
        #expect(try AMQPConfiguration(url: "amqp://h").virtualHost == "/")
        #expect(throws: AMQPError.self) { try AMQPConfiguration(url: "http://h") }
    }

    @Test func publishIsConfirmedAndConsumedInOrderWithManualAcks() async throws {
        let connection = await TestBroker.connect("confirm")
        let queue = TestBroker.uniqueName("test.confirm")
        try await connection.declareQueue(queue, durable: false, autoDelete: false)
        let messages = (0..<200).map {
            AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(string: "m\($0)"), mandatory: true)
        }
        try await connection.publish(messages)
        #expect(try await connection.messageCount(queue: queue) == 200)

        let consumer = connection.consume(queue: queue, prefetch: 500)
        let deliveries = try await take(200, from: consumer)
        #expect(deliveries.map(\.body.string) == (0..<200).map { "m\($0)" })
        deliveries.last!.ack(multiple: true)
        try await Task.sleep(for: .milliseconds(200))
        try await connection.deleteQueue(queue)
        await connection.close()
    }

    @Test func mandatoryMessageWithNoQueueFailsAsUnroutable() async throws {
        let connection = await TestBroker.connect("unroutable")
        let exchange = TestBroker.uniqueName("test.unroutable")
        try await connection.declareExchange(exchange, type: .direct, durable: false, autoDelete: true)
        await #expect(throws: AMQPError.unroutable(exchange: exchange, routingKey: "nobody")) {
            try await connection.publish(AMQPOutgoingMessage(exchange: exchange, routingKey: "nobody", body: ByteBuffer(string: "x"), mandatory: true))
        }
        // Not mandatory: dropped by the broker, still confirmed.
        try await connection.publish(AMQPOutgoingMessage(exchange: exchange, routingKey: "nobody", body: ByteBuffer(string: "x")))
        await connection.close()
    }

    @Test func brokerRefusalIsATypedErrorAndTheConnectionRecovers() async throws {
        let connection = await TestBroker.connect("refusal")
        await #expect(throws: AMQPError.self) {
            _ = try await connection.messageCount(queue: TestBroker.uniqueName("test.missing"))
        }
        await connection.waitUntilConnected()
        let queue = TestBroker.uniqueName("test.after-refusal")
        try await connection.declareQueue(queue, durable: false, autoDelete: true)
        try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(string: "ok"), mandatory: true))
        #expect(connection.connectCount == 1, "a refused topology call closes its channel, not the connection")
        await connection.close()
    }

    /// Topology has its own channel: a refused declare must not fail publishes waiting for their confirms.
    @Test func aRefusedDeclareLeavesPendingConfirmsAlone() async throws {
        let connection = await TestBroker.connect("refusal-confirms")
        let queue = TestBroker.uniqueName("test.refusal-confirms")
        try await connection.declareQueue(queue, durable: true, autoDelete: false)
        // Persistent messages to a durable queue: their confirms wait for the broker's disk, so many are still
        // pending when the refusal comes back.
        let confirmations = (0..<20).map { batch in
            connection.publishPipelined((0..<100).map {
                var message = AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(string: "m\(batch).\($0)"), mandatory: true)
                message.properties.persistent = true
                return message
            })
        }
        // The same name with other arguments: 406 PRECONDITION_FAILED, which closes the channel it came on.
        await #expect(throws: AMQPError.self) {
            try await connection.declareQueue(queue, durable: false, autoDelete: true)
        }
        for confirmation in confirmations { try await confirmation.wait() }
        #expect(connection.connectCount == 1)
        #expect(try await connection.messageCount(queue: queue) == 2_000)
        try await connection.deleteQueue(queue)
        await connection.close()
    }

    /// Binds pipelined in one batch: a refused one fails its own caller only, and the rest are bound.
    @Test func aRefusedBindInAPipelinedBatchFailsOnlyItsCaller() async throws {
        let connection = await TestBroker.connect("refusal-binds")
        let exchange = TestBroker.uniqueName("test.refusal-binds")
        let queue = TestBroker.uniqueName("test.refusal-binds")
        try await connection.declareExchange(exchange, type: .direct, durable: false, autoDelete: true)
        try await connection.declareQueue(queue, durable: false, autoDelete: true)
        let results = await withTaskGroup(of: (String, Bool).self) { group in
            for key in (0..<30).map({ "k\($0)" }) + ["missing"] {
                group.addTask {
                    do {
                        try await connection.bindQueue(key == "missing" ? queue + ".missing" : queue, exchange: exchange, routingKey: key)
                        return (key, true)
                    } catch {
                        return (key, false)
                    }
                }
            }
            return await group.reduce(into: [String: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(results["missing"] == false)
        #expect(results.filter { $0.key != "missing" }.values.allSatisfy { $0 })
        #expect(connection.connectCount == 1)
        try await connection.publish(AMQPOutgoingMessage(exchange: exchange, routingKey: "k29", body: ByteBuffer(string: "x"), mandatory: true))
        #expect(try await connection.messageCount(queue: queue) == 1)
        await connection.close()
    }

    @Test func unackedMessagesAreRedeliveredAfterTheConsumersConnectionDrops() async throws {
        let queue = TestBroker.uniqueName("test.redeliver")
        let first = await TestBroker.connect("redeliver-1")
        try await first.declareQueue(queue, durable: true)
        try await first.publish((0..<10).map {
            AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(string: "r\($0)"), properties: .init(persistent: true))
        })
        let firstConsumer = first.consume(queue: queue, prefetch: 20)
        let got = try await take(10, from: firstConsumer)
        #expect(got.allSatisfy { !$0.redelivered })
        got[0].ack()  // one acknowledged, nine not
        try await Task.sleep(for: .milliseconds(200))
        await first.close()

        let second = await TestBroker.connect("redeliver-2")
        let again = try await take(9, from: second.consume(queue: queue, prefetch: 20))
        #expect(again.map(\.body.string) == (1..<10).map { "r\($0)" })
        #expect(again.allSatisfy { $0.redelivered })
        again.last!.ack(multiple: true)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await second.messageCount(queue: queue) == 0)
        try await second.deleteQueue(queue)
        await second.close()
    }

    @Test func reconnectsAfterTheBrokerRestartsAndDeclaresItsTopologyAgain() async throws {
        let connection = await TestBroker.connect("restart")
        let exchange = TestBroker.uniqueName("test.restart.x")
        let queue = TestBroker.uniqueName("test.restart.q")
        try await connection.declareExchange(exchange, type: .direct, durable: false, autoDelete: false)
        try await connection.declareQueue(queue, durable: false, exclusive: true)
        try await connection.bindQueue(queue, exchange: exchange, routingKey: "k")
        let consumer = connection.consume(queue: queue, prefetch: 10)
        var iterator = consumer.makeAsyncIterator()

        try await connection.publish(AMQPOutgoingMessage(exchange: exchange, routingKey: "k", body: ByteBuffer(string: "before"), mandatory: true))
        let before = await iterator.next()
        #expect(before?.body.string == "before")
        before?.ack()

        // Restart the broker application: every connection drops and the transient topology is gone.
        try TestBroker.rabbitmqctl("stop_app")
        try await Task.sleep(for: .milliseconds(300))
        #expect(!connection.isConnected)
        try TestBroker.rabbitmqctl("start_app")
        try TestBroker.rabbitmqctl("await_startup")

        await connection.waitUntilConnected()
        // The exchange, queue, binding and consumer were declared again by the client: the same publish routes.
        var published = false
        for _ in 0..<50 where !published {
            do {
                try await connection.publish(AMQPOutgoingMessage(exchange: exchange, routingKey: "k", body: ByteBuffer(string: "after"), mandatory: true))
                published = true
            } catch {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(published)
        let after = await iterator.next()
        #expect(after?.body.string == "after")
        after?.ack()
        await connection.close()
    }

    @Test func anIdleConnectionStaysUpAcrossManyHeartbeatIntervals() async throws {
        var configuration = TestBroker.configuration("idle")
        configuration.heartbeatSeconds = 1
        let connection = AMQPConnection(configuration: configuration)
        await connection.waitUntilConnected()
        try await Task.sleep(for: .seconds(5))  // five intervals with no traffic but heartbeats
        #expect(connection.isConnected)
        #expect(connection.connectCount == 1)
        let queue = TestBroker.uniqueName("test.idle")
        try await connection.declareQueue(queue, durable: false, autoDelete: true)
        #expect(connection.connectCount == 1)
        await connection.close()
    }

    @Test func closeFailsNewOperationsAndFinishesConsumers() async throws {
        let connection = await TestBroker.connect("close")
        let queue = TestBroker.uniqueName("test.close")
        try await connection.declareQueue(queue, durable: false, autoDelete: true)
        let consumer = connection.consume(queue: queue)
        await connection.close()
        var count = 0
        for await _ in consumer { count += 1 }
        #expect(count == 0)
        await #expect(throws: AMQPError.closed) {
            try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: ByteBuffer(string: "late")))
        }
    }
}
