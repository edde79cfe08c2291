"""End-to-end generation (workload `e2e`) on Android, composed from on-device component runs: the real
CLI through Google's adb server to a test phone over TCP (tests/fakes/adbd.py: run_job.sh under mksh with
toybox), or against the fake adb server for its faults, and the benchmark_model stand-in, with three
tiny .tflite blocks given as the text encoder, the UNet and the VAE decoder; and the host scheduler
measurement the composition uses."""
from __future__ import annotations

import hashlib
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.devices.android import AGENT_SCRIPT
from harness.devices.android.parse import parse_benchmark_model
from harness.composition import COMPOSED_LABEL, compose_e2e
from harness.report.e2e import e2e_table, html_context, markdown_lines
from harness.store import Store
from harness.workloads.common import InputError
from harness.workloads.e2e import measure_scheduler_ms
from tests.fakes.adb_server import FakeAdbServer, FakeDevice
from tests.fakes.adbd import FakeAdbd
from tests.fakes.benchmark_model_standin import FAULT_FILE_NAME
from tests.fakes.tiny_block import BLOCK_SRC
from tests.test_android import _farm, _harmless_adb  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
E2E_SMOKE = REPO / "suites" / "e2e_smoke.yaml"
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
DEVICE_DIR = "/data/local/tmp/h e2e"  # a space: every path on the device shell must be quoted


