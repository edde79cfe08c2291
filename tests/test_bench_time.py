"""What makes the main job fast (issue 20, item 5): one traced call for both memory figures, the reference
computed once per model and inputs and reused across rows, passes only when asked, `run --quick`, the ETA."""
from __future__ import annotations

import torch

from harness import memory
from harness.cli import build_parser
from harness.commands.run import QUICK_OVERRIDES, run_overrides
from harness.models.unet import build_unet, example_inputs
from harness.protocol import JobSpec, MeasurePolicy, ModelRef
from harness.runner import eta_seconds, format_eta
from harness.suite import load_suite
from harness.variants import ladder_flags
from harness.workloads.unet_iteration import reference_output, run_torch


def _spec(variant: str, **measure) -> JobSpec:
    policy = dict(warmup_runs=0, iterations=1)
    policy.update(measure)
    return JobSpec(job_id=f"j-{variant}", run_id="r", device="host", variant=variant, model=ModelRef(name="tiny"),
                   flags=ladder_flags(variant).to_dict(), measure=MeasurePolicy(**policy))


def _run(spec: JobSpec) -> dict:
    result: dict = {"extra": {}}
    run_torch(spec, result)
    return result


def test_one_call_gives_both_memory_figures_as_two_calls_do():
    unet, (sample, timestep, context) = build_unet("tiny"), example_inputs("tiny")

    def call():
        return unet(sample, timestep, encoder_hidden_states=context).sample

    with torch.no_grad():
        call()  # warm: the first call allocates one-time buffers
        measured, method = memory.measure_peak_tensor_bytes(call, device="cpu")
        planned = memory.planned_tensor_bytes(call)
        both = memory.measure_and_plan_tensor_bytes(call, device="cpu")
    assert both == (measured, method, planned)
    assert planned > 0 and measured > 0


