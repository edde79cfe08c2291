#if canImport(Darwin)
import Darwin
import Foundation

// Clocks and device state on Apple platforms: mach_absolute_time for every timed span,
// task_vm_info's phys_footprint (what iOS's memory limit counts) and ProcessInfo's thermal state.

public enum MachClock {
    private static let timebase: mach_timebase_info_data_t = {
        var info = mach_timebase_info_data_t()
        mach_timebase_info(&info)
        return info
    }()

    public static func now() -> UInt64 { mach_absolute_time() }

    /// Milliseconds between two `now()` readings.
    public static func ms(_ start: UInt64, _ end: UInt64) -> Double {
        Double(end &- start) * Double(timebase.numer) / Double(timebase.denom) / 1_000_000.0
    }
}

public struct Footprint {
    public let current: Int
    public let peak: Int
}

/// phys_footprint now and its peak over the process's life (task_vm_info).
public func physFootprint() -> Footprint? {
    var info = task_vm_info_data_t()
    var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
    let kr = withUnsafeMutablePointer(to: &info) { pointer in
        pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
            task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
        }
    }
    guard kr == KERN_SUCCESS else { return nil }
    return Footprint(current: Int(info.phys_footprint), peak: Int(info.ledger_phys_footprint_peak))
}

public func thermalStateName(_ state: ProcessInfo.ThermalState = ProcessInfo.processInfo.thermalState) -> String {
    switch state {
    case .nominal: return "nominal"
    case .fair: return "fair"
    case .serious: return "serious"
    case .critical: return "critical"
    @unknown default: return "unknown"
    }
}

/// The hardware model, e.g. "iPhone15,3".
public func machineModel() -> String {
    var info = utsname()
    uname(&info)
    return withUnsafeBytes(of: &info.machine) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

/// What the result records as device_state_before / device_state_after.
public func deviceState() -> [String: JSONValue] {
    let info = ProcessInfo.processInfo
    var state: [String: JSONValue] = [
        "thermal_state": .string(thermalStateName(info.thermalState)),
        "low_power_mode": .bool(info.isLowPowerModeEnabled),
        "physical_memory_bytes": .int(Int(info.physicalMemory)),
        "uptime_s": .double(info.systemUptime),
    ]
    if let footprint = physFootprint() {
        state["phys_footprint_bytes"] = .int(footprint.current)
        state["phys_footprint_peak_bytes"] = .int(footprint.peak)
    }
    return state
}
#endif
