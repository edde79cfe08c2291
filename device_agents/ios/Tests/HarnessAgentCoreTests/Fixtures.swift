import Foundation

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

    /// A JSON document as Foundation objects, for comparisons that ignore whitespace and key order.
    static func object(_ data: Data) throws -> NSObject {
        try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) as! NSObject
    }
}
