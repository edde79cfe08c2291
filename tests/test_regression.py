"""Nightly regression detection end to end: synthetic nightly runs in a real store, verdicts, confirmation,
CLI exit codes and the CI outputs (JUnit XML, Markdown, regressions.json).

The store is built with seeded lognormal samples written through Store.record_job (no mocks):
`build_nightlies` is also used by tests/test_baseline.py and tests/test_browser.py.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from harness.baseline import RERUN_GROUP_PREFIX, BaselineError, CellKey
from harness.cli import main
from harness.compare import IMPROVEMENT, INCONCLUSIVE, NO_CHANGE, REGRESSION, UNSTABLE, VERDICTS
from harness.protocol import Execution, JobResult, MemoryFigures
from harness.regression import RegressionReport, compare_runs, throttling_seen
from harness.report import regression_render as rr
from harness.store import Store, runs

DAY = 86400.0
T0 = 1767261600.0  # 2026-01-01 10:00 UTC: night 0
OPTS = "5f2c9a0b7d1e3c4a"
MIB = 1024 * 1024
# Two phones, the five Table-1 rows, median latency (ms) per row.
DEVICES = {
    "android:R5CW10ABCDE": {"kind": "android", "model": "SM-S918B", "soc": "Snapdragon 8 Gen 2", "gpu": "Adreno 740",
                            "os_version": "Android 14"},
    "ios:00008120-001A": {"kind": "ios", "model": "iPhone15,2", "soc": "A16 Bionic", "gpu": "Apple GPU (5-core)",
                          "os_version": "iOS 17.5"},
}
LATENCY_MS = {
    "android:R5CW10ABCDE": {"baseline": 1842.0, "+opt_softmax": 1521.0, "+sgn_gelu": 1338.0,
                            "+flash_attention": 1017.0, "+winograd": 862.0},
    "ios:00008120-001A": {"baseline": 1455.0, "+opt_softmax": 1289.0, "+sgn_gelu": 1190.0,
                          "+flash_attention": 934.0, "+winograd": 811.0},
}
VARIANTS = ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention", "+winograd"]
REGRESSED = ("android:R5CW10ABCDE", "+flash_attention")


def key_of(device: str, variant: str) -> CellKey:
    return CellKey(device, "unet_iteration", variant, OPTS)


@dataclass
class Night:
    """One synthetic run: per-cell latency factors, memory factors, throttling, failures."""

    day: float
    latency: dict[tuple[str, str], float] = field(default_factory=dict)  # (device, variant) -> factor
    tensor: dict[tuple[str, str], float] = field(default_factory=dict)  # tensor_bytes_measured factor
    throttled: set[tuple[str, str]] = field(default_factory=set)
    failed: set[tuple[str, str]] = field(default_factory=set)
    skip: set[tuple[str, str]] = field(default_factory=set)
    tags: tuple[str, ...] = ("nightly",)
    status: str = "completed"
    run_group: str | None = None
    suite_extra: dict = field(default_factory=dict)
    devices: tuple[str, ...] = tuple(DEVICES)


def add_run(store: Store, run_id: str, night: Night, seed: int, n_samples: int = 20, cv: float = 0.02,
            run_cv: float = 0.004) -> str:
    """Write one run with seeded lognormal samples for every cell, through the store's normal API."""
    rng = np.random.default_rng(seed)
    suite = {"name": "nightly", "model": {"name": "sd14"}, "workload": "unet_iteration", **night.suite_extra}
    store.create_run(run_id, "nightly", suite, "suites/nightly.yaml", night.run_group)
    sigma = math.sqrt(math.log1p(cv * cv))
    offset = float(rng.lognormal(0.0, math.sqrt(math.log1p(run_cv * run_cv))))
    index = 0
    for device in night.devices:
        store.record_device(run_id, {"id": device, **DEVICES[device]})
        for vi, variant in enumerate(VARIANTS):
            cell = (device, variant)
            if cell in night.skip:
                continue
            median = LATENCY_MS[device][variant] * night.latency.get(cell, 1.0) * offset
            job_id = f"{run_id}-{index:03d}"
            if cell in night.failed:
                result = JobResult.failure(job_id, "device", "device dropped off adb", transient=True)
            else:
                samples = median * rng.lognormal(0.0, sigma, n_samples)
                tensor = int((410 - 60 * vi) * MIB * night.tensor.get(cell, 1.0))
                state_after = {"battery_temp_c": round(31.0 + 2 * vi + rng.normal(0, 0.3), 1),
                               "max_temp_c": round(41.0 + 3 * vi + rng.normal(0, 0.5), 1),
                               "thermal_status": 2 if cell in night.throttled else 0}
                result = JobResult(
                    job_id=job_id, status="ok", samples_ms=[float(v) for v in samples],
                    warmup_ms=[float(median * 1.3)], execution=Execution(timing_method="benchmark_model"),
                    memory=MemoryFigures(weight_bytes=1639 * MIB, tensor_bytes_measured=tensor,
                                         peak_rss_bytes=int(2400 * MIB + rng.normal(0, 2) * MIB)),
                    device_state_before={"battery_temp_c": 30.5 + vi, "max_temp_c": 39.0 + vi, "thermal_status": 0},
                    device_state_after=state_after,
                    op_times_ms={"attention": median * (0.30 - 0.03 * vi), "softmax": median * 0.08,
                                 "groupnorm": median * 0.06, "gelu": median * 0.03, "conv3x3": median * 0.35,
                                 "other": median * (0.18 + 0.03 * vi)},
                    started_at=T0 + night.day * DAY, ended_at=T0 + night.day * DAY + 60)
            store.record_job(run_id, job_key=f"{device}-{variant}", job_index=index, device_id=device,
                             workload="unet_iteration", model="sd14", variant=variant, variant_index=vi,
                             flags={}, options={"runtime": "litert-gpu"}, options_hash=OPTS, result=result)
            index += 1
    store.finish_run(run_id, night.status)
    with store.engine.begin() as conn:  # nights a day apart, as the nightly CI makes them
        conn.execute(runs.update().where(runs.c.id == run_id).values(
            started_at=T0 + night.day * DAY, ended_at=T0 + night.day * DAY + 3600))
    for tag in night.tags:
        store.tag_run(run_id, tag)
    return run_id


