import CRabbitMQ

/// The one owner of a librabbitmq-c connection state: made by `amqp_new_connection`, destroyed exactly once,
/// when the value goes away. Being `~Copyable`, it cannot be copied into a second owner that would destroy it
/// again; the state is only ever used on the ``AMQPWorker``'s thread (see its safety note), which holds it.
struct AMQPHandle: ~Copyable {
    let state: amqp_connection_state_t

    init() throws(AMQPWorker.Failure) {
        guard let state = amqp_new_connection() else { throw .connection("amqp_new_connection failed") }
        self.state = state
    }

    /// Sends connection.close (best effort) before the state is destroyed.
    func close() {
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
    }

    deinit {
        amqp_destroy_connection(state)
    }
}
