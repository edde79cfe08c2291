import XCTest
@testable import HarnessAgentCore

/// The Swift schedulers against diffusers (tests/data/ios/scheduler_reference.json, written by
/// tests/data/ios/make_fixtures.py from the host's own schedulers).
final class SchedulerTests: XCTestCase {
    struct Reference: Decodable {
        struct Run: Decodable {
            let timesteps: [Double]
            let sigmas: [Double]
            let init_noise_sigma: Double
            let noise: [Float]
            let model_outputs: [[Float]]
            let scaled_inputs: [[Float]]
            let samples: [[Float]]
        }
        let steps: Int
        let schedulers: [String: Run]
    }

    func close(_ a: Double, _ b: Double, rel: Double = 2e-3) -> Bool {
        abs(a - b) <= rel * (abs(b) + 1e-3)
    }

    func replay(_ name: String) throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Fixtures.data("scheduler_reference.json"))
        let run = try XCTUnwrap(reference.schedulers[name])
        let scheduler = try makeScheduler(name: name, steps: reference.steps)
        XCTAssertEqual(scheduler.timesteps.count, run.timesteps.count)
        for (mine, theirs) in zip(scheduler.timesteps, run.timesteps) {
            XCTAssertEqual(mine, theirs, accuracy: 1e-3, "\(name) timesteps")
        }
        for (mine, theirs) in zip(scheduler.sigmas, run.sigmas) {
            XCTAssertTrue(close(mine, theirs, rel: 1e-4), "\(name) sigma \(mine) vs \(theirs)")
        }
        XCTAssertTrue(close(scheduler.initNoiseSigma, run.init_noise_sigma, rel: 1e-4))
        var sample = run.noise.map { $0 * Float(scheduler.initNoiseSigma) }
        for i in 0..<reference.steps {
            let scaled = scheduler.scaleModelInput(sample, stepIndex: i)
            for (mine, theirs) in zip(scaled, run.scaled_inputs[i]) {
                XCTAssertTrue(close(Double(mine), Double(theirs)), "\(name) step \(i) scaled input")
            }
            sample = scheduler.step(modelOutput: run.model_outputs[i], sample: sample)
            for (mine, theirs) in zip(sample, run.samples[i]) {
                XCTAssertTrue(close(Double(mine), Double(theirs)), "\(name) step \(i): \(mine) vs \(theirs)")
            }
        }
    }

    func testDPMSolverPlusPlus2MMatchesDiffusers() throws { try replay("dpmsolver++") }

    func testEulerMatchesDiffusers() throws { try replay("euler") }

    func testUnknownSchedulerIsAnInputError() {
        XCTAssertThrowsError(try makeScheduler(name: "pndm", steps: 20)) { error in
            XCTAssertEqual((error as? AgentFailure)?.kind, "input")
        }
    }

    func testSeededNormalIsDeterministicAndStandard() {
        var a = SeededNormal(seed: 7), b = SeededNormal(seed: 7)
        let xs = a.array(count: 20_000)
        let ys = b.array(count: 20_000)
        XCTAssertEqual(xs, ys)
        let mean = xs.reduce(0, +) / Float(xs.count)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(xs.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(variance, 1, accuracy: 0.05)
    }
}