def build_nightlies(path: Path, nights: int = 12, previous: Night | None = None, candidate: Night | None = None,
                    seed: int = 0) -> Store:
    """`nights` ordinary tagged nightlies; then an optional `previous` nightly and a `candidate` run."""
    store = Store(f"sqlite:///{path}")
    for i in range(nights):
        add_run(store, f"n{i:02d}", Night(day=i), seed=seed * 1000 + i)
    if previous is not None:
        add_run(store, "prev", previous, seed=seed * 1000 + 500)
    if candidate is not None:
        add_run(store, "cand", candidate, seed=seed * 1000 + 600)
    return store


def slow(factor: float, *cells: tuple[str, str]) -> dict[tuple[str, str], float]:
    return {c: factor for c in cells}


def by_key(report: RegressionReport):
    return {c.key: c for c in report.cells}


# ------------------------------------------------------------------------------------ verdicts

def test_planted_regression_confirmed_by_previous_nightly(tmp_path: Path) -> None:
    store = build_nightlies(tmp_path / "r.db", previous=Night(day=12, latency=slow(1.12, REGRESSED)),
                            candidate=Night(day=13, latency=slow(1.12, REGRESSED), tags=()))
    report = compare_runs(store, "nightly", "latest")
    cells = by_key(report)
    assert len(cells) == 10 and report.candidate.id == "cand"
    bad = cells[key_of(*REGRESSED)]
    assert bad.verdict == REGRESSION and bad.regressed == ["latency_ms"]
    assert bad.confirmed and "previous nightly prev" in bad.confirmation
    assert bad.previous["verdicts"]["latency_ms"] == REGRESSION
    assert 1.08 < bad.latency.ratio < 1.16 and bad.latency.ci_low > 1.0 and bad.latency.p_value < 0.01
    assert len(bad.baseline_runs) == 7 and bad.baseline_runs[-1] == "prev"  # the last 7 accepted, oldest first
    assert bad.history_runs[-1] == "prev" and len(bad.history_runs) == 10
    others = [c for k, c in cells.items() if k != key_of(*REGRESSED)]
    assert all(c.verdict != REGRESSION for c in others), [(c.key, c.latency.reason) for c in others if c.verdict == REGRESSION]
    assert report.exit_code() == 1
    # Two slow nights at the end are too few for a change point (min_size 5 on each side); the trend
    # holds the 13 nightlies and the candidate last.
    assert [p["run_id"] for p in bad.trend][-2:] == ["prev", "cand"] and bad.trend[-1]["candidate"]
    assert len(bad.trend) == 14 and bad.change_points == []
    # The CLI agrees: exit code 1.
    assert main(["compare", "--baseline", "nightly", "--candidate", "latest", "--store", store.url]) == 1


