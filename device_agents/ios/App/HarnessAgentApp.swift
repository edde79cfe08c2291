import HarnessAgentCore
import SwiftUI
import UIKit

// The agent app: launched by the harness (pymobiledevice3 ProcessControl.launch) with
// `--job-id ID`, it runs that job on a background thread, writes result.json and DONE into
// Documents/jobs/ID/ and exits. Opened by hand, it only says it is waiting.

@main
struct HarnessAgentApp: App {
    @StateObject private var agent = AgentState()

    var body: some Scene {
        WindowGroup {
            VStack(spacing: 12) {
                Text("Harness agent").font(.headline)
                Text(agent.line).font(.footnote).multilineTextAlignment(.center)
            }
            .padding()
        }
    }
}

final class AgentState: ObservableObject {
    @Published var line = "Waiting for a job from the harness (launch it with `harness run ... --device ios:UDID`)."

    init() {
        let info = ProcessInfo.processInfo
        guard let jobId = AgentLaunch.jobId(arguments: info.arguments, environment: info.environment) else { return }
        line = "Running job \(jobId). Keep the phone unlocked and this app in front."
        UIApplication.shared.isIdleTimerDisabled = true  // no auto-lock while a job runs
        let home = URL(fileURLWithPath: NSHomeDirectory(), isDirectory: true)
        // stderr (Swift's fatal errors, Core ML's messages) into the job's folder: the harness pulls it and
        // shows its last lines when the job fails (the host wrote job.json there, so the folder exists)
        if freopen(JobPaths(home: home, jobId: jobId).stderr.path, "a", stderr) != nil {
            setvbuf(stderr, nil, _IONBF, 0)
        }
        DispatchQueue.global(qos: .userInitiated).async {
            let code = AgentMain.run(home: home, arguments: info.arguments, environment: info.environment)
            DispatchQueue.main.async { exit(code) }
        }
    }
}
