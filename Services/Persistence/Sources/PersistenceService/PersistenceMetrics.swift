import CoreMetrics

/// What a persistence worker counts, for `/metrics`.
struct PersistenceMetrics: Sendable {
    let stored = Counter(label: "chat_persistence_messages_stored_total")
    let deadLetters = Counter(label: "chat_persistence_dead_letters_total")
    let redeliveredBatches = Counter(label: "chat_persistence_redelivered_batches_total")
    /// Messages per transaction.
    let batchSize = Recorder(label: "chat_persistence_batch_size", aggregate: true)
    /// One batch's store, retries and splits included.
    let batchDuration = Timer(label: "chat_persistence_batch_duration_seconds")
    let partitionsOwned = Gauge(label: "chat_persistence_partitions_owned")
    /// 1 for each partition this worker consumes (as its queue's single active consumer, or waiting to be).
    let partitionOwned: [Gauge]

    init(partitions: Int) {
        partitionOwned = (0..<partitions).map { Gauge(label: "chat_persistence_partition_owned", dimensions: [("partition", "\($0)")]) }
    }

    func ownership(_ owned: Set<Int>) {
        partitionsOwned.record(owned.count)
        for (partition, gauge) in partitionOwned.enumerated() { gauge.record(owned.contains(partition) ? 1 : 0) }
    }
}
