"""Suite sweeps: expansion (order, count, keys), validation errors, --set, and the reports' axes and pivots."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.protocol import Execution, JobResult, JobSpec, MemoryFigures
from harness.report.e2e import e2e_table
from harness.report.render import render
from harness.report.table1 import pivot, table1
from harness.store import Store
from harness.suite import SuiteError, expand, load_suite
from harness.variants import LADDER

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
FACTORY = "harness.models.mobilediffusion:build_tiny_unet"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


SWEEP = f"""name: x
model: tiny
variants: [baseline, +winograd]
sweep:
  model: [tiny, {{factory: "{FACTORY}"}}]
  options.dtype: [fp32, int8, fp16]
devices: [host]
"""


# ---------------------------------------------------------------------------------------- expansion

def test_expansion_order_count_and_keys(tmp_path):
    suite = load_suite(write(tmp_path, SWEEP))
    plan = expand(suite, ["host", "android:X"], "r")
    assert len(plan.jobs) == 2 * 3 * 2 * 2  # models x dtypes x devices x variants
    combos = list(dict.fromkeys(json.dumps(j.axes) for j in plan.jobs))
    assert [json.loads(c) for c in combos] == [
        {"model": m, "options.dtype": d} for m in ("tiny", {"factory": FACTORY}) for d in ("fp32", "int8", "fp16")]
    first = plan.jobs[:4]  # the first combination: devices, then variants
    assert [(j.device, j.variant) for j in first] == [("host", "baseline"), ("host", "+winograd"),
                                                      ("android:X", "baseline"), ("android:X", "+winograd")]
    for j in plan.jobs:
        assert j.spec.axes == j.axes
        assert j.spec.options.dtype == j.axes["options.dtype"]
        want = "tiny" if j.axes["model"] == "tiny" else f"factory:{FACTORY}"
        assert j.spec.model.name == want
        assert j.spec.job_id == f"r-{j.index:03d}"
    # Each device's jobs, in plan order, come grouped by combination.
    host = [json.dumps(j.axes) for j in plan.jobs if j.device == "host"]
    assert host == [c for c in combos for _ in range(2)]
    assert len({j.job_key for j in plan.jobs}) == len(plan.jobs)
    assert len({j.options_hash for j in plan.jobs}) == 6  # compare's cells stay apart per combination
    # Keys are stable across expansions and cover the axes.
    again = expand(load_suite(write(tmp_path, SWEEP)), ["host", "android:X"], "r")
    assert [j.job_key for j in again.jobs] == [j.job_key for j in plan.jobs]


def test_same_settings_with_and_without_axes_have_different_keys(tmp_path):
    swept = expand(load_suite(write(tmp_path, "name: x\nmodel: tiny\nvariants: [baseline]\n"
                                              "sweep: {options.dtype: [fp16]}\n")), ["host"])
    plain = expand(load_suite(write(tmp_path, "name: x\nmodel: tiny\nvariants: [baseline]\n"
                                              "options: {dtype: fp16}\n")), ["host"])
    assert swept.jobs[0].spec.options == plain.jobs[0].spec.options
    assert swept.jobs[0].job_key != plain.jobs[0].job_key


def test_no_sweep_keys_unchanged():
    """Job keys and options hashes of a suite without a sweep are the ones the harness always computed
    (pinned from the commit before sweeps existed), and its jobs carry no axes."""
    plan = expand(load_suite(REPO / "suites" / "smoke.yaml"), ["host"], "r")
    assert [(j.variant, j.job_key, j.options_hash) for j in plan.jobs[:2]] == [
        ("baseline", "72e622f8cd75cc38", "3feaee6ce36323f4"), ("+opt_softmax", "a7b7862bc8d6ccd6", "3feaee6ce36323f4")]
    assert expand(load_suite(REPO / "suites" / "e2e_smoke.yaml"), ["host"]).jobs[0].job_key == "e434de59929e3474"
    assert all(j.axes == {} and j.spec.axes == {} for j in plan.jobs)
    assert [j.variant for j in plan.jobs] == [n for n, _ in LADDER]


def test_old_job_json_without_axes_loads():
    spec = JobSpec.model_validate({"schema_version": 1, "job_id": "j", "run_id": "r", "device": "host",
                                   "variant": "baseline"})
    assert spec.axes == {}


def test_shipped_sweep_suites_expand():
    plan = expand(load_suite(REPO / "suites" / "beyond_sd14.yaml"), ["host"])
    assert len(plan.jobs) == 2 * 2 * 6
    assert {j.spec.model.name for j in plan.jobs} == {"sd14", "factory:harness.models.mobilediffusion:build_unet"}
    assert {j.spec.options.dtype for j in plan.jobs} == {"fp16", "int8"}
    tiny = expand(load_suite(REPO / "suites" / "beyond_sd14_tiny.yaml"), ["host"])
    assert len(tiny.jobs) == 24 and tiny.jobs[5].variant == "+relu_attention"
    steps = expand(load_suite(REPO / "suites" / "e2e_steps_smoke.yaml"), ["host"])
    assert [j.spec.workload_args["steps"] for j in steps.jobs] == [20] * 5 + [8] * 5 + [1] * 5
    assert all(j.spec.workload_args["scheduler"] == "dpmsolver++" for j in steps.jobs)


# ---------------------------------------------------------------------------------------- validation

def test_bad_value_names_axis_value_and_line(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nsweep:\n  options.dtype:\n    - fp16\n    - int4\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert f"{p}:6: sweep.options.dtype: value 'int4'" in msg and "'int8'" in msg  # the known values


def test_bad_model_value_names_axis_value_and_line(tmp_path):
    p = write(tmp_path, "name: x\nsweep:\n  model: [tiny, sd99]\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert f"{p}:3: sweep.model: value 'sd99'" in msg and "unknown model 'sd99'" in msg


def test_bad_steps_value_type(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nsweep:\n  measure.iterations: [2, lots]\n")
    with pytest.raises(SuiteError, match=rf"{p}:4: sweep.measure.iterations: value 'lots'"):
        load_suite(p)


def test_unknown_axis_and_forbidden_axes(tmp_path):
    with pytest.raises(SuiteError, match=r":4: sweep: sweep axis 'options.dtyp': options has no field 'dtyp'; known fields: runtime, dtype"):
        load_suite(write(tmp_path, "name: x\nmodel: tiny\nsweep:\n  options.dtyp: [fp16]\n"))
    with pytest.raises(SuiteError, match="variants cannot be swept"):
        load_suite(write(tmp_path, "name: x\nsweep:\n  variants: [ladder]\n"))
    with pytest.raises(SuiteError, match="no values"):
        load_suite(write(tmp_path, "name: x\nsweep:\n  options.dtype: []\n"))


def test_set_sweep_axis_and_conflict(tmp_path):
    p = write(tmp_path, SWEEP)
    suite = load_suite(p, ["sweep.options.dtype=[int8]", "sweep.workload_args.steps=[2, 1]"])
    assert suite.sweep == {"model": ["tiny", {"factory": FACTORY}], "options.dtype": ["int8"],
                           "workload_args.steps": [2, 1]}
    suite = load_suite(p, ["sweep.dtype=[fp16]"])  # a unique field name resolves as for --set
    assert suite.sweep["options.dtype"] == ["fp16"]
    with pytest.raises(SuiteError) as e:
        load_suite(p, ["options.dtype=fp16"])
    assert "conflicts with the suite's sweep axis 'options.dtype'" in str(e.value)
    with pytest.raises(SuiteError, match="conflicts with the suite's sweep axis 'model'"):
        load_suite(p, ["model.seed=3"])
    with pytest.raises(SuiteError, match="takes a list of values"):
        load_suite(p, ["sweep.options.dtype=fp16"])
    with pytest.raises(SuiteError, match=r"--set sweep.options.dtype=\[fp8\]: sweep.options.dtype: value 'fp8'"):
        load_suite(p, ["sweep.options.dtype=[fp8]"])
    assert load_suite(p, ["sweep={}", "options.dtype=fp16"]).options.dtype == "fp16"
    assert load_suite(p, ["iterations=2"]).measure.iterations == 2  # other fields still --set freely


# ---------------------------------------------------------------------------------------- reports

def _store_sweep_run(tmp_path, workload="unet_iteration"):
    """A stored sweep run: two dtypes x the ladder (jobs stored in reverse plan order)."""
    store = Store(f"sqlite:///{tmp_path}/r.db")
    suite = {"name": "t", "model": {"name": "tiny", "weights": None},
             "sweep": {"options.dtype": ["fp32", "int8"]}}
    store.create_run("r1", "t", suite)
    store.record_device("r1", {"id": "host", "kind": "host", "model": "Xeon", "gpu": "none (CPU only)"})
    jobs = []
    for ci, dtype in enumerate(("fp32", "int8")):
        for i, (name, flags) in enumerate(LADDER):
            ms = (100.0 - 10 * i) * (1 + ci)
            jobs.append((ci * 5 + i, dtype, i, name, flags, ms))
    for idx, dtype, i, name, flags, ms in reversed(jobs):
        res = JobResult(job_id=f"j{idx}", status="ok", samples_ms=[ms, ms, ms], execution=Execution(timing_method="perf_counter"),
                        memory=MemoryFigures(weight_bytes=(10 if dtype == "fp32" else 3) * MB))
        store.record_job("r1", job_key=f"k{idx}", job_index=idx, device_id="host", workload=workload, model="tiny",
                         variant=name, variant_index=i, flags=flags.to_dict(),
                         options={"runtime": "torch", "dtype": dtype, "accelerator": "auto"},
                         options_hash=f"h{dtype}", result=res, axes={"options.dtype": dtype})
    store.finish_run("r1", "completed")
    return store.load_run("r1")


def test_table1_axes_columns_and_pivot(tmp_path):
    run = _store_sweep_run(tmp_path)
    df = table1(run)
    assert len(df) == 10
    assert list(df["combination"]) == ["options.dtype=fp32"] * 5 + ["options.dtype=int8"] * 5  # plan order
    assert list(df["axis:options.dtype"]) == ["fp32"] * 5 + ["int8"] * 5
    # vs base is per combination: each combination's first row is its own base.
    assert df["change_pct"][0] == pytest.approx(0) and df["change_pct"][5] == pytest.approx(0)
    assert df["change_pct"][6] == pytest.approx(-10.0)
    piv = pivot(df)["host"]
    assert list(piv.columns) == ["options.dtype=fp32", "options.dtype=int8"]
    assert list(piv.index)[0] == "Baseline"
    assert piv.iloc[0].tolist() == [100.0, 200.0] and piv.iloc[4].tolist() == [60.0, 120.0]



def test_pivot_says_failed_and_not_run_rather_than_n_a(tmp_path):
    """An interrupted sweep lacks jobs; a failed job has no latency: neither is "n/a" (which means a flag
    that touches nothing)."""
    from harness.report.table1 import NOT_RUN, pivot_rows

    run = _store_sweep_run(tmp_path)
    df = table1(run)
    df = df[~((df["combination"] == "options.dtype=int8") & (df["step"] == 4))].copy()  # never ran
    df.loc[(df["combination"] == "options.dtype=int8") & (df["step"] == 3), "status"] = "failed"
    headers, rows = pivot_rows(pivot(df)["host"], lambda v: f"{v:.1f}")
    assert rows[3][2] == "failed" and rows[4][2] == NOT_RUN and rows[4][1] == "60.0"

def test_report_formats_name_axes_and_pivot(tmp_path):
    run = _store_sweep_run(tmp_path)
    md = render(run, "md")
    assert "## host (Xeon) — torch, fp32, auto — options.dtype=fp32" in md
    assert "## host (Xeon) — torch, int8, auto — options.dtype=int8" in md
    assert "side by side" in md and "| Row | options.dtype=fp32 | options.dtype=int8 |" in md
    assert "| Baseline | 100.0 | 200.0 |" in md
    csv = render(run, "csv")
    assert "combination" in csv.splitlines()[0] and "axis:options.dtype" in csv.splitlines()[0]
    html = render(run, "html", tmp_path / "r.html")
    assert 'data-combination="options.dtype=int8"' in html and 'class="pivot"' in html
    assert "data:image/png;base64," in html  # the plot with two combinations renders


def test_e2e_table_axes_and_pivot(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/e.db")
    store.create_run("e1", "t", {"name": "t", "model": {"name": "tiny", "weights": None}, "sweep": {"workload_args.steps": [20, 8, 1]}})
    store.record_device("e1", {"id": "host", "kind": "host", "model": "Xeon"})
    idx = 0
    for steps in (20, 8, 1):
        for i, (name, flags) in enumerate(LADDER[:2]):
            unet = [[10.0] * steps]
            comp = {"method": "measured", "steps": steps, "unet_evals": steps, "text_encoder_ms": [5.0],
                    "unet_ms": unet, "scheduler_ms": [[1.0] * steps], "decoder_ms": [20.0], "total_ms": [0.0]}
            total = 5 + 11 * steps + 20 + 1
            res = JobResult(job_id=f"e{idx}", status="ok", samples_ms=[float(total)], components_ms=comp)
            store.record_job("e1", job_key=f"k{idx}", job_index=idx, device_id="host", workload="e2e", model="tiny",
                             variant=name, variant_index=i, flags=flags.to_dict(),
                             options={"runtime": "torch", "dtype": "fp32"}, options_hash=f"h{steps}", result=res,
                             axes={"workload_args.steps": steps})
            idx += 1
    run = store.load_run("e1")
    df = e2e_table(run)
    assert list(df["axis:workload_args.steps"]) == ["20", "20", "8", "8", "1", "1"]
    piv = pivot(df, "total_s")["host"]
    assert list(piv.columns) == ["workload_args.steps=20", "workload_args.steps=8", "workload_args.steps=1"]
    assert piv.iloc[0].tolist() == pytest.approx([0.246, 0.114, 0.037])
    md = render(run, "md")
    assert "| Row | workload_args.steps=20 | workload_args.steps=8 | workload_args.steps=1 |" in md
    assert "| Baseline | 0.25 | 0.11 | 0.04 |" in md
    html = render(run, "html", tmp_path / "e.html")
    assert 'class="e2e-pivot"' in html and 'data-combination="workload_args.steps=8"' in html


# ---------------------------------------------------------------------------------------- end to end (CLI)

def _cli(*args, env_extra, cwd=REPO):
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_tiny_sweep_runs_end_to_end_through_the_cli(tmp_path):
    """suites/beyond_sd14_tiny.yaml on the host (two models x fp16/int8; one ladder row to keep it short),
    then its report in every format names the axes and has the side-by-side pivot."""
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "HARNESS_STORE": f"sqlite:///{tmp_path}/s.db"}
    out = _cli("run", "suites/beyond_sd14_tiny.yaml", "--set", "iterations=1", "--set", "warmup_runs=0",
               "--set", "variants=[+winograd]", "--report", str(tmp_path / "run.html"), env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = out.stdout.strip().splitlines()[-1]
    run = Store(env["HARNESS_STORE"]).load_run(run_id)
    assert len(run.jobs) == 4 and all(j.status == "ok" for j in run.jobs)
    df = table1(run)
    int8 = df[df["axis:options.dtype"] == "int8"]
    fp16 = df[df["axis:options.dtype"] == "fp16"]
    # Real stored bytes: int8 weights (+ scales) are about half of the fp16 weights.
    for model in df["axis:model"].unique():
        ratio = (int8[int8["axis:model"] == model]["weight_mb"].iloc[0]
                 / fp16[fp16["axis:model"] == model]["weight_mb"].iloc[0])
        assert 0.45 < ratio < 0.65, (model, ratio)
    assert (int8["check_rel_error"] > 1e-3).all() and (int8["check_rel_error"] < 5e-2).all()
    md = _cli("report", "--run", run_id, "--format", "md", env_extra=env).stdout
    for combo in ("model=tiny, options.dtype=fp16", "model=tiny, options.dtype=int8",
                  f"model=factory:{FACTORY}, options.dtype=int8"):
        assert combo in md
    assert "side by side" in md and "| Row | model=tiny, options.dtype=fp16 | model=tiny, options.dtype=int8 |" in md
    term = _cli("report", "--run", run_id, env_extra={**env, "COLUMNS": "250"}).stdout
    assert "model=tiny, options.dtype=int8" in term and "side by side" in term
    html = (tmp_path / "run.html").read_text()
    assert 'class="pivot"' in html and "options.dtype=int8" in html


def test_e2e_steps_sweep_int8_through_the_cli(tmp_path):
    """suites/e2e_steps_smoke.yaml (tiny e2e at 20/8/1 steps), one ladder row, int8 weight-only: every
    component is quantized, the check passes under the int8 tolerance, and the report puts the image
    totals at 20, 8 and 1 steps side by side."""
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "HARNESS_STORE": f"sqlite:///{tmp_path}/e.db"}
    out = _cli("run", "suites/e2e_steps_smoke.yaml", "--set", "iterations=1", "--set", "warmup_runs=0",
               "--set", "variants=[baseline]", "--set", "dtype=int8", "--set", "threads=1", "--no-report",
               env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = out.stdout.strip().splitlines()[-1]
    run = Store(env["HARNESS_STORE"]).load_run(run_id)
    assert [j.axes for j in run.jobs] == [{"workload_args.steps": s} for s in (20, 8, 1)]
    for job in run.jobs:
        res = job.result
        assert res.status == "ok", res.error
        assert res.components_ms["steps"] == job.axes["workload_args.steps"]
        assert set(res.extra["quantized"]) == {"text_encoder", "unet", "decoder"}
        assert res.extra["compute_dtype"] == "fp32"
        assert res.check.rel_tolerance == pytest.approx(5e-2) and 1e-3 < res.check.rel_error < 5e-2
        assert res.memory.weight_bytes == sum(res.extra["weight_bytes"].values())
    piv = pivot(e2e_table(run), "total_s")["host"]
    assert list(piv.columns) == [f"workload_args.steps={s}" for s in (20, 8, 1)]
    totals = piv.loc["Baseline"].tolist()
    assert totals[0] > totals[1] > totals[2] > 0
    md = _cli("report", "--run", run_id, "--format", "md", env_extra=env).stdout
    assert "| Row | workload_args.steps=20 | workload_args.steps=8 | workload_args.steps=1 |" in md
    assert "— torch, int8, cpu, dpmsolver++ — workload_args.steps=8" in md


def test_stored_suite_expands_to_the_same_jobs(tmp_path):
    """What `harness run` stores (suite.model_dump) validates back to the same plan: --resume and
    `compare --rerun` find the same job keys and cells."""
    from harness.suite import Suite

    suite = load_suite(REPO / "suites" / "beyond_sd14_tiny.yaml")
    again = Suite.model_validate(json.loads(json.dumps(suite.model_dump(mode="json"))))
    a, b = expand(suite, ["host"], "r"), expand(again, ["host"], "r")
    assert [(j.job_key, j.options_hash) for j in a.jobs] == [(j.job_key, j.options_hash) for j in b.jobs]


def test_store_made_before_sweeps_gets_the_axes_column(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path}/old.db"
    store = Store(url)
    store.create_run("r", "t", {"name": "t"})
    store.record_job("r", job_key="k", job_index=0, device_id="host", workload="unet_iteration", model="tiny",
                     variant="baseline", variant_index=0, flags={}, options={}, options_hash="h",
                     result=JobResult(job_id="j", status="ok", samples_ms=[1.0]))
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN axes_json"))  # the schema before sweeps
    reopened = Store(url)
    assert "axes_json" in {c["name"] for c in sa.inspect(reopened.engine).get_columns("jobs")}
    assert reopened.load_run("r").jobs[0].axes == {}
