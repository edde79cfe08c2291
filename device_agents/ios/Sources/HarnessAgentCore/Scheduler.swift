import Foundation

// The host's schedulers (harness/models/pipeline.py, built by diffusers from SD 1.4's scheduler
// config) for the native 20-step loop: DPM-Solver++ (2M), the host's default, and Euler. Both are
// written against diffusers' DPMSolverMultistepScheduler and EulerDiscreteScheduler with that
// config (scaled_linear betas 0.00085...0.012, 1000 training steps, timestep_spacing "linspace",
// final_sigmas_type "zero", epsilon prediction, no thresholding, no Karras sigmas).
// Tests/HarnessAgentCoreTests/SchedulerTests.swift replays tests/data/ios/scheduler_reference.json,
// which tests/data/ios/make_fixtures.py writes from diffusers itself.

/// SD 1.4's training noise schedule.
public struct NoiseSchedule {
    public let alphasCumprod: [Double]

    public init(betaStart: Double = 0.00085, betaEnd: Double = 0.012, trainSteps: Int = 1000) {
        // diffusers: betas = linspace(sqrt(beta_start), sqrt(beta_end), n) ** 2 ("scaled_linear")
        let lo = betaStart.squareRoot(), hi = betaEnd.squareRoot()
        var product = 1.0
        var out = [Double]()
        out.reserveCapacity(trainSteps)
        for i in 0..<trainSteps {
            let root = lo + (hi - lo) * Double(i) / Double(trainSteps - 1)
            product *= 1.0 - root * root
            out.append(product)
        }
        alphasCumprod = out
    }

    public var trainSteps: Int { alphasCumprod.count }

    /// sigma(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t)) at each training step.
    public var sigmas: [Double] { alphasCumprod.map { ((1.0 - $0) / $0).squareRoot() } }

    /// Linear interpolation of the training sigmas at a fractional timestep (numpy.interp).
    public func sigma(at t: Double) -> Double {
        let s = sigmas
        if t <= 0 { return s[0] }
        if t >= Double(s.count - 1) { return s[s.count - 1] }
        let i = Int(t.rounded(.down))
        let frac = t - Double(i)
        return s[i] + (s[i + 1] - s[i]) * frac
    }
}

/// One scheduler of the generation loop. Latents are flat Float arrays (NCHW order).
public protocol DiffusionScheduler: AnyObject {
    var name: String { get }
    /// The UNet's timestep input at each step.
    var timesteps: [Double] { get }
    /// Sigma at each step, plus the final 0.
    var sigmas: [Double] { get }
    /// What the initial N(0, 1) noise is multiplied by.
    var initNoiseSigma: Double { get }
    func scaleModelInput(_ sample: [Float], stepIndex: Int) -> [Float]
    /// The next latents from the guided noise prediction at the current step (steps advance by one).
    func step(modelOutput: [Float], sample: [Float]) -> [Float]
}

/// The scheduler the job asks for: "dpmsolver++" (default) or "euler" (pipeline.SCHEDULERS names).
public func makeScheduler(name: String, steps: Int, schedule: NoiseSchedule = NoiseSchedule()) throws -> DiffusionScheduler {
    guard steps >= 1 else { throw AgentFailure.input("workload_args.steps must be >= 1, got \(steps)") }
    switch name {
    case "dpmsolver++": return DPMSolverMultistep(steps: steps, schedule: schedule)
    case "euler": return EulerDiscrete(steps: steps, schedule: schedule)
    default:
        throw AgentFailure.input("scheduler \(name) is not implemented in the iOS agent; use dpmsolver++ "
                                 + "(the host's default) or euler")
    }
}

/// diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
/// solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero").
public final class DPMSolverMultistep: DiffusionScheduler {
    public let name = "dpmsolver++"
    public let timesteps: [Double]
    public let sigmas: [Double]
    public let initNoiseSigma = 1.0
    private var stepIndex = 0
    private var previousX0: [Float]?

    public init(steps: Int, schedule: NoiseSchedule = NoiseSchedule()) {
        // timestep_spacing "linspace": linspace(0, T - 1, steps + 1).round()[::-1][:-1]
        let last = Double(schedule.trainSteps - 1)
        let spacing = last / Double(steps)
        var ts = [Double]()
        for i in stride(from: steps, through: 1, by: -1) {
            ts.append(i == steps ? last : (Double(i) * spacing).rounded(.toNearestOrEven))
        }
        timesteps = ts
        let trainSigmas = schedule.sigmas
        sigmas = ts.map { trainSigmas[Int($0)] } + [0.0]
    }

