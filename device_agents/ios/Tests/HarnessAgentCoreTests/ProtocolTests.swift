import XCTest
@testable import HarnessAgentCore

/// The agent's Codable types against the harness's protocol: the result.json fixture is what these
/// types write (tests/test_ios.py parses it as a JobResult), and the JobSpecs Python wrote decode.
final class ProtocolTests: XCTestCase {
    /// The JobResult behind tests/data/ios/result.json: one UNet iteration of SD 1.4 on an
    /// iPhone 14 Pro Max GPU (values made up, in the agent's layout).
    static func fixtureResult() -> JobResult {
        var r = JobResult(job_id: "20261121-101500-a1b2c3-003")
        r.samples_ms = [412.5, 409.25, 410.75, 411.0, 408.5, 410.25, 409.75, 412.0, 410.5, 409.0]
        r.warmup_ms = [1630.5, 433.25]
        r.init_ms = 95210.75
        r.first_run_ms = 1630.5
        r.timing_method = "mach_absolute_time"
        r.memory = MemoryFigures(weight_bytes: 1_719_322_880, peak_rss_bytes: 2_310_144_000)
        r.device_state_before = [
            "thermal_state": .string("nominal"), "low_power_mode": .bool(false),
            "physical_memory_bytes": .int(6_225_723_392), "uptime_s": .double(86400.5),
            "phys_footprint_bytes": .int(18_874_368), "phys_footprint_peak_bytes": .int(19_922_944),
        ]
        r.device_state_after = [
            "thermal_state": .string("fair"), "low_power_mode": .bool(false),
            "physical_memory_bytes": .int(6_225_723_392), "uptime_s": .double(86530.25),
            "phys_footprint_bytes": .int(2_205_286_400), "phys_footprint_peak_bytes": .int(2_310_144_000),
        ]
        r.versions = ["agent": "1", "app_build": "1", "os": "Version 18.1 (Build 22B83)", "model": "iPhone15,3"]
        r.started_at = 1_795_256_100.5
        r.ended_at = 1_795_256_231.25
        r.extra = [
            "compute_units": .string("cpuAndGPU"),
            "compile_ms": .double(94210.5),
            "load_ms": .double(1000.25),
            "compile_cached": .bool(false),
            "inputs": .array([
                .object(["name": .string("encoder_hidden_states"), "shape": .array([.int(2), .int(77), .int(768)]),
                         "dtype": .string("float32")]),
                .object(["name": .string("sample"), "shape": .array([.int(2), .int(4), .int(64), .int(64)]),
                         "dtype": .string("float32")]),
                .object(["name": .string("timestep"), "shape": .array([.int(1)]), "dtype": .string("float32")]),
            ]),
            "models": .object([
                "unet": .object([
                    "compile_ms": .double(94210.5), "load_ms": .double(1000.25), "compile_cached": .bool(false),
                    "sha256": .string("5d41402abc4b2a76b9719d911017c592ae8cb7b4d62f7c1a1f0e8a9d2c3b4a59"),
                    "weight_bytes": .int(1_719_322_880),
                ]),
            ]),
            "peak_rss_note": .string("phys_footprint peak (task_vm_info.ledger_phys_footprint_peak)"),
        ]
        return r
    }

    func testResultFixtureIsWhatTheCodableTypesWrite() throws {
        let encoded = try ProtocolCoding.encoder().encode(Self.fixtureResult())
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("harness-result.json")
        try encoded.write(to: out)
        if ProcessInfo.processInfo.environment["HARNESS_WRITE_FIXTURES"] == "1" {
            try encoded.write(to: Fixtures.dir.appendingPathComponent("result.json"))
        }
        let fixture = try Fixtures.data("result.json")
        XCTAssertEqual(try Fixtures.object(encoded), try Fixtures.object(fixture),
                       "tests/data/ios/result.json differs from the Codable output (written to \(out.path))")
        XCTAssertEqual(try ProtocolCoding.decoder().decode(JobResult.self, from: fixture), Self.fixtureResult())
    }

    func testFailedResultCarriesTheErrorKind() throws {
        var r = JobResult(job_id: "j")
        r.fail(kind: "input", message: "no .mlpackage")
        let doc = try XCTUnwrap(Fixtures.object(ProtocolCoding.encoder().encode(r)).objectValue)
        XCTAssertEqual(doc["status"], .string("failed"))
        XCTAssertEqual(doc["error"]?.objectValue?["kind"], .string("input"))
        XCTAssertNil(doc["init_ms"], "nil optionals are left out; the host fills the defaults")
    }

