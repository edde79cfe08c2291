import Dispatch
import Foundation

// The agent's side of the file protocol with harness/devices/ios/ (through house_arrest):
//
//   Documents/jobs/<job id>/job.json     written by the host before the launch
//   Documents/jobs/<job id>/status.json  heartbeats: {"phase", "done", "total", "seq", "t", "pid"}
//   Documents/jobs/<job id>/result.json  the JobResult, written atomically
//   Documents/jobs/<job id>/DONE         written last; the host polls for it
//   Documents/jobs/<job id>/stderr.txt   the app's stderr from the job's start (its tail is in a failure's detail)
//   Documents/models/<sha16>.mlpackage   pushed by the host, with <sha16>.mlpackage.sha256 beside it
//   Library/Caches/compiled/<sha16>.mlmodelc   the compiled models, by package hash

public struct JobPaths {
    public let home: URL
    public let jobId: String

    public init(home: URL, jobId: String) {
        self.home = home
        self.jobId = jobId
    }

    public var jobDir: URL { home.appendingPathComponent("Documents/jobs/\(jobId)", isDirectory: true) }
    public var job: URL { jobDir.appendingPathComponent("job.json") }
    public var status: URL { jobDir.appendingPathComponent("status.json") }
    public var result: URL { jobDir.appendingPathComponent("result.json") }
    public var done: URL { jobDir.appendingPathComponent("DONE") }
    public var stderr: URL { jobDir.appendingPathComponent("stderr.txt") }
    public var compiledCache: URL { home.appendingPathComponent("Library/Caches/compiled", isDirectory: true) }

    /// A container-relative path from job.json (e.g. "Documents/models/ab12.mlpackage") as a URL.
    public func resolve(_ relative: String) -> URL {
        home.appendingPathComponent(relative.hasPrefix("/") ? String(relative.dropFirst()) : relative)
    }
}

public enum AgentLaunch {
    /// The job id: `--job-id ID` among the launch arguments, else $HARNESS_JOB_ID.
    public static func jobId(arguments: [String], environment: [String: String]) -> String? {
        if let i = arguments.firstIndex(of: "--job-id"), i + 1 < arguments.count, !arguments[i + 1].isEmpty {
            return arguments[i + 1]
        }
        if let id = environment["HARNESS_JOB_ID"], !id.isEmpty {
            return id
        }
        return nil
    }
}

/// Write through a temporary file and rename, so the host never reads half a file.
public func writeAtomically(_ data: Data, to url: URL) throws {
    try data.write(to: url, options: .atomic)
}

public struct StatusDoc: Codable, Equatable {
    public var phase: String
    public var done: Int
    public var total: Int
    public var seq: Int
    public var t: Double
    public var pid: Int32
}

/// Writes status.json every `interval` seconds from its own queue, whatever the job's thread is
/// doing (compiling a model can take minutes). The host kills the app when the file stops changing.
public final class Heartbeat {
    private let url: URL
    private let queue = DispatchQueue(label: "harness.heartbeat")
    private let timer: DispatchSourceTimer
    private let lock = NSLock()
    private var phase = "start"
    private var done = 0
    private var total = 1
    private var seq = 0

    public init(url: URL, interval: Double) {
        self.url = url
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + max(0.05, interval), repeating: max(0.05, interval))
        timer.setEventHandler { [weak self] in self?.beat() }
        beat()  // the first beat before any work: status.json exists as soon as the job starts
        timer.resume()
    }

    public func update(_ phase: String, _ done: Int, _ total: Int) {
        lock.lock()
        self.phase = phase
        self.done = done
        self.total = total
        lock.unlock()
    }

    private func beat() {
        lock.lock()
        seq += 1
        let doc = StatusDoc(phase: phase, done: done, total: total, seq: seq,
                            t: Date().timeIntervalSince1970, pid: ProcessInfo.processInfo.processIdentifier)
        lock.unlock()
        if let data = try? JSONEncoder().encode(doc) {
            try? writeAtomically(data, to: url)
        }
    }

    /// Stop beating (before DONE is written).
    public func stop() {
        timer.cancel()
        queue.sync {}
    }
}

/// Write result.json, then DONE (in that order: the host reads the result once DONE exists).
public func finish(_ result: JobResult, paths: JobPaths) throws {
    let data = try ProtocolCoding.encoder().encode(result)
    try writeAtomically(data, to: paths.result)
    try writeAtomically(Data((result.status == "ok" ? "0" : "1").utf8), to: paths.done)
}
