"""The host: the machine the controller runs on, a device like the others.

Its agent (device_agents/host/agent.py) runs each job in a fresh subprocess, so memory is per job
and a crash is contained. The agent reads job.json and writes result.json in the job's workdir, and
prints `@@progress PHASE DONE TOTAL` lines that the controller turns into progress.
"""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from harness.allocator import AllocatorError, job_env
from harness.devices.base import Device, DeviceContext, DeviceUnavailableError, DeviceInfo, DeviceKind, ProgressFn
from harness.resources import agent_path
from harness.protocol import JobResult, JobSpec, ProtocolError, error_tail, parse_result, write_json_atomic

AGENT = agent_path("host", "agent.py")  # harness.resources: a checkout's device_agents/ or the wheel's


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" here
        pass
    return ""


class HostKind(DeviceKind):
    name = "host"

    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        gpu = _cuda_name()
        return [DeviceInfo(
            id="host", kind="host", state="ready", name=platform.node(), model=_cpu_name(),
            soc=f"{os.cpu_count()} cores", gpu=gpu or "none (CPU only)",
            os_version=f"{platform.system()} {platform.release()}",
            ram_bytes=psutil.virtual_memory().total,
            extra={"python": platform.python_version(), "accelerator": "cuda" if gpu else "cpu"},
        )]

    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        return HostDevice(info, ctx)


class HostDevice(Device):
    kind = "host"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        super().__init__(info, ctx)
        self._proc: subprocess.Popen | None = None
        try:
            job_env(dict(os.environ))  # a bad HARNESS_CPU_ALLOCATOR stops here, before any job
        except AllocatorError as exc:
            raise DeviceUnavailableError(f"host: {exc}") from None

    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        workdir.mkdir(parents=True, exist_ok=True)
        job_path, result_path = workdir / "job.json", workdir / "result.json"
        result_path.unlink(missing_ok=True)
        write_json_atomic(job_path, spec)
        if spec.measure.cooldown_seconds > 0:
            if progress:
                progress("cooldown", 0, 1)
            time.sleep(spec.measure.cooldown_seconds)
        cmd = [sys.executable, str(AGENT), str(job_path), str(result_path)]
        env = job_env(dict(os.environ, PYTHONUNBUFFERED="1"))  # the allocator (harness.allocator)
        if self.ctx.cache_dir:
            env["HARNESS_CACHE"] = str(self.ctx.cache_dir)
        stderr_tail: deque[str] = deque(maxlen=40)
        started = time.time()
        self._proc = proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,  # Ctrl-C reaches the controller, which stops the agent itself
        )
        def pump_stderr() -> None:  # the whole of it to the job's folder, its tail for a failure's detail
            with (workdir / "stderr.txt").open("w") as fh:
                for line in proc.stderr:
                    stderr_tail.append(line)
                    fh.write(line)

        err_thread = threading.Thread(target=pump_stderr, daemon=True)
        err_thread.start()
        timer = threading.Timer(spec.measure.timeout_seconds, self.cancel)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("@@progress ") and progress:
                    _, phase, done, total = line.split()
                    progress(phase, int(done), int(total))
            rc = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM in the controller: stop the agent with it
            self.cancel()
            raise
        finally:
            timer.cancel()
            err_thread.join(timeout=5)
            self._proc = None
        elapsed = time.time() - started
        tail = "".join(stderr_tail)[-4000:]
        if rc != 0 and elapsed >= spec.measure.timeout_seconds:
            return JobResult.failure(spec.job_id, "timeout",
                                     f"the job ran past its timeout of {spec.measure.timeout_seconds:.0f} s "
                                     "and was stopped; raise measure.timeout_seconds or lower iterations",
                                     detail=tail, started_at=started, ended_at=time.time())
        if not result_path.is_file():
            how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            return JobResult.failure(spec.job_id, "crash", f"the host agent ended ({how}) without a result",
                                     detail=tail, started_at=started, ended_at=time.time())
        try:
            result = parse_result(result_path.read_text())
        except ProtocolError as exc:
            return JobResult.failure(spec.job_id, "parse", str(exc), detail=tail,
                                     started_at=started, ended_at=time.time())
        if result.error is not None and not result.error.detail and tail:  # the agent's own stderr says why
            result.error = result.error.model_copy(update={"detail": error_tail(tail)})
        return result

    def cancel(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
