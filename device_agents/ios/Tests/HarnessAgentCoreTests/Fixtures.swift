import Foundation
@testable import HarnessAgentCore

/// tests/data/ios/ of the harness checkout this package lies in.
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // HarnessAgentCoreTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // ios
        .deletingLastPathComponent()  // device_agents
        .deletingLastPathComponent()  // repository root
        .appendingPathComponent("tests/data/ios", isDirectory: true)

    static func data(_ name: String) throws -> Data {
        try Data(contentsOf: dir.appendingPathComponent(name))
    }

    /// A JSON document as a JSONValue tree, for comparisons that ignore whitespace and key order.
    static func object(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }
}
