#if canImport(CoreML)
import CoreML
import CryptoKit
import Foundation

// One job on the phone: read job.json, compile the .mlpackage (cached by hash), load it with the
// requested compute units, run the workload, write result.json and DONE. Runs on a background
// thread of the app (App/HarnessAgentApp.swift), which exits when `AgentMain.run` returns.

public enum AgentMain {
    public static let agentVersion = "1"

    /// Run the job named by the launch arguments / environment. Returns the exit code (0 ok).
    public static func run(home: URL, arguments: [String], environment: [String: String]) -> Int32 {
        guard let jobId = AgentLaunch.jobId(arguments: arguments, environment: environment) else {
            return 2  // opened by hand: there is no job
        }
        let paths = JobPaths(home: home, jobId: jobId)
        var result = JobResult(job_id: jobId)
        result.started_at = Date().timeIntervalSince1970
        result.timing_method = "mach_absolute_time"
        result.versions = versions()
        let spec: JobSpec
        do {
            spec = try ProtocolCoding.decodeSpec(Data(contentsOf: paths.job))
        } catch {
            result.fail(kind: "input", message: "cannot read \(paths.job.lastPathComponent) of job \(jobId): \(error)")
            result.ended_at = Date().timeIntervalSince1970
            try? finish(result, paths: paths)
            return 1
        }
        let heartbeat = Heartbeat(url: paths.status, interval: spec.options.extra["heartbeat_s"]?.doubleValue ?? 1.0)
        result.device_state_before = deviceState()
        do {
            let runner = JobRunner(spec: spec, paths: paths, heartbeat: heartbeat)
            switch spec.workload {
            case "unet_iteration": try runner.runUNetIteration(&result)
            case "e2e": try runner.runE2E(&result)
            default:
                throw AgentFailure.input("workload \(spec.workload) is not implemented by the iOS agent; "
                                         + "known: unet_iteration, e2e")
            }
        } catch let failure as AgentFailure {
            result.fail(kind: failure.kind, message: failure.description)
        } catch {
            result.fail(kind: "crash", message: "Core ML: \(error.localizedDescription)", detail: "\(error)")
        }
        result.device_state_after = deviceState()
        if let footprint = physFootprint() {
            result.memory.peak_rss_bytes = footprint.peak
            result.extra["peak_rss_note"] = .string("phys_footprint peak (task_vm_info.ledger_phys_footprint_peak)")
        }
        result.ended_at = Date().timeIntervalSince1970
        heartbeat.stop()
        do {
            try finish(result, paths: paths)
        } catch {
            return 1
        }
        return result.status == "ok" ? 0 : 1
    }

    static func versions() -> [String: String] {
        let info = ProcessInfo.processInfo
        let bundle = Bundle.main.infoDictionary ?? [:]
        return [
            "agent": agentVersion,
            "app_build": bundle["CFBundleVersion"] as? String ?? "",
            "os": info.operatingSystemVersionString,
            "model": machineModel(),
        ]
    }
}

public func computeUnits(named name: String?) throws -> MLComputeUnits {
    switch name ?? "cpuAndGPU" {
    case "cpuAndGPU": return .cpuAndGPU
    case "all": return .all
    case "cpuOnly": return .cpuOnly
    case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
    default:
        throw AgentFailure.input("compute units \(name ?? "") are not Core ML's; use cpuAndGPU, all, cpuOnly "
                                 + "or cpuAndNeuralEngine")
    }
}

// ------------------------------------------------------------------------------------ models

func fileSHA256(_ url: URL) throws -> String {
    let handle = try FileHandle(forReadingFrom: url)
    defer { try? handle.close() }
    var hasher = SHA256()
    while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
        hasher.update(data: chunk)
    }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

func regularFiles(under root: URL) throws -> [(relative: String, url: URL)] {
    let fm = FileManager.default
    guard let subpaths = fm.subpaths(atPath: root.path) else {
        throw AgentFailure.input("cannot list \(root.path)")
    }
    var files: [(relative: String, url: URL)] = []
    for relative in subpaths {
        let url = root.appendingPathComponent(relative)
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue {
            files.append((relative, url))
        }
    }
    return files.sorted { $0.relative < $1.relative }
}