def test_unconfirmed_regression_exits_0_and_rerun_confirms_or_not(tmp_path: Path) -> None:
    store = build_nightlies(tmp_path / "r.db", candidate=Night(day=12, latency=slow(1.12, REGRESSED), tags=()))
    report = compare_runs(store, "nightly", "cand")
    bad = by_key(report)[key_of(*REGRESSED)]
    assert bad.verdict == REGRESSION and not bad.confirmed
    assert "previous nightly n11 was NO CHANGE" in bad.confirmation and "no rerun" in bad.confirmation
    assert report.exit_code() == 0
    assert main(["compare", "nightly", "cand", "--store", store.url]) == 0

    asked: list[tuple[str, list[CellKey]]] = []

    def rerun_slow(candidate_id: str, cells: list[CellKey]) -> str:
        asked.append((candidate_id, cells))
        only = {(c.device, c.variant) for c in cells}
        skip = {(d, v) for d in DEVICES for v in VARIANTS} - only
        return add_run(store, f"rerun{len(asked)}", Night(day=12.1, latency=slow(1.12, REGRESSED), skip=skip, tags=(),
                                                          run_group=RERUN_GROUP_PREFIX + candidate_id), seed=77)

    report = compare_runs(store, "nightly", "cand", rerun=rerun_slow)
    assert asked == [("cand", [key_of(*REGRESSED)])]  # only the regressed cell is rerun
    bad = by_key(report)[key_of(*REGRESSED)]
    assert bad.confirmed and "reproduced (latency_ms) on the rerun rerun1" in bad.confirmation
    assert report.rerun_run.id == "rerun1" and report.exit_code() == 1
    # A rerun is never "latest": the candidate stays the nightly run.
    assert compare_runs(store, "nightly", "latest").candidate.id == "cand"

    def rerun_fast(candidate_id: str, cells: list[CellKey]) -> str:
        skip = {(d, v) for d in DEVICES for v in VARIANTS} - {(c.device, c.variant) for c in cells}
        return add_run(store, "rerun-ok", Night(day=12.2, skip=skip, tags=(), run_group=RERUN_GROUP_PREFIX + candidate_id),
                       seed=78)

    report = compare_runs(store, "nightly", "cand", rerun=rerun_fast)
    bad = by_key(report)[key_of(*REGRESSED)]
    assert not bad.confirmed and "not reproduced on the rerun rerun-ok" in bad.confirmation
    assert bad.rerun["verdicts"]["latency_ms"] in (NO_CHANGE, INCONCLUSIVE)
    assert report.exit_code() == 0

    def rerun_broken(candidate_id: str, cells: list[CellKey]) -> str:
        raise RuntimeError("device android:R5CW10ABCDE is offline")

    report = compare_runs(store, "nightly", "cand", rerun=rerun_broken)
    assert report.rerun_error == "RuntimeError: device android:R5CW10ABCDE is offline"
    assert not by_key(report)[key_of(*REGRESSED)].confirmed and report.exit_code() == 0


def test_no_change(tmp_path: Path) -> None:
    store = build_nightlies(tmp_path / "r.db", candidate=Night(day=12, tags=()))
    report = compare_runs(store, "nightly")
    counts = report.counts()
    assert counts[REGRESSION] == 0 and counts[IMPROVEMENT] == 0 and counts[UNSTABLE] == 0
    assert counts[NO_CHANGE] >= 9  # at most one cell may be INCONCLUSIVE by chance; none is here
    assert all(c.memory and all(v.verdict == NO_CHANGE for v in c.memory.values()) for c in report.cells)
    assert main(["compare", "--baseline", "nightly", "--store", store.url]) == 0