@pytest.fixture(scope="session")
def three_graphs(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct tiny .tflite files (the tiny block with seeds 0, 1, 2), one conversion process,
    cached across sessions in pytest's cache dir."""
    key = hashlib.sha256(BLOCK_SRC.encode()).hexdigest()[:12]
    cache = getattr(pytestconfig, "cache", None)
    folder = Path(cache.mkdir("android_e2e_tflite")) if cache is not None else tmp_path_factory.mktemp("tflite")
    out = {c: folder / f"{c}-{key}.tflite" for c in COMPONENTS}
    if not all(p.is_file() for p in out.values()):
        code = (BLOCK_SRC + "import litert_torch, os, sys\n"
                "for seed, path in enumerate(sys.argv[1:]):\n"
                "    torch.manual_seed(seed)\n"
                "    litert_torch.convert(Block().eval(), (torch.randn(1, 8, 8, 8),)).export(path + '.tmp')\n"
                "    os.replace(path + '.tmp', path)\n")
        subprocess.run([sys.executable, "-c", code, *map(str, out.values())], check=True, capture_output=True,
                       timeout=600)
    return out


def _graph_sets(graphs: dict[str, Path]) -> list[str]:
    return [arg for c in COMPONENTS for arg in ("--set", f"options.extra.graphs.{c}={graphs[c]}")]


def _run(port: int, standin_path: Path, tmp: Path, serial: str, *extra: str) -> list[str]:
    return ["run", str(E2E_SMOKE), "--device", f"android:{serial}", "--adb", f"127.0.0.1:{port}",
            "--benchmark-model", str(standin_path), "--farm", str(_farm(tmp / "farm.yaml", device_dir=DEVICE_DIR)),
            "--store", f"sqlite:///{tmp}/e2e.db", "--set", "variants=[baseline]", "--set", "iterations=3",
            # the tiny blocks run in microseconds: 0.1 s between runs keeps benchmark_model alive for
            # meminfo samples (interval 0.1 s), as a real component does by itself
            "--set", "warmup_runs=1", "--set", "options.extra.run_delay=0.1", *extra]


def _launches(srv: FakeAdbServer | FakeAdbd, serial: str, start: int = 0) -> list[str]:
    return [r for s, r in srv.requests[start:] if s == serial and r.endswith("echo launched")]


def _latest(tmp: Path):
    store = Store(f"sqlite:///{tmp}/e2e.db")
    return store.load_run(store.resolve_run())


def _parsed_median_ms(pulled: Path) -> float:
    """The median of one component run, parsed again here from the benchmark_model output the job pulled."""
    parsed = parse_benchmark_model((pulled / "stdout.txt").read_text() + "\n" + (pulled / "stderr.txt").read_text())
    stats = parsed.inference
    if stats.median_us is not None:
        return stats.median_us / 1000.0
    assert stats.min_us == stats.max_us  # "(all same)": every run took curr
    return stats.curr_us / 1000.0


# ------------------------------------------------------------------------------------ the host scheduler

def test_measure_scheduler_ms_runs_the_real_scheduler_steps_times(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    calls = []
    real_step = diffusers.EulerDiscreteScheduler.step

    def counting_step(self, *args, **kw):
        calls.append(tuple(args[0].shape))
        return real_step(self, *args, **kw)

    monkeypatch.setattr(diffusers.EulerDiscreteScheduler, "step", counting_step)
    ms = measure_scheduler_ms("euler", 7, (1, 4, 8, 8), 7.5, repeats=2, seed=11)
    assert math.isfinite(ms) and ms > 0
    assert calls == [(1, 4, 8, 8)] * (7 * 3)  # a warm-up loop + 2 timed loops of 7 steps, the guided latent
    assert measure_scheduler_ms("euler", 7, (1, 4, 8, 8), 7.5, repeats=2, seed=11) == ms  # cached: no new steps
    assert len(calls) == 21
    measure_scheduler_ms("euler", 3, [1, 4, 8, 8], 7.5, repeats=2, seed=11)  # another step count: measured
    assert len(calls) == 21 + 3 * 3
    assert measure_scheduler_ms("dpmsolver++", 4, (1, 4, 16, 16), repeats=1) > 0
    with pytest.raises(InputError, match="unknown scheduler 'ddim'"):
        measure_scheduler_ms("ddim", 4, (1, 4, 8, 8))
    with pytest.raises(InputError, match="steps must be an integer >= 1"):
        measure_scheduler_ms("euler", 0, (1, 4, 8, 8))
    with pytest.raises(InputError, match=r"latent_shape must be \[1, C, H, W\]"):
        measure_scheduler_ms("euler", 2, (4, 8, 8))


# ------------------------------------------------------------------------------------ through the CLI

def test_e2e_on_a_fake_phone_composes_three_component_runs(tmp_path: Path, three_graphs: dict[str, Path],
                                                            standin: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture, adb) -> None:
    """Through Google's adb server (the `adb` fixture) to a network phone running Android's userland."""
    monkeypatch.chdir(tmp_path)
    fake = FakeDevice("E2E1", root=tmp_path / "phone", userland="android")
    with FakeAdbd(fake) as phone:
        serial = phone.serial  # 127.0.0.1:PORT, `adb connect`ed by the harness
        assert main(_run(adb.port, standin, tmp_path, serial, *_graph_sets(three_graphs))) == 0
        terminal = capsys.readouterr().err  # the table: stderr (stdout: the run id)
        first = _launches(phone, "E2E1")
        mark = len(phone.requests)
        assert main(_run(adb.port, standin, tmp_path, serial, *_graph_sets(three_graphs),
                         "--set", "workload_args.steps=5", "--no-report")) == 0
        second = _launches(phone, "E2E1", mark)

    # three benchmark_model runs per job, one per component, in order, each graph path quoted
    for launches in (first, second):
        assert len(launches) == 3
        graphs = []
        for launch in launches:
            found = re.findall(r"'--graph=([^']*)'", launch)
            assert len(found) == 1, launch
            graphs.append(found[0])
        sha = {c: hashlib.sha256(three_graphs[c].read_bytes()).hexdigest()[:16] for c in COMPONENTS}
        assert graphs == [f"{DEVICE_DIR}/models/{sha[c]}.tflite" for c in COMPONENTS]
        assert len(set(graphs)) == 3

    store = Store(f"sqlite:///{tmp_path}/e2e.db")
    runs = sorted(store.list_runs(), key=lambda r: r["started_at"])
    (job20,), (job5,) = (store.load_run(r["id"]).jobs for r in runs)
    for job, steps in ((job20, 20), (job5, 5)):
        res = job.result
        assert res.status == "ok", res.error
        comp = res.components_ms
        assert comp["method"] == "composed" and comp["label"] == COMPOSED_LABEL and comp["steps"] == steps
        device_dir = next(Path("results/runs").glob(f"{job.run_id}/*/device"))
        medians = {c: _parsed_median_ms(device_dir / c) for c in COMPONENTS}
        sched = measure_scheduler_ms("dpmsolver++", steps, (1, 4, 16, 16), 7.5)  # this process's cached figure
        assert comp["scheduler_ms"] == sched > 0
        assert (comp["text_encoder_ms"], comp["unet_ms"], comp["decoder_ms"]) == (
            medians["text_encoder"], medians["unet"], medians["vae_decoder"])
        total = medians["text_encoder"] + steps * (medians["unet"] + sched) + medians["vae_decoder"]
        assert res.samples_ms == [comp["total_ms"]] == [total]
        assert res.timing_method.startswith("composed")
        # each component's raw benchmark_model record is kept
        for c in COMPONENTS:
            rec = res.extra["components"][c]
            assert rec["execution"]["latency_summary_ms"]["n"] == 3 and rec["ms"] == medians[c] and rec["init_ms"] > 0
            assert rec["artifact"]["sha256"] == hashlib.sha256(three_graphs[c].read_bytes()).hexdigest()
            assert rec["artifact"]["size_bytes"] == three_graphs[c].stat().st_size
            assert rec["gpu_memory_samples"] and "delegates" in rec and "warmup_summary_ms" in rec
        peaks = {c: res.extra["components"][c]["memory"]["peak_rss_bytes"] for c in COMPONENTS}
        assert res.memory.peak_rss_bytes == max(peaks.values()) > 0
        assert res.extra["peak_memory_component"]["peak_rss_bytes"] == max(peaks, key=peaks.__getitem__)
        assert res.memory.gpu_bytes and res.extra["peak_memory_component"]["gpu_bytes"] in COMPONENTS
        assert res.extra["scheduler"] == "dpmsolver++" and res.execution.accelerator == "gpu"
    assert job5.result.samples_ms[0] != job20.result.samples_ms[0]
    # prepare() pushed the binary, the agent and the three models once (md5-skipped the second time)
    pushed = job20.result.extra["prepare_push"]
    assert len(pushed["files_pushed"]) == 5 and sum(f.startswith(f"{DEVICE_DIR}/models/") for f in pushed["files_pushed"]) == 3
    assert pushed["bytes_pushed"] == sum(p.stat().st_size for p in three_graphs.values()) + standin.stat().st_size + \
        AGENT_SCRIPT.stat().st_size
    assert job5.result.extra["prepare_push"] == {"bytes_pushed": 0, "files_pushed": [], "files_skipped": 5}
    assert job20.result.extra["push"]["bytes_pushed"] == job5.result.extra["push"]["bytes_pushed"] == 0

    # the report: the row is labelled, in the terminal, Markdown and HTML; the breakdown plot holds it
    assert "End-to-end" in terminal and "composed from on-device" in terminal.replace("\n", " ")
    assert "litert-gpu" in terminal  # the runtime that ran (the suite's `torch` means LiteRT on the GPU here)
    run = store.load_run(runs[0]["id"])
    df = e2e_table(run)
    assert list(df["method"]) == ["composed"] and df["total_s"].iloc[0] == pytest.approx(
        job20.result.samples_ms[0] / 1000.0)
    assert df["unet_total_ms"].iloc[0] == pytest.approx(20 * job20.result.components_ms["unet_ms"])
    md = "\n".join(markdown_lines(run, df))
    assert COMPOSED_LABEL in md and "Paper: S23 Ultra" in md
    ctx = html_context(run, df)
    assert ctx["plot_png_b64"] and any(COMPOSED_LABEL in n for n in ctx["notes"])
    assert any("largest of the three component runs" in n for n in ctx["notes"])
    assert main(["report", "--store", f"sqlite:///{tmp_path}/e2e.db", "--run", runs[1]["id"], "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert COMPOSED_LABEL in out and "UNet ms ×5" in out


def test_a_failing_component_fails_the_job_naming_it(tmp_path: Path, three_graphs: dict[str, Path],
                                                     standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake = FakeDevice("E2E2", root=tmp_path / "phone")
    unet_sha16 = hashlib.sha256(three_graphs["unet"].read_bytes()).hexdigest()[:16]
    fault = fake.host_path(DEVICE_DIR + "/bin/" + FAULT_FILE_NAME)
    fault.parent.mkdir(parents=True, exist_ok=True)
    fault.write_text(f"crash graph={unet_sha16}\n")  # the UNet's run dies of SIGSEGV, the others would not
    with FakeAdbServer([fake]) as srv:
        assert main(_run(srv.port, standin, tmp_path, "E2E2", *_graph_sets(three_graphs), "--no-report")) == 1
        launches = _launches(srv, "E2E2")
    assert len(launches) == 2  # text encoder ok, UNet crashed, the decoder never ran
    res = _latest(tmp_path).jobs[0].result
    assert res.status == "failed" and res.error.kind == "crash"
    assert res.error.message.startswith("e2e component unet: benchmark_model failed") and "SIGSEGV" in res.error.message
    assert res.extra["failed_component"] == "unet"
    assert res.extra["components"]["text_encoder"]["status"] == "ok"
    assert res.extra["components"]["unet"]["error"]["kind"] == "crash"
    assert "vae_decoder" not in res.extra["components"]


def test_graphs_option_errors_name_the_component(tmp_path: Path, three_graphs: dict[str, Path], standin: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "decoder.tflite"
    garbage.write_bytes(b"\x00" * 64 + b"not a flatbuffer")
    cases = [
        (["--set", f"options.extra.graphs.text_encoder={three_graphs['text_encoder']}"],
         "options.extra.graphs lacks unet, vae_decoder: when any graph is given, all three are required"),
        (_graph_sets({**three_graphs, "vae_decoder": garbage}),
         f"options.extra.graphs.vae_decoder '{garbage}' is not a .tflite model"),
        (_graph_sets({**three_graphs, "text_encoder": tmp_path / "missing.tflite"}),
         f"options.extra.graphs.text_encoder '{tmp_path / 'missing.tflite'}' is not a file"),
    ]
    fake = FakeDevice("E2E3", root=tmp_path / "phone")
    with FakeAdbServer([fake]) as srv:
        for args, message in cases:
            assert main(_run(srv.port, standin, tmp_path, "E2E3", *args, "--no-report")) == 1
            res = _latest(tmp_path).jobs[0].result
            assert res.error.kind == "input" and message in res.error.message, res.error.message
        assert not _launches(srv, "E2E3")


def test_without_graphs_the_phone_gets_the_three_exported_components(
        tmp_path: Path, standin: Path, monkeypatch: pytest.MonkeyPatch, seed_cache) -> None:
    """No graphs given: the controller exports the text encoder, the UNet and the VAE decoder of the
    suite's model (tiny) through the artifact cache, pushes the three files and runs each once. (The
    cache starts from the session's tiny fp16 components, tests/conftest.py: the conversions themselves
    are the export tests' subject.)"""
    from harness.export import ensure_artifact
    from harness.protocol import ModelRef
    from harness.variants import Flags

    monkeypatch.chdir(tmp_path)
    cache = seed_cache(tmp_path / "cache")
    fake = FakeDevice("E2E4", root=tmp_path / "phone")
    with FakeAdbServer([fake]) as srv:
        assert main(_run(srv.port, standin, tmp_path, "E2E4", "--no-report", "--cache", str(cache),
                         "--set", "dtype=fp16", "--set", "iterations=1", "--set", "warmup_runs=0")) == 0
        launches = _launches(srv, "E2E4")
    res = _latest(tmp_path).jobs[0].result
    assert res.status == "ok", res.error
    assert len(launches) == 3
    for component in COMPONENTS:
        art = ensure_artifact(ModelRef(name="tiny"), Flags(), "tflite", dtype="fp16", cache_dir=cache,
                              component=component)
        assert art.cached  # built by the run, found again here
        rec = res.extra["components"][component]["artifact"]
        assert rec["sha256"] == art.sha256 and rec["source"] == "export"
        assert f"{DEVICE_DIR}/models/{art.sha256[:16]}.tflite" in " ".join(launches)
    assert res.components_ms["method"] == "composed" and res.components_ms["total_ms"] > 0
