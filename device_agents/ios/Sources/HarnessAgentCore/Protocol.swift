import Foundation

// JobSpec and JobResult exactly as harness/protocol.py defines them (schema_version 1).
//
// Property names are the JSON keys (snake_case) on purpose: no key coding strategy, because
// `.convertToSnakeCase` / `.convertFromSnakeCase` would also rewrite the keys of the free-form
// dictionaries (flags, extra, components_ms). tests/test_ios.py parses the structs below with a
// regular expression and checks every field name and type against the pydantic models, so keep
// one `public var name: Type` per line.
//
// Decoding: the host writes every field (pydantic's model_dump_json), so the non-optional fields
// are always present. Encoding: optionals that are nil are left out; the host fills the defaults.

public let schemaVersion = 1

/// Any JSON value (the `dict[str, Any]` fields of the protocol).
public enum JSONValue: Codable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else if let value = try? container.decode([String: JSONValue].self) {
            self = .object(value)
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a JSON value")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        default: return nil
        }
    }

    public var intValue: Int? {
        switch self {
        case .int(let value): return value
        case .double(let value): return value.rounded() == value ? Int(value) : nil
        default: return nil
        }
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }
}

extension JSONValue {
    public init(_ values: [Double]) { self = .array(values.map { .double($0) }) }
    public init(_ values: [[Double]]) { self = .array(values.map { JSONValue($0) }) }
}

public struct ModelRef: Codable, Equatable {
    public var name: String
    // unet_config / factory (harness.models.loaders): models built on the host, nil for built-ins.
    public var unet_config: String?
    public var factory: String?
    public var weights: String?
    public var seed: Int
}

public struct RuntimeOptions: Codable, Equatable {
    public var runtime: String
    public var dtype: String
    public var threads: Int
    public var accelerator: String
    public var compute_units: String?
    public var extra: [String: JSONValue]
}

public struct MeasurePolicy: Codable, Equatable {
    public var warmup_runs: Int
    public var iterations: Int
    public var min_seconds: Double
    public var max_seconds: Double
    public var cooldown_seconds: Double
    public var timeout_seconds: Double
    // host torch passes ("memory", "op_times"); the iOS agent has none to skip
    public var passes: [String]
}

public struct CheckPolicy: Codable, Equatable {
    public var enabled: Bool
    public var rel_tolerance: Double
}

// axes: the sweep coordinates (suite field path -> value); {} when not swept.
public struct JobSpec: Codable, Equatable {
    public var schema_version: Int
    public var job_id: String
    public var run_id: String
    public var device: String
    public var workload: String
    public var model: ModelRef
    public var variant: String
    public var flags: [String: JSONValue]
    public var options: RuntimeOptions
    public var measure: MeasurePolicy
    public var check: CheckPolicy
    public var artifact: String?
    public var workload_args: [String: JSONValue]
    public var axes: [String: JSONValue]
}

public struct MemoryFigures: Codable, Equatable {
    public var weight_bytes: Int?
    public var tensor_bytes_measured: Int?
    public var tensor_measure_method: String?
    public var tensor_bytes_planned: Int?
    public var peak_rss_bytes: Int?
    public var gpu_bytes: Int?

    public init(weight_bytes: Int? = nil, peak_rss_bytes: Int? = nil) {
        self.weight_bytes = weight_bytes
        self.peak_rss_bytes = peak_rss_bytes
    }
}

public struct ReferenceCheck: Codable, Equatable {
    public var max_abs_error: Double
    public var rel_error: Double
    public var rel_tolerance: Double
    public var passed: Bool
}

public struct JobError: Codable, Equatable {
    public var kind: String
    public var message: String
    public var detail: String?
    public var transient: Bool

    public init(kind: String, message: String, detail: String? = nil, transient: Bool = false) {
        self.kind = kind
        self.message = message
        self.detail = detail
        self.transient = transient
    }
}

public struct JobResult: Codable, Equatable {
    public var schema_version: Int
    public var job_id: String
    public var status: String
    public var samples_ms: [Double]
    public var warmup_ms: [Double]
    public var init_ms: Double?
    public var first_run_ms: Double?
    public var timing_method: String?
    public var memory: MemoryFigures
    public var check: ReferenceCheck?
    public var device_state_before: [String: JSONValue]
    public var device_state_after: [String: JSONValue]
    public var op_times_ms: [String: Double]
    public var components_ms: [String: JSONValue]
    public var versions: [String: String]
    public var error: JobError?
    public var started_at: Double?
    public var ended_at: Double?
    public var extra: [String: JSONValue]
    /// What in the measurement was a stand-in (harness.standin); the app on a real iPhone: none.
    public var stand_in: [String]

    /// An empty result of `job_id`, status "ok" until something fails.
    public init(job_id: String) {
        schema_version = schemaVersion
        self.job_id = job_id
        status = "ok"
        samples_ms = []
        warmup_ms = []
        memory = MemoryFigures()
        device_state_before = [:]
        device_state_after = [:]
        op_times_ms = [:]
        components_ms = [:]
        versions = [:]
        extra = [:]
        stand_in = []
    }

    /// Mark the result failed with an error kind the host knows (input, crash, timeout, ...).
    public mutating func fail(kind: String, message: String, detail: String? = nil) {
        status = "failed"
        error = JobError(kind: kind, message: message, detail: detail)
    }
}

/// The encoder and decoder of every protocol document.
public enum ProtocolCoding {
    /// Pretty, sorted keys and unescaped slashes: tests/data/ios/result.json is this encoder's output.
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        JSONDecoder()
    }

    /// Decode a JobSpec, refusing a schema version this agent does not speak.
    public static func decodeSpec(_ data: Data) throws -> JobSpec {
        let spec = try decoder().decode(JobSpec.self, from: data)
        guard spec.schema_version == schemaVersion else {
            throw AgentFailure.input("job.json has schema_version \(spec.schema_version); this agent speaks "
                                     + "\(schemaVersion): rebuild the agent from the harness checkout that runs it")
        }
        return spec
    }
}

/// A failure that becomes the JobResult's error (kind as harness/protocol.py lists them).
public enum AgentFailure: Error, CustomStringConvertible {
    case input(String)
    case crash(String)
    case timeout(String)

    public var kind: String {
        switch self {
        case .input: return "input"
        case .crash: return "crash"
        case .timeout: return "timeout"
        }
    }

    public var description: String {
        switch self {
        case .input(let message), .crash(let message), .timeout(let message): return message
        }
    }
}