def test_improvement_and_failed_job_and_throttling(tmp_path: Path) -> None:
    fast = ("ios:00008120-001A", "+winograd")
    hot = ("ios:00008120-001A", "baseline")
    dead = ("android:R5CW10ABCDE", "+winograd")
    store = build_nightlies(tmp_path / "r.db", candidate=Night(day=12, latency=slow(0.85, fast), throttled={hot},
                                                               failed={dead}, tags=()))
    cells = by_key(compare_runs(store, "nightly"))
    assert cells[key_of(*fast)].verdict == IMPROVEMENT
    assert cells[key_of(*hot)].verdict == UNSTABLE and cells[key_of(*hot)].throttled
    assert "throttling" in cells[key_of(*hot)].latency.reason
    failed = cells[key_of(*dead)]
    assert failed.verdict == INCONCLUSIVE and failed.status == "failed"
    assert "candidate job failed (device: device dropped off adb)" in failed.latency.reason


def test_throttling_seen_keys() -> None:
    assert throttling_seen({"thermal_status": 1}) and throttling_seen({"thermal_status": "severe"})
    assert throttling_seen({"thermal_state": "serious"}) and throttling_seen({"throttled": True})
    assert not throttling_seen({"thermal_status": 0, "thermal_state": "fair", "throttled": False, "max_temp_c": 80})


def test_memory_regression(tmp_path: Path) -> None:
    cell = ("ios:00008120-001A", "+sgn_gelu")
    store = build_nightlies(tmp_path / "r.db", previous=Night(day=12, tensor={cell: 1.25}),
                            candidate=Night(day=13, tensor={cell: 1.25}, tags=()))
    report = compare_runs(store, "nightly")
    c = by_key(report)[key_of(*cell)]
    assert c.verdict == REGRESSION and c.regressed == ["tensor_bytes_measured"]
    assert c.latency.verdict != REGRESSION
    mem = c.memory["tensor_bytes_measured"]
    assert mem.ratio == pytest.approx(1.25, rel=1e-3) and "MiB" in mem.reason
    assert c.confirmed and "previous nightly" in c.confirmation
    assert report.exit_code() == 1
    # 1 MiB more is under max(2%, 10 MiB): no regression.
    store2 = build_nightlies(tmp_path / "r2.db", candidate=Night(day=12, tensor={cell: 1.004}, tags=()))
    assert by_key(compare_runs(store2, "nightly"))[key_of(*cell)].memory["tensor_bytes_measured"].verdict == NO_CHANGE


