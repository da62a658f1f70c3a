import Foundation

/// CPU time and resident memory of processes, from /proc.
enum ProcessStats {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// User + system CPU seconds of a process (0 if it is gone).
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state(0) ... utime is field 14 overall, i.e. index 11 here; stime index 12.
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / ticksPerSecond
    }

    /// The process's command name (`/proc/PID/comm`), or its pid if it is gone.
    static func name(_ pid: Int32) -> String {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "\(pid)"
    }

    /// Proportional set size in KiB (`/proc/PID/smaps_rollup`): resident pages, each shared one divided among
    /// the processes that map it, so the sum over a system's processes counts a shared library once.
    static func pssKiB(_ pid: Int32) -> Int {
        guard let rollup = try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8) else { return 0 }
        for line in rollup.split(separator: "\n") where line.hasPrefix("Pss:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// Context switches (voluntary and not) of every live thread of a process, from `/proc/PID/task/*/status`:
    /// each is a thread put to sleep or woken, the cost issue 19 counts per chat message.
    static func contextSwitches(_ pid: Int32) -> Int {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return 0 }
        var total = 0
        for task in tasks {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8) else { continue }
            for line in status.split(separator: "\n") where line.contains("ctxt_switches:") {
                total += Int(line.split(separator: "\t", omittingEmptySubsequences: true).last?.trimmingCharacters(in: .whitespaces) ?? "0") ?? 0
            }
        }
        return total
    }

    /// Resident set size in KiB.
    static func rssKiB(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }
        return 0
    }
}

/// Samples the servers' RSS while a run goes on, keeping the peak of their sum (and, twice a second, of their
/// PSS: reading it walks the page tables, too dear to do ten times a second).
final class RSSSampler: @unchecked Sendable {
    // Safety: `peak` and `running` are touched by the sampling thread and read after `stop()` joins it.
    private var peak = 0
    private var peakPSS = 0
    private var running = true
    private let pids: [Int32]
    private let lock = NSLock()
    private var thread: Thread?

    init(pids: [Int32]) {
        self.pids = pids
    }

    func start() {
        let thread = Thread { [self] in
            var round = 0
            while lock.withLock({ running }) {
                let total = pids.reduce(0) { $0 + ProcessStats.rssKiB($1) }
                let pss = round % 5 == 0 ? pids.reduce(0) { $0 + ProcessStats.pssKiB($1) } : 0
                lock.withLock {
                    peak = max(peak, total)
                    peakPSS = max(peakPSS, pss)
                }
                round += 1
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        self.thread = thread
        thread.start()
    }

    /// Stops sampling; the peaks of the RSS and of the PSS sums, in KiB.
    func stop() -> (rss: Int, pss: Int) {
        lock.withLock { running = false }
        Thread.sleep(forTimeInterval: 0.15)
        let total = pids.reduce(0) { $0 + ProcessStats.rssKiB($1) }
        let pss = pids.reduce(0) { $0 + ProcessStats.pssKiB($1) }
        return lock.withLock { (max(peak, total), max(peakPSS, pss)) }
    }
}
