import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Writes log lines to a file descriptor from a thread of its own, so that a caller (an event loop above all)
/// only appends to a buffer under a short lock and never waits for the pipe or a slow log collector.
/// Past `capacity` bytes waiting, lines are dropped and counted, and a line saying how many follows.
///
/// Safety: `pending`, `dropped` and `writing` are read and written only while `condition` is locked; that is why
/// it can be `@unchecked Sendable`.
package final class LogWriter: @unchecked Sendable {
    /// Standard error, with 4 MiB of lines waiting at most.
    package static let standardError = LogWriter(fileDescriptor: 2, capacity: 4 << 20)

    private let fileDescriptor: Int32
    private let capacity: Int
    private let condition = NSCondition()
    private var pending: [UInt8] = []
    private var dropped = 0
    private var writing = false

    package init(fileDescriptor: Int32, capacity: Int) {
        self.fileDescriptor = fileDescriptor
        self.capacity = capacity
        let thread = Thread { [self] in run() }
        thread.name = "log-writer"
        thread.start()
    }

    /// Queues one line (with its newline); never blocks on the output.
    package func write(_ line: String) {
        condition.lock()
        defer { condition.unlock() }
        if pending.count + line.utf8.count > capacity {
            dropped += 1
        } else {
            pending.append(contentsOf: line.utf8)
        }
        condition.broadcast()  // the writer thread, or a flush waiting for it
    }

    /// Waits until every line queued so far has been written (before the process exits).
    package func flush() {
        condition.lock()
        defer { condition.unlock() }
        while !pending.isEmpty || dropped > 0 || writing { condition.wait() }
    }

    private func run() {
        var chunk: [UInt8] = []
        while true {
            condition.lock()
            while pending.isEmpty && dropped == 0 { condition.wait() }
            swap(&chunk, &pending)
            let lost = dropped
            dropped = 0
            writing = true
            condition.unlock()

            if lost > 0 {
                let now = Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
                chunk += Array("{\"ts\":\"\(now)\",\"level\":\"warning\",\"label\":\"log\",\"msg\":\"log lines dropped: the output was too slow\",\"dropped\":\"\(lost)\"}\n".utf8)
            }
            writeAll(chunk)
            chunk.removeAll(keepingCapacity: chunk.count <= 64 << 10)

            condition.lock()
            writing = false
            condition.broadcast()
            condition.unlock()
        }
    }

    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fileDescriptor, raw.baseAddress! + offset, raw.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return  // The output is gone (closed pipe): there is nowhere left to say so.
                }
            }
        }
    }
}