    func testDecodesTheJobSpecPythonWrote() throws {
        let spec = try ProtocolCoding.decodeSpec(Fixtures.data("job.json"))
        XCTAssertEqual(spec.schema_version, 1)
        XCTAssertEqual(spec.job_id, "20261121-101500-a1b2c3-003")
        XCTAssertEqual(spec.workload, "unet_iteration")
        XCTAssertEqual(spec.model.name, "sd14")
        XCTAssertNil(spec.model.weights)
        XCTAssertEqual(spec.variant, "+flash_attention")
        XCTAssertEqual(spec.flags["attention"], .string("flash"))
        XCTAssertEqual(spec.flags["winograd_tile"], .int(4))
        XCTAssertEqual(spec.options.runtime, "coreml")
        XCTAssertEqual(spec.options.dtype, "fp16")
        XCTAssertEqual(spec.options.compute_units, "cpuAndGPU")
        XCTAssertEqual(spec.options.extra["heartbeat_s"]?.doubleValue, 1.0)
        XCTAssertEqual(spec.options.extra["models"]?.objectValue?["unet"]?.stringValue, spec.artifact)
        XCTAssertEqual(spec.artifact, "Documents/models/5d41402abc4b2a76.mlpackage")
        XCTAssertEqual(spec.measure.warmup_runs, 2)
        XCTAssertEqual(spec.measure.iterations, 10)
        XCTAssertEqual(spec.measure.max_seconds, 120.0)
        XCTAssertFalse(spec.check.enabled)
        // what goes in comes out: nothing is dropped on the way through the Swift types
        let again = try ProtocolCoding.decoder().decode(JobSpec.self, from: ProtocolCoding.encoder().encode(spec))
        XCTAssertEqual(again, spec)
    }

    func testDecodesTheE2EJobSpecPythonWrote() throws {
        let spec = try ProtocolCoding.decodeSpec(Fixtures.data("job_e2e.json"))
        XCTAssertEqual(spec.workload, "e2e")
        XCTAssertEqual(spec.workload_args["steps"]?.intValue, 20)
        XCTAssertEqual(spec.workload_args["scheduler"]?.stringValue, "dpmsolver++")
        XCTAssertEqual(spec.workload_args["guidance_scale"]?.doubleValue, 7.5)
        let models = try XCTUnwrap(spec.options.extra["models"]?.objectValue)
        XCTAssertEqual(Set(models.keys), ["text_encoder", "unet", "vae_decoder"])
        let ids = try XCTUnwrap(spec.options.extra["token_ids"]?.arrayValue)
        XCTAssertEqual(ids.count, 2)
        XCTAssertEqual(ids[1].arrayValue?.count, 8)
        XCTAssertEqual(ids[0].arrayValue?.first?.intValue, 126)
    }

    func testRefusesAnotherSchemaVersion() throws {
        var text = try XCTUnwrap(String(data: Fixtures.data("job.json"), encoding: .utf8))
        text = text.replacingOccurrences(of: "\"schema_version\": 1", with: "\"schema_version\": 2")
        XCTAssertThrowsError(try ProtocolCoding.decodeSpec(Data(text.utf8))) { error in
            XCTAssertEqual((error as? AgentFailure)?.kind, "input")
        }
    }

    func testJobIdFromArgumentsThenEnvironment() {
        XCTAssertEqual(AgentLaunch.jobId(arguments: ["app", "--job-id", "abc"], environment: ["HARNESS_JOB_ID": "x"]), "abc")
        XCTAssertEqual(AgentLaunch.jobId(arguments: ["app"], environment: ["HARNESS_JOB_ID": "x"]), "x")
        XCTAssertNil(AgentLaunch.jobId(arguments: ["app", "--job-id"], environment: [:]))
    }

    func testContainerLayout() {
        let paths = JobPaths(home: URL(fileURLWithPath: "/var/mobile/Containers/Data/Application/X"), jobId: "j1")
        XCTAssertEqual(paths.job.path, "/var/mobile/Containers/Data/Application/X/Documents/jobs/j1/job.json")
        XCTAssertEqual(paths.done.lastPathComponent, "DONE")
        XCTAssertEqual(paths.resolve("Documents/models/a.mlpackage").path,
                       "/var/mobile/Containers/Data/Application/X/Documents/models/a.mlpackage")
    }

    func testHeartbeatKeepsChangingStatusJSON() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("harness-hb-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent("status.json")
        let heartbeat = Heartbeat(url: url, interval: 0.05)
        heartbeat.update("timed", 3, 10)
        Thread.sleep(forTimeInterval: 0.3)
        heartbeat.stop()
        let status = try JSONDecoder().decode(StatusDoc.self, from: Data(contentsOf: url))
        XCTAssertEqual(status.phase, "timed")
        XCTAssertEqual(status.done, 3)
        XCTAssertGreaterThan(status.seq, 2)
    }

    func testFinishWritesResultBeforeDone() throws {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("harness-home-\(UUID().uuidString)")
        let paths = JobPaths(home: home, jobId: "j2")
        try FileManager.default.createDirectory(at: paths.jobDir, withIntermediateDirectories: true)
        try finish(JobResult(job_id: "j2"), paths: paths)
        XCTAssertEqual(try String(contentsOf: paths.done, encoding: .utf8), "0")
        XCTAssertEqual(try ProtocolCoding.decoder().decode(JobResult.self, from: Data(contentsOf: paths.result)).job_id, "j2")
    }

    #if canImport(CoreML)
    /// The package hash agrees with the host's (tests/data/ios/tree_hash.json, from harness.devices.ios.tree_sha256).
    func testTreeHashMatchesTheHost() throws {
        struct Case: Decodable { let files: [String: String]; let sha256: String }
        let c = try JSONDecoder().decode(Case.self, from: Fixtures.data("tree_hash.json"))
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("harness-tree-\(UUID().uuidString).mlpackage")
        for (relative, text) in c.files {
            let url = root.appendingPathComponent(relative)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(text.utf8).write(to: url)
        }
        XCTAssertEqual(try treeSHA256(root), c.sha256)
    }
    #endif
}