def test_threshold_overrides_from_file_and_suite(tmp_path: Path) -> None:
    store = build_nightlies(tmp_path / "r.db", previous=Night(day=12, latency=slow(1.12, REGRESSED)),
                            candidate=Night(day=13, latency=slow(1.12, REGRESSED), tags=()))
    loose = tmp_path / "th.yaml"
    loose.write_text("thresholds:\n  - match: {device: 'android:.*', variant: '\\+flash_attention'}\n"
                     "    set: {min_effect: 0.25}\n")
    assert main(["compare", "-b", "nightly", "--thresholds", str(loose), "--store", store.url]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("- match: {devcie: x}\n  set: {alpha: 0.05}\n")
    assert main(["compare", "-b", "nightly", "--thresholds", str(bad), "--store", store.url]) == 2
    # The same override in the candidate's suite (the `thresholds:` list of the suite YAML).
    store2 = build_nightlies(tmp_path / "r2.db", previous=Night(day=12, latency=slow(1.12, REGRESSED)),
                             candidate=Night(day=13, latency=slow(1.12, REGRESSED), tags=(), suite_extra={
                                 "thresholds": [{"match": {"variant": r"\+flash_attention"},
                                                 "set": {"min_effect": 0.25}}]}))
    report = compare_runs(store2, "nightly")
    c = by_key(report)[key_of(*REGRESSED)]
    assert c.verdict == NO_CHANGE and c.latency.thresholds.min_effect == 0.25
    assert report.thresholds["sources"] == ["suite 'nightly' (1 override(s))"]


def test_suite_schema_accepts_thresholds(tmp_path: Path) -> None:
    from harness.suite import SuiteError, load_suite

    good = tmp_path / "s.yaml"
    good.write_text("name: n\nmodel: tiny\nthresholds:\n  - match: {device: 'android:.*'}\n    set: {cv_max: 0.15}\n")
    assert load_suite(good).thresholds == [{"match": {"device": "android:.*"}, "set": {"cv_max": 0.15}}]
    bad = tmp_path / "b.yaml"
    bad.write_text("name: n\nmodel: tiny\nthresholds:\n  - set: {cv_maxx: 0.15}\n")
    with pytest.raises(SuiteError, match="cv_maxx"):
        load_suite(bad)


def test_errors_exit_2(tmp_path: Path, capsys) -> None:
    store = build_nightlies(tmp_path / "r.db", nights=2, candidate=Night(day=3, tags=()))
    assert main(["compare", "--baseline", "nightly", "--store", store.url]) == 2
    assert "need at least 3" in capsys.readouterr().err
    assert main(["compare", "--baseline", "weekly", "--store", store.url]) == 2
    assert "neither a tag nor a run" in capsys.readouterr().err
    assert main(["compare", "--store", store.url]) == 2
    assert main(["compare", "-b", "cand", "-c", "cand", "--store", store.url]) == 2
    assert "same run" in capsys.readouterr().err
    # A single-run baseline works with any number of runs; the history gate is then skipped.
    report = compare_runs(store, "n01", "cand")
    assert report.baseline["kind"] == "run" and all(c.latency.noise_gate is None for c in report.cells)
    assert any("No nightly history" in n for n in report.notes)
    with pytest.raises(BaselineError, match="same run"):
        compare_runs(store, "cand", "cand")


def noisy_store(path: Path, candidate_latency: dict | None = None, previous: Night | None = None) -> Store:
    """12 quiet nightlies (and an optional quiet `previous`), then a candidate whose every cell has CV ~30%."""
    store = build_nightlies(path, previous=previous)
    add_run(store, "cand", Night(day=13, latency=candidate_latency or {}, tags=()), seed=4242, cv=0.3)
    return store


def test_all_unstable_is_not_ok(tmp_path: Path, capsys) -> None:
    store = noisy_store(tmp_path / "r.db")
    report = compare_runs(store, "nightly", "cand")
    assert report.counts()[UNSTABLE] == 10 and len(report.unjudged()) == 10
    assert report.unjudged_counts() == {UNSTABLE: 10}
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 3
    status, sentence = rr.headline(report)
    assert status == "NOT JUDGED" and "OK" not in status
    assert sentence == "10 of 10 cells could not be judged (10 UNSTABLE) — no regression shown"
    md = rr.render_markdown(report)
    assert md.startswith("## ❔ Regression check: 10 of 10 cells could not be judged (10 UNSTABLE)")
    assert "no regression shown" in md and "✅" not in md
    junit = ET.fromstring(rr.render_junit(report))
    summaries = {p.get("value") for p in junit.iter("property") if p.get("name") == "summary"}
    assert summaries == {"NOT JUDGED: " + sentence}
    html = rr.render_html(report)
    assert 'data-status="NOT JUDGED"' in html and "10 of 10 cells could not be judged" in html
    assert json.loads(rr.render_json(report))["summary"]["exit_code_strict"] == 3
    # Through the CLI: the banner is honest; the exit code is 0 without --strict, 3 with it.
    capsys.readouterr()
    assert main(["compare", "-b", "nightly", "-c", "cand", "--store", store.url]) == 0
    out = capsys.readouterr().out
    assert "NOT JUDGED" in out and "10 of 10 cells could not be judged" in out and "OK:" not in out
    assert main(["compare", "-b", "nightly", "-c", "cand", "--strict", "--store", store.url]) == 3


def test_partly_unjudged_and_noisy_but_certain_regression(tmp_path: Path) -> None:
    # A CPU-starved cell 100x slower on a noisy run is a REGRESSION; the other noisy cells stay UNSTABLE.
    store = noisy_store(tmp_path / "r.db", candidate_latency=slow(100.0, REGRESSED))
    report = compare_runs(store, "nightly", "cand")
    bad = by_key(report)[key_of(*REGRESSED)]
    assert bad.verdict == REGRESSION and "beyond doubt" in bad.latency.reason and "CV" in bad.latency.reason
    assert not bad.confirmed and report.counts()[UNSTABLE] == 9
    status, sentence = rr.headline(report)
    assert status == "WARN" and sentence.endswith("; 9 of 10 cells could not be judged (9 UNSTABLE)")
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 3
    assert main(["compare", "-b", "nightly", "-c", "cand", "--strict", "--store", store.url]) == 3
    # Confirmed by a previous nightly that regressed too: 1 wins over 3.
    store2 = noisy_store(tmp_path / "r2.db", candidate_latency=slow(100.0, REGRESSED),
                         previous=Night(day=12, latency=slow(100.0, REGRESSED)))
    report2 = compare_runs(store2, "nightly", "cand")
    assert by_key(report2)[key_of(*REGRESSED)].confirmed
    assert report2.exit_code(strict=True) == 1 == report2.exit_code()
    assert rr.headline(report2)[0] == "FAIL"
    assert main(["compare", "-b", "nightly", "-c", "cand", "--strict", "--store", store2.url]) == 1


def test_some_cells_unjudged_says_incomplete(tmp_path: Path) -> None:
    dead = ("android:R5CW10ABCDE", "+winograd")
    store = build_nightlies(tmp_path / "r.db", candidate=Night(day=12, failed={dead}, tags=()))
    report = compare_runs(store, "nightly", "cand")
    status, sentence = rr.headline(report)
    assert status == "INCOMPLETE" and sentence.startswith(f"{len(report.unjudged())} of 10 cells could not be judged (")
    assert "1 failed job" in sentence and "no regression in the" in sentence
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 3


STEP_CELL = ("ios:00008120-001A", "+sgn_gelu")


def stepped_store(path: Path, tail: list[float]) -> Store:
    """12 nightlies at the usual level, 5 after a 10% step of STEP_CELL (nights 12-16, no re-baseline),
    then one run per factor in `tail` (relative to the old level): all tagged but the last (the candidate)."""
    store = Store(f"sqlite:///{path}")
    for i in range(17):
        add_run(store, f"n{i:02d}", Night(day=i, latency=slow(1.10, STEP_CELL) if i >= 12 else {}), seed=i)
    for j, factor in enumerate(tail):
        last = j == len(tail) - 1
        add_run(store, "cand" if last else f"t{j}", Night(day=17 + j, latency=slow(factor, STEP_CELL),
                                                          tags=() if last else ("nightly",)), seed=100 + j)
    return store


def nightly_tags(store: Store, before: float):
    """The accepted 'nightly' runs before `before` (what compare_runs reads for the candidate)."""
    from harness.baseline import TagHistory

    return TagHistory(store, "nightly", before=before, exclude={"cand"})


def test_step_in_history_moves_the_gate(tmp_path: Path) -> None:
    from harness.regression import evaluate_cell, nightly_history

    # The candidate sits at the new level: not a regression, and the gate is centred after the step.
    store = stepped_store(tmp_path / "r.db", [1.10])
    report = compare_runs(store, "nightly", "cand")
    cell = by_key(report)[key_of(*STEP_CELL)]
    lat = cell.latency
    assert cell.verdict != REGRESSION and lat.history_step == "run n12" and lat.history_n_after == 5
    assert abs(lat.history_shift) < 0.02 and "step at run n12" in lat.reason
    assert cell.history_runs == [f"n{i:02d}" for i in range(7, 17)]
    # The stationary gate on the same ten medians: centred between the levels, sigma inflated by the step.
    tags = nightly_tags(store, report.candidate.started_at)
    hist = nightly_history(tags, key_of(*STEP_CELL), report.candidate.started_at, lat.thresholds)
    assert hist.change_points == [12] and len(hist.medians) == 17
    job = next(j for j in store.load_run("cand").jobs if (j.device_id, j.variant) == STEP_CELL)
    base = tags.pool(key_of(*STEP_CELL), before=report.candidate.started_at)
    old, _, _ = evaluate_cell(job, base, hist.medians[-10:], lat.thresholds)
    assert old.history_step is None and old.noise_gate > 0.15 > 0.03 > lat.noise_gate
    assert old.history_shift > 0.03 > abs(lat.history_shift)
    # Cells without a step keep the stationary gate.
    assert all(c.latency.history_step is None for k, c in by_key(report).items() if k != key_of(*STEP_CELL))


def test_real_step_after_an_old_step_is_confirmed(tmp_path: Path) -> None:
    # After the old step, the cell slows by 12% more on the previous nightly and on the candidate.
    store = stepped_store(tmp_path / "r.db", [1.10 * 1.12, 1.10 * 1.12])
    report = compare_runs(store, "nightly", "cand")
    cell = by_key(report)[key_of(*STEP_CELL)]
    assert cell.verdict == REGRESSION and cell.latency.history_step == "run n12", cell.latency.reason
    # The previous nightly was judged with its own drift-aware gate: a REGRESSION too, so confirmed.
    assert cell.confirmed and cell.previous["verdicts"]["latency_ms"] == REGRESSION
    assert "after the step at run n12" in cell.previous["reasons"]["latency_ms"]
    assert report.exit_code() == 1


# ------------------------------------------------------------------------------------ outputs

@pytest.fixture(scope="module")
def confirmed_report(tmp_path_factory) -> RegressionReport:
    path = tmp_path_factory.mktemp("out") / "r.db"
    mem_cell = ("ios:00008120-001A", "+sgn_gelu")
    store = build_nightlies(path, previous=Night(day=12, latency=slow(1.12, REGRESSED), tensor={mem_cell: 1.25}),
                            candidate=Night(day=13, latency=slow(1.12, REGRESSED), tensor={mem_cell: 1.25},
                                            failed={("android:R5CW10ABCDE", "+winograd")}, tags=()))
    return compare_runs(store, "nightly")


def test_junit_xml(confirmed_report: RegressionReport, tmp_path: Path) -> None:
    (path,) = rr.write_outputs(confirmed_report, junit=tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {f"harness.{d}" for d in DEVICES}
    cases = root.findall("testsuite/testcase")
    assert len(cases) == 10 == int(root.get("tests"))
    failures = {(c.get("classname"), c.get("name")): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failures) == {("harness.android:R5CW10ABCDE.unet_iteration", f"+flash_attention [{OPTS[:8]}]"),
                             ("harness.ios:00008120-001A.unet_iteration", f"+sgn_gelu [{OPTS[:8]}]")}
    assert int(root.get("failures")) == 2 == sum(int(s.get("failures")) for s in suites)
    lat = failures[("harness.android:R5CW10ABCDE.unet_iteration", f"+flash_attention [{OPTS[:8]}]")]
    assert lat.get("type") == "REGRESSION" and "latency_ms regressed: +" in lat.get("message")
    assert "previous nightly" in lat.get("message")
    errors = [c for c in cases if c.find("error") is not None]
    assert [c.get("name") for c in errors] == [f"+winograd [{OPTS[:8]}]"] and root.get("errors") == "1"
    assert all(c.find("system-out").text for c in cases)
    assert float(cases[0].get("time")) > 0.5  # candidate median in seconds


def test_markdown_summary(confirmed_report: RegressionReport) -> None:
    md = rr.render_markdown(confirmed_report)
    assert md.startswith("## ❌ Regression check: 2 confirmed regressions")
    assert "Candidate `cand`" in md and "baseline tag 'nightly'" in md
    lines = md.splitlines()
    header = lines.index("| " + " | ".join(f"{rr.MARKS[v]} {v}" for v in VERDICTS) + " |")
    counts = [int(x) for x in lines[header + 2].strip("| ").split(" | ")]
    assert counts == [confirmed_report.counts()[v] for v in VERDICTS] and counts[0] == 2
    regs = lines[lines.index("### Regressions (worst first)") + 4: lines.index("### Regressions (worst first)") + 6]
    # Worst first: the 25% memory rise before the 12% latency rise.
    assert "| + S-GN/GELU | tensor_bytes_measured | +25.0% tensor | — | — | yes:" in regs[0]
    assert "| + FlashAttention | latency_ms | +1" in regs[1] and "latency | [+" in regs[1]
    assert "<details><summary>All cells</summary>" in md and md.count("#### ") == 2


def test_regressions_json_schema(confirmed_report: RegressionReport, tmp_path: Path) -> None:
    (path,) = rr.write_outputs(confirmed_report, json=tmp_path / "regressions.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert {"generated_at", "summary", "baseline", "baseline_runs", "candidate", "history_tag", "rerun_run",
            "rerun_error", "thresholds", "missing_cells", "notes", "cells"} <= set(data)
    summary = data["summary"]
    assert summary["exit_code"] == 1 and summary["confirmed_regressions"] == 2 and summary["cells"] == 10
    assert set(summary["counts"]) == set(VERDICTS) and sum(summary["counts"].values()) == 10
    assert summary["worst"][0]["variant"] == "+sgn_gelu"
    assert data["baseline"] == {"kind": "tag", "ref": "nightly", "run_id": None, "tag": "nightly",
                                "description": data["baseline"]["description"]}
    for cell in data["cells"]:
        assert set(cell["key"]) == {"device", "workload", "variant", "options_hash"}
        assert cell["verdict"] in VERDICTS and isinstance(cell["confirmed"], bool)
        lat = cell["latency"]
        assert {"verdict", "ratio", "ci_low", "ci_high", "p_value", "n_baseline", "n_candidate", "reason",
                "thresholds"} <= set(lat)
        if cell["status"] == "ok":
            assert lat["ci_low"] <= lat["ratio"] <= lat["ci_high"] and lat["n_candidate"] == 20
            assert lat["n_baseline"] == 140  # 7 pooled runs x 20 samples
    # The JSON is the report: it reads back into the same data.
    again = RegressionReport.from_dict(data)
    assert again.to_dict() == data


def test_report_compare_cli_and_tag(tmp_path: Path) -> None:
    store = build_nightlies(tmp_path / "r.db", nights=4, candidate=Night(day=5, tags=()))
    out = tmp_path / "cmp.html"
    assert main(["report", "--compare", "nightly", "--run", "cand", "--format", "html", "-o", str(out),
                 "--store", store.url]) == 0
    html = out.read_text()
    assert html.count("<table class=\"table1\"") == 2 and html.count("data:image/png;base64,") == 10  # a trend per cell
    assert main(["tag", "cand", "nightly", "--note", "manual", "--store", store.url]) == 0
    assert "nightly" in store.load_run("cand").tags
    assert main(["tag", "n03", "nightly", "--rebaseline", "--match", "variant=\\+winograd",
                 "--note", "new Winograd kernel", "--store", store.url]) == 0
    (rb,) = store.list_rebaselines("nightly")
    assert rb["run_id"] == "n03" and rb["match"] == {"variant": "\\+winograd"} and rb["note"] == "new Winograd kernel"
    assert main(["tag", "n03", "nightly", "--match", "variant=x", "--store", store.url]) == 2
    assert main(["tag", "n03", "nightly", "--rebaseline", "--match", "colour=red", "--store", store.url]) == 2


def test_cli_rerun_that_cannot_run_exits_2_and_still_writes(tmp_path: Path, capsys) -> None:
    cell = ("ios:00008120-001A", "+winograd")
    store = build_nightlies(tmp_path / "r.db", candidate=Night(day=12, latency=slow(1.12, cell), tags=()))
    out = tmp_path / "regressions.json"
    # The phone of the synthetic store is not attached: the rerun fails, the regression stays unconfirmed.
    assert main(["compare", "-b", "nightly", "--rerun", "--json", str(out), "--store", store.url]) == 2
    assert "the automatic rerun failed" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["rerun_error"] and "cannot rerun" in data["rerun_error"]
    assert data["summary"]["regressions"] == 1 and data["summary"]["confirmed_regressions"] == 0
    assert not store.load_run("cand").tags and store.latest_run_id() == "cand"  # no rerun run was created


def test_html_escapes_stored_text(confirmed_report: RegressionReport) -> None:
    from dataclasses import replace

    hostile = replace(confirmed_report, notes=["<script>alert(1)</script>"])
    html = rr.render_html(hostile)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the page's own image check