/// The host's hash of a package (harness.devices.ios.tree_sha256): SHA-256 over one
/// "relative/path\0<file sha256>\n" line per file, in path order.
public func treeSHA256(_ root: URL) throws -> String {
    var hasher = SHA256()
    for file in try regularFiles(under: root) {
        let digest = try fileSHA256(file.url)
        hasher.update(data: Data("\(file.relative)\u{0}\(digest)\n".utf8))
    }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

/// The package's hash: the `.sha256` marker the host wrote beside it, else computed.
func packageHash(_ package: URL) throws -> String {
    let marker = package.deletingLastPathComponent().appendingPathComponent(package.lastPathComponent + ".sha256")
    if let text = try? String(contentsOf: marker, encoding: .utf8) {
        let hash = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if hash.count >= 16 { return hash }
    }
    return try treeSHA256(package)
}

struct LoadedModel {
    let model: MLModel
    let compileMs: Double
    let loadMs: Double
    let compileCached: Bool
    let weightBytes: Int
    let hash: String
}

/// Compile the package unless its compiled form is cached (by hash), then load it.
func loadModel(package: URL, cache: URL, units: MLComputeUnits) throws -> LoadedModel {
    let fm = FileManager.default
    guard fm.fileExists(atPath: package.appendingPathComponent("Manifest.json").path) else {
        throw AgentFailure.input("no .mlpackage at \(package.path) (no Manifest.json): the host pushes it before the launch")
    }
    let hash = try packageHash(package)
    let compiled = cache.appendingPathComponent("\(hash.prefix(16)).mlmodelc", isDirectory: true)
    let cached = fm.fileExists(atPath: compiled.path)
    var compileMs = 0.0
    if !cached {
        try fm.createDirectory(at: cache, withIntermediateDirectories: true)
        let t0 = MachClock.now()
        let temporary = try MLModel.compileModel(at: package)
        compileMs = MachClock.ms(t0, MachClock.now())
        try? fm.removeItem(at: compiled)
        try fm.moveItem(at: temporary, to: compiled)
    }
    let config = MLModelConfiguration()
    config.computeUnits = units
    let t1 = MachClock.now()
    let model = try MLModel(contentsOf: compiled, configuration: config)
    let loadMs = MachClock.ms(t1, MachClock.now())
    let weights = try regularFiles(under: package).filter { $0.relative.contains("/weights/") }
    let weightBytes = weights.reduce(0) { total, file in
        total + ((try? file.url.resourceValues(forKeys: [.fileSizeKey]).fileSize) ?? 0)
    }
    return LoadedModel(model: model, compileMs: compileMs, loadMs: loadMs, compileCached: cached,
                       weightBytes: weightBytes, hash: hash)
}

// ------------------------------------------------------------------------------------ tensors

struct InputSpec {
    let name: String
    let shape: [Int]
    let dataType: MLMultiArrayDataType

    var count: Int { shape.reduce(1, *) }
}

func multiArrayInputs(_ model: MLModel) throws -> [InputSpec] {
    let inputs = model.modelDescription.inputDescriptionsByName
    return try inputs.keys.sorted().map { name in
        guard let constraint = inputs[name]?.multiArrayConstraint else {
            throw AgentFailure.input("model input \(name) is not a multi-array; the agent feeds tensors only")
        }
        let shape = constraint.shape.map { $0.intValue }
        return InputSpec(name: name, shape: shape.isEmpty ? [1] : shape, dataType: constraint.dataType)
    }
}

func dataTypeName(_ type: MLMultiArrayDataType) -> String {
    switch type {
    case .float32: return "float32"
    case .double: return "float64"
    case .int32: return "int32"
    case .float16: return "float16"
    @unknown default: return "other"
    }
}

/// A multi-array of `shape` and `dataType` holding `values` (repeated when shorter).
func makeArray(_ input: InputSpec, values: [Float]) throws -> MLMultiArray {
    let array = try MLMultiArray(shape: input.shape.map { NSNumber(value: $0) }, dataType: input.dataType)
    let n = array.count
    switch input.dataType {
    case .float32:
        let p = array.dataPointer.bindMemory(to: Float.self, capacity: n)
        for i in 0..<n { p[i] = values[i % values.count] }
    case .double:
        let p = array.dataPointer.bindMemory(to: Double.self, capacity: n)
        for i in 0..<n { p[i] = Double(values[i % values.count]) }
    case .int32:
        let p = array.dataPointer.bindMemory(to: Int32.self, capacity: n)
        for i in 0..<n { p[i] = Int32(values[i % values.count]) }
    default:  // float16 and others go through NSNumber (Float16 does not exist on Intel Macs)
        for i in 0..<n { array[i] = NSNumber(value: values[i % values.count]) }
    }
    return array
}

/// Any multi-array's values as Float, in logical (row-major) order whatever its strides.
func floats(_ array: MLMultiArray) -> [Float] {
    if array.dataType == .float32 {
        return MLShapedArray<Float>(array).scalars
    }
    return MLShapedArray<Float>(converting: array).scalars
}

func firstOutput(_ features: MLFeatureProvider, preferring names: [String] = []) throws -> MLMultiArray {
    for name in names + features.featureNames.sorted() {
        if let array = features.featureValue(for: name)?.multiArrayValue {
            return array
        }
    }
    throw AgentFailure.crash("the model returned no multi-array output")
}

// ------------------------------------------------------------------------------------ the runner

final class JobRunner {
    let spec: JobSpec
    let paths: JobPaths
    let heartbeat: Heartbeat

    init(spec: JobSpec, paths: JobPaths, heartbeat: Heartbeat) {
        self.spec = spec
        self.paths = paths
        self.heartbeat = heartbeat
    }

    func modelPath(_ component: String) throws -> URL {
        let models = spec.options.extra["models"]?.objectValue ?? [:]
        let relative = models[component]?.stringValue ?? (component == "unet" ? spec.artifact : nil)
        guard let relative else {
            throw AgentFailure.input("job.json names no \(component) model (options.extra.models.\(component))")
        }
        return paths.resolve(relative)
    }

    func load(_ component: String, _ result: inout JobResult) throws -> LoadedModel {
        heartbeat.update("compile", 0, 1)
        let units = try computeUnits(named: spec.options.compute_units)
        let loaded = try loadModel(package: try modelPath(component), cache: paths.compiledCache, units: units)
        heartbeat.update("load", 1, 1)
        var info = result.extra["models"]?.objectValue ?? [:]
        info[component] = .object([
            "compile_ms": .double(loaded.compileMs), "load_ms": .double(loaded.loadMs),
            "compile_cached": .bool(loaded.compileCached), "sha256": .string(loaded.hash),
            "weight_bytes": .int(loaded.weightBytes),
        ])
        result.extra["models"] = .object(info)
        result.extra["compute_units"] = .string(spec.options.compute_units ?? "cpuAndGPU")
        return loaded
    }

    /// Warm-ups, then timed runs until `iterations` and `min_seconds` are met (or `max_seconds`),
    /// as the host's measure_loop. Returns (warm-up ms, timed ms).
    func measure(_ run: () throws -> Double) throws -> ([Double], [Double]) {
        let m = spec.measure
        var warmup: [Double] = []
        for i in 0..<max(0, m.warmup_runs) {
            heartbeat.update("warmup", i, m.warmup_runs)
            warmup.append(try run())
        }
        var samples: [Double] = []
        var totalS = 0.0
        while (samples.count < m.iterations || totalS < m.min_seconds) && (totalS < m.max_seconds || samples.isEmpty) {
            heartbeat.update("timed", samples.count, m.iterations)
            let ms = try run()
            samples.append(ms)
            totalS += ms / 1000.0
        }
        heartbeat.update("timed", samples.count, samples.count)
        return (warmup, samples)
    }

    // ---- one UNet iteration on random inputs

    func runUNetIteration(_ result: inout JobResult) throws {
        let unet = try load("unet", &result)
        var rng = SeededNormal(seed: spec.model.seed)
        var features: [String: Any] = [:]
        var described: [JSONValue] = []
        for input in try multiArrayInputs(unet.model) {
            let values: [Float]
            if input.name.contains("timestep") || input.shape.count <= 1 {
                values = [981]  // the first step of a 20-step schedule, as the host's example inputs
            } else if input.dataType == .int32 {
                values = [1]
            } else {
                values = rng.array(count: input.count)
            }
            features[input.name] = try makeArray(input, values: values)
            described.append(.object(["name": .string(input.name), "shape": .array(input.shape.map { .int($0) }),
                                      "dtype": .string(dataTypeName(input.dataType))]))
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let (warmup, samples) = try measure {
            let t0 = MachClock.now()
            _ = try unet.model.prediction(from: provider)
            return MachClock.ms(t0, MachClock.now())
        }
        result.warmup_ms = warmup
        result.samples_ms = samples
        result.first_run_ms = (warmup.first ?? samples.first)
        result.init_ms = unet.compileMs + unet.loadMs
        result.memory.weight_bytes = unet.weightBytes
        result.extra["inputs"] = .array(described)
        result.extra["compile_ms"] = .double(unet.compileMs)
        result.extra["load_ms"] = .double(unet.loadMs)
        result.extra["compile_cached"] = .bool(unet.compileCached)
    }

    // ---- end-to-end generation: text encoder, `steps` guided UNet steps, VAE decoder

    func runE2E(_ result: inout JobResult) throws {
        let args = spec.workload_args
        let steps = args["steps"]?.intValue ?? 20
        let schedulerName = args["scheduler"]?.stringValue ?? "dpmsolver++"
        let guidance = args["guidance_scale"]?.doubleValue ?? 7.5
        let seed = args["seed"]?.intValue ?? spec.model.seed
        _ = try makeScheduler(name: schedulerName, steps: steps)  // an unknown scheduler fails before loading
        guard let rows = spec.options.extra["token_ids"]?.arrayValue, rows.count == 2 else {
            throw AgentFailure.input("job.json has no options.extra.token_ids ([unconditional, conditional] ids)")
        }
        let tokenIds: [[Float]] = rows.map { ($0.arrayValue ?? []).map { Float($0.intValue ?? 0) } }

        let textEncoder = try load("text_encoder", &result)
        let unet = try load("unet", &result)
        let decoder = try load("vae_decoder", &result)
        let teInputs = try multiArrayInputs(textEncoder.model)
        let unetInputs = try multiArrayInputs(unet.model)
        let decInputs = try multiArrayInputs(decoder.model)
        guard teInputs.count == 1, decInputs.count == 1 else {
            throw AgentFailure.input("the text encoder and the VAE decoder must take one tensor each")
        }
        guard let sampleIn = unetInputs.first(where: { $0.shape.count == 4 }),
              let contextIn = unetInputs.first(where: { $0.shape.count == 3 }),
              let timeIn = unetInputs.first(where: { $0.shape.count <= 1 }) else {
            throw AgentFailure.input("the UNet must take a sample [B,C,H,W], a timestep and a context [B,T,D]")
        }
        let batch = sampleIn.shape[0]
        guard batch == 1 || batch == 2 else { throw AgentFailure.input("the UNet's batch must be 1 or 2, got \(batch)") }
        let latentCount = sampleIn.count / batch

        var images: [[String: Double]] = []
        var unetMs: [[Double]] = []
        var schedulerMs: [[Double]] = []

        func oneImage() throws -> Double {
            let start = MachClock.now()
            let scheduler = try makeScheduler(name: schedulerName, steps: steps)
            var rng = SeededNormal(seed: seed)
            var latents = rng.array(count: latentCount).map { $0 * Float(scheduler.initNoiseSigma) }
            let prepared = MachClock.now()

            // Text encoder: [unconditional; conditional] -> context [2, T, D]
            var context: [Float] = []
            if teInputs[0].shape.first == 2 {
                let ids = try makeArray(teInputs[0], values: tokenIds[0] + tokenIds[1])
                let out = try textEncoder.model.prediction(from: MLDictionaryFeatureProvider(dictionary: [teInputs[0].name: ids]))
                context = floats(try firstOutput(out, preferring: ["last_hidden_state"]))
            } else {
                for row in tokenIds {
                    let ids = try makeArray(teInputs[0], values: row)
                    let out = try textEncoder.model.prediction(from: MLDictionaryFeatureProvider(dictionary: [teInputs[0].name: ids]))
                    context += floats(try firstOutput(out, preferring: ["last_hidden_state"]))
                }
            }
            let encoded = MachClock.now()

            var stepUNet: [Double] = []
            var stepScheduler: [Double] = []
            for (i, t) in scheduler.timesteps.enumerated() {
                heartbeat.update("step", i, steps)
                let a = MachClock.now()
                let scaled = scheduler.scaleModelInput(latents, stepIndex: i)
                var noise: [Float] = []
                var unetSpan = 0.0
                let halves = batch == 2 ? [scaled + scaled] : [scaled, scaled]
                let contexts = batch == 2 ? [context] : [Array(context[0..<(context.count / 2)]),
                                                         Array(context[(context.count / 2)...])]
                var schedulerSpan = MachClock.ms(a, MachClock.now())
                for (sample, ctx) in zip(halves, contexts) {
                    let p0 = MachClock.now()
                    let features = try MLDictionaryFeatureProvider(dictionary: [
                        sampleIn.name: try makeArray(sampleIn, values: sample),
                        timeIn.name: try makeArray(timeIn, values: [Float(t)]),
                        contextIn.name: try makeArray(contextIn, values: ctx),
                    ])
                    let p1 = MachClock.now()
                    let out = try unet.model.prediction(from: features)
                    let p2 = MachClock.now()
                    noise += floats(try firstOutput(out))
                    schedulerSpan += MachClock.ms(p0, p1) + MachClock.ms(p2, MachClock.now())
                    unetSpan += MachClock.ms(p1, p2)
                }
                let c = MachClock.now()
                var guided = [Float](repeating: 0, count: latentCount)
                for k in 0..<latentCount {
                    let uncond = noise[k], cond = noise[latentCount + k]
                    guided[k] = uncond + Float(guidance) * (cond - uncond)
                }
                latents = scheduler.step(modelOutput: guided, sample: latents)
                schedulerSpan += MachClock.ms(c, MachClock.now())
                stepUNet.append(unetSpan)
                stepScheduler.append(schedulerSpan)
            }
            let denoised = MachClock.now()

            let decIn = try makeArray(decInputs[0], values: latents)
            let image = try decoder.model.prediction(from: MLDictionaryFeatureProvider(dictionary: [decInputs[0].name: decIn]))
            let decoded = MachClock.now()
            // To 8-bit RGB as the host does: (x / 2 + 0.5).clamp(0, 1) * 255, rounded.
            let pixels = floats(try firstOutput(image)).map { UInt8((min(max($0 / 2 + 0.5, 0), 1) * 255).rounded()) }
            let end = MachClock.now()

            let parts: [String: Double] = [
                "prepare_ms": MachClock.ms(start, prepared), "text_encoder_ms": MachClock.ms(prepared, encoded),
                "decoder_ms": MachClock.ms(denoised, decoded), "postprocess_ms": MachClock.ms(decoded, end),
                "total_ms": MachClock.ms(start, end), "pixels": Double(pixels.count),
            ]
            images.append(parts)
            unetMs.append(stepUNet)
            schedulerMs.append(stepScheduler)
            return parts["total_ms"]!
        }

        let (warmup, samples) = try measure(oneImage)
        let timed = images.suffix(samples.count)
        let timedUNet = Array(unetMs.suffix(samples.count))
        let timedScheduler = Array(schedulerMs.suffix(samples.count))
        func column(_ key: String) -> JSONValue { JSONValue(timed.map { $0[key] ?? 0 }) }
        var gaps: [Double] = []
        for (image, (u, s)) in zip(timed, zip(timedUNet, timedScheduler)) {
            let parts = ["prepare_ms", "text_encoder_ms", "decoder_ms", "postprocess_ms"].map { image[$0] ?? 0 }
            gaps.append(max(0, (image["total_ms"] ?? 0) - parts.reduce(0, +) - u.reduce(0, +) - s.reduce(0, +)))
        }
        result.components_ms = [
            "method": .string("measured"), "steps": .int(steps), "unet_evals": .int(timedUNet.first?.count ?? 0),
            "text_encoder_ms": column("text_encoder_ms"), "unet_ms": JSONValue(timedUNet),
            "scheduler_ms": JSONValue(timedScheduler), "decoder_ms": column("decoder_ms"),
            "prepare_ms": column("prepare_ms"), "postprocess_ms": column("postprocess_ms"),
            "total_ms": column("total_ms"), "gap_ms": JSONValue(gaps),
        ]
        result.warmup_ms = warmup
        result.samples_ms = samples
        result.first_run_ms = warmup.first ?? samples.first
        result.init_ms = [textEncoder, unet, decoder].reduce(0.0) { $0 + $1.compileMs + $1.loadMs }
        result.memory.weight_bytes = textEncoder.weightBytes + unet.weightBytes + decoder.weightBytes
        result.extra["scheduler"] = .string(schedulerName)
        result.extra["steps"] = .int(steps)
        result.extra["guidance_scale"] = .double(guidance)
        result.extra["seed"] = .int(seed)
        result.extra["prompt_tokens"] = .string("host token ids")
        result.extra["noise_note"] = .string("initial noise from the agent's seeded generator (SplitMix64 + "
                                             + "Box-Muller), not torch's: the image differs from the host's")
    }
}
#endif