def test_reference_reused_across_rows_gives_the_same_check(tmp_path, monkeypatch):
    """Row 2 with the reference row 1 left in the cache checks exactly as row 2 alone (a cold cache)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "shared"))
    _run(_spec("baseline", passes=[]))
    refs = list((tmp_path / "shared" / "reference").glob("*.pt"))
    assert len(refs) == 1
    mtime = refs[0].stat().st_mtime_ns
    warm = _run(_spec("+sgn_gelu", passes=[]))
    assert list((tmp_path / "shared" / "reference").glob("*.pt")) == refs  # read, not rebuilt
    assert refs[0].stat().st_mtime_ns == mtime
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cold"))
    cold = _run(_spec("+sgn_gelu", passes=[]))
    assert warm["check"] == cold["check"] and warm["check"].passed


def test_reference_on_the_callers_model_equals_a_fresh_build(tmp_path, monkeypatch):
    spec, inputs = _spec("baseline"), example_inputs("tiny")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "a"))
    own = reference_output(spec, "cpu", inputs)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "b"))
    reused = reference_output(spec, "cpu", inputs, model=build_unet("tiny"))
    assert torch.equal(own, reused)


def test_passes_run_only_when_asked(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    none = _run(_spec("baseline", passes=[]))
    phases = {line.split()[1] for line in capfd.readouterr().out.splitlines() if line.startswith("@@progress")}
    assert not {"memory", "op_times"} & phases
    assert none["memory"].tensor_bytes_measured is None and none["memory"].tensor_bytes_planned is None
    assert none["memory"].weight_bytes > 0  # no extra iteration: always there
    assert "op_times_ms" not in none and none["samples_ms"]

    ops = _run(_spec("baseline", passes=["op_times"]))
    assert ops["op_times_ms"] and ops["memory"].tensor_bytes_planned is None

    mem = _run(_spec("baseline", passes=["memory"]))
    assert "op_times_ms" not in mem
    assert mem["memory"].tensor_bytes_planned > 0 and mem["memory"].tensor_bytes_measured > 0
    assert mem["extra"]["passes"] == ["memory"]
    assert MeasurePolicy().passes == ["memory", "op_times"]  # a suite that says nothing keeps both


def test_memory_pass_as_first_call_measures_what_a_warm_call_does(tmp_path, monkeypatch, capfd):
    """On the CPU the memory pass is the row's first call and serves the reference check: nothing is
    built lazily in a first call any more (Winograd's filters are transformed at patch time), so its
    figures equal those of a pass after a warm call, for every rung of the ladder."""
    from harness.models.patch import apply_flags, precompute_weights
    from harness.variants import Flags

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    for variant in ("baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention", "+winograd"):
        row = _run(_spec(variant, passes=["memory"]))
        phases = [line.split()[1] for line in capfd.readouterr().out.splitlines() if line.startswith("@@progress")]
        assert "first_run" not in phases and phases.count("memory") == 2
        assert "first_run_ms" not in row  # n/a: the traced call is no cold-start timing
        assert row["extra"]["first_call"] == "memory_pass" and row["extra"]["memory_pass_ms"] > 0
        assert row["check"].passed and row["samples_ms"]

        unet, (sample, timestep, context) = build_unet("tiny"), example_inputs("tiny")
        apply_flags(unet, Flags.from_dict(ladder_flags(variant).to_dict()))
        winograd_convs = sum(1 for m in unet.modules() if getattr(m, "is_winograd", False))
        assert precompute_weights(unet) == winograd_convs and (winograd_convs > 0) == (variant == "+winograd")

        def call():
            return unet(sample, timestep, encoder_hidden_states=context).sample

        with torch.no_grad():
            call()
            warm = memory.measure_and_plan_tensor_bytes(call, device="cpu")
        mem = row["memory"]
        assert (mem.tensor_bytes_measured, mem.tensor_measure_method, mem.tensor_bytes_planned) == warm, variant
    assert row["extra"]["winograd_ran"]["winograd"] > 0  # the +winograd row ran Winograd in its traced call


def test_without_the_memory_pass_the_first_call_is_timed(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    row = _run(_spec("+winograd", passes=[]))
    assert row["first_run_ms"] > 0 and "first_call" not in row["extra"] and row["check"].passed


def test_random_weights_are_built_once_and_loaded_after(tmp_path, monkeypatch):
    """The seeded random weights of a config are kept in the cache after the first build: a later build
    loads the same tensors bit for bit (so the same outputs and weight bytes), a corrupt entry is rebuilt,
    another seed is another entry; a row on a warm cache measures what a row on a cold one does."""
    from harness.models.configs import get_model_config
    from harness.models.unet import seeded_unet

    cfg = get_model_config("tiny").unet
    fresh = build_unet("tiny", seed=3)
    first = seeded_unet(cfg, 3, tmp_path)
    entries = list(tmp_path.glob("unet-random-*.safetensors"))
    assert len(entries) == 1
    again = seeded_unet(cfg, 3, tmp_path)
    for model in (first, again):
        assert set(model.state_dict()) == set(fresh.state_dict())
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
        assert memory.weight_bytes(model) == memory.weight_bytes(fresh)
    inputs = example_inputs("tiny")
    with torch.no_grad():
        assert torch.equal(again.eval()(*inputs[:2], encoder_hidden_states=inputs[2]).sample,
                           fresh(*inputs[:2], encoder_hidden_states=inputs[2]).sample)
    entries[0].write_bytes(b"not safetensors")
    rebuilt = seeded_unet(cfg, 3, tmp_path)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    assert entries[0].stat().st_size > 1000  # written again
    seeded_unet(cfg, 4, tmp_path)
    assert len(list(tmp_path.glob("unet-random-*.safetensors"))) == 2

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "rows"))
    cold = _run(_spec("+sgn_gelu", passes=["memory"]))
    assert len(list((tmp_path / "rows" / "weights").glob("*.safetensors"))) == 1
    warm = _run(_spec("+sgn_gelu", passes=["memory"]))
    assert warm["check"] == cold["check"] and warm["check"].passed
    assert warm["memory"] == cold["memory"]


def test_bad_pass_name_is_refused(tmp_path):
    import pytest

    from harness.suite import SuiteError

    with pytest.raises(SuiteError, match="memory"):
        load_suite("suites/smoke.yaml", ["measure.passes=[memroy]"])


def test_quick_sets_what_its_help_says_and_set_still_wins():
    args = build_parser().parse_args(["run", "suites/table1.yaml", "--quick"])
    suite = load_suite(args.suite, run_overrides(args))
    assert (suite.measure.warmup_runs, suite.measure.iterations, suite.measure.passes) == (0, 2, ["memory"])
    assert suite.check.enabled  # the check stays: it rides on the untimed first call
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "--quick" in help_text and "op-time" in help_text and "2 timed" in help_text
    args = build_parser().parse_args(["run", "suites/table1.yaml", "--quick", "--set", "iterations=4"])
    assert load_suite(args.suite, run_overrides(args)).measure.iterations == 4
    plain = build_parser().parse_args(["run", "suites/table1.yaml"])
    assert load_suite(plain.suite, run_overrides(plain)).measure.iterations == 3
    assert QUICK_OVERRIDES[0].startswith("measure.")


def test_eta():
    assert eta_seconds([], 5) is None and format_eta(None) == "ETA --"
    assert eta_seconds([100.0, 120.0], 3) == 330.0
    assert eta_seconds([100.0], 3, current_elapsed_s=40.0) == 260.0
    assert eta_seconds([100.0], 4, current_elapsed_s=50.0, parallel=2) == 175.0
    assert eta_seconds([100.0], 0) == 0.0
    assert eta_seconds([10.0], 1, current_elapsed_s=99.0) == 0.0  # a slow last job: never negative
    assert format_eta(245) == "ETA 4m05s" and format_eta(3725) == "ETA 1h02m"


def test_quick_with_resume_is_refused(tmp_path, capsys):
    from harness.cli import main

    assert main(["run", "--resume", "x", "--quick", "--store", f"sqlite:///{tmp_path}/r.db"]) == 2
    assert "--quick and --set do not apply" in capsys.readouterr().err