    public func scaleModelInput(_ sample: [Float], stepIndex: Int) -> [Float] { sample }

    private static func alphaSigma(_ sigma: Double) -> (alpha: Double, sigma: Double) {
        let alpha = 1.0 / (sigma * sigma + 1.0).squareRoot()
        return (alpha, sigma * alpha)
    }

    public func step(modelOutput: [Float], sample: [Float]) -> [Float] {
        let i = stepIndex
        let (alphaS0, sigmaS0) = Self.alphaSigma(sigmas[i])
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[i + 1])
        // The data prediction x0 = (x - sigma * eps) / alpha.
        var x0 = [Float](repeating: 0, count: sample.count)
        for k in 0..<sample.count {
            x0[k] = Float((Double(sample[k]) - sigmaS0 * Double(modelOutput[k])) / alphaS0)
        }
        let lambdaT = log(alphaT) - log(sigmaT)  // +inf at the final sigma 0: exp(-h) is then 0
        let lambdaS0 = log(alphaS0) - log(sigmaS0)
        let h = lambdaT - lambdaS0
        let ratio = sigmaT / sigmaS0
        let coef = alphaT * (exp(-h) - 1.0)
        let finalStep = i == timesteps.count - 1  // lower_order_final: first order at the end
        var out = [Float](repeating: 0, count: sample.count)
        if let m1 = previousX0, !finalStep {
            let (alphaS1, sigmaS1) = Self.alphaSigma(sigmas[i - 1])
            let lambdaS1 = log(alphaS1) - log(sigmaS1)
            let r0 = (lambdaS0 - lambdaS1) / h
            for k in 0..<sample.count {
                let d0 = Double(x0[k])
                let d1 = (d0 - Double(m1[k])) / r0
                out[k] = Float(ratio * Double(sample[k]) - coef * d0 - 0.5 * coef * d1)
            }
        } else {
            for k in 0..<sample.count {
                out[k] = Float(ratio * Double(sample[k]) - coef * Double(x0[k]))
            }
        }
        previousX0 = x0
        stepIndex += 1
        return out
    }
}

/// diffusers' EulerDiscreteScheduler (epsilon prediction, s_churn 0, linear interpolation).
public final class EulerDiscrete: DiffusionScheduler {
    public let name = "euler"
    public let timesteps: [Double]
    public let sigmas: [Double]
    public let initNoiseSigma: Double
    private var stepIndex = 0

    public init(steps: Int, schedule: NoiseSchedule = NoiseSchedule()) {
        // timestep_spacing "linspace": linspace(0, T - 1, steps)[::-1], fractional timesteps
        let last = Double(schedule.trainSteps - 1)
        var ts = [Double]()
        for i in stride(from: steps - 1, through: 0, by: -1) {
            ts.append(steps == 1 ? 0 : (i == steps - 1 ? last : last * Double(i) / Double(steps - 1)))
        }
        timesteps = ts
        sigmas = ts.map { schedule.sigma(at: $0) } + [0.0]
        initNoiseSigma = sigmas.max() ?? 1.0  // "linspace" spacing: the largest sigma itself
    }

    public func scaleModelInput(_ sample: [Float], stepIndex: Int) -> [Float] {
        let scale = Float(1.0 / (sigmas[stepIndex] * sigmas[stepIndex] + 1.0).squareRoot())
        return sample.map { $0 * scale }
    }

    public func step(modelOutput: [Float], sample: [Float]) -> [Float] {
        let dt = Float(sigmas[stepIndex + 1] - sigmas[stepIndex])
        stepIndex += 1
        var out = [Float](repeating: 0, count: sample.count)
        for k in 0..<sample.count {
            out[k] = sample[k] + modelOutput[k] * dt  // derivative = eps for epsilon prediction
        }
        return out
    }
}

/// Seeded N(0, 1) numbers (SplitMix64 + Box-Muller): the agent's initial noise and random inputs.
/// Not torch's generator, so the phone's image differs from the host's for the same seed.
public struct SeededNormal {
    private var state: UInt64

    public init(seed: Int) { state = UInt64(bitPattern: Int64(seed)) &+ 0x9E37_79B9_7F4A_7C15 }

    private mutating func nextUInt64() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    private mutating func nextUniform() -> Double {
        Double((nextUInt64() >> 11) + 1) / Double(UInt64(1) << 53)
    }

    public mutating func next() -> Float {
        let u1 = nextUniform(), u2 = nextUniform()
        return Float((-2.0 * log(u1)).squareRoot() * cos(2.0 * Double.pi * u2))
    }

    public mutating func array(count: Int) -> [Float] {
        (0..<count).map { _ in next() }
    }
}
