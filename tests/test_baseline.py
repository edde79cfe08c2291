"""harness.baseline: which runs form a cell's baseline and history (tags, accepted runs, re-baselines)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.baseline import (
    MIN_POOL_RUNS, POOL_RUNS, RERUN_GROUP_PREFIX, BaselineError, TagHistory, parse_match, record_rebaseline,
    resolve_baseline, resolve_candidate, run_baseline, tag_baseline,
)
from harness.regression import compare_runs
from harness.store import Store
from test_regression import DAY, DEVICES, REGRESSED, T0, VARIANTS, Night, add_run, key_of, slow

ANDROID = "android:R5CW10ABCDE"


def test_tag_pools_last_7_accepted_runs(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    for i in range(10):
        add_run(store, f"n{i:02d}", Night(day=i), seed=i)
    add_run(store, "broken", Night(day=10), seed=10)
    store.tag_run("broken", "rejected", "thermal chamber failed")
    add_run(store, "killed", Night(day=11, status="interrupted"), seed=11)
    add_run(store, "other", Night(day=11.5, tags=("weekly",)), seed=12)
    add_run(store, "cand", Night(day=12, tags=()), seed=13)
    cand = store.load_run("cand")
    history = TagHistory(store, "nightly", before=cand.started_at, exclude={"cand"})
    assert history.rejected == ["broken"]
    pools = tag_baseline(history, cand)
    assert len(pools) == 10
    pool = pools[key_of(ANDROID, "baseline")]
    # The last 7 accepted runs: neither the rejected, the interrupted nor the other tag's run.
    assert pool.run_ids == [f"n{i:02d}" for i in range(3, 10)] and POOL_RUNS == 7
    assert len(pool.samples_ms) == 7 * 20 and pool.error is None
    assert "7 accepted run(s) of tag 'nightly' pooled" in pool.note
    # History gate: the last K (here 5) medians before the candidate.
    assert [n.run_id for n in history.history(key_of(ANDROID, "baseline"), cand.started_at, 5)] == \
        [f"n{i:02d}" for i in range(5, 10)]
    # Runs after the candidate never count: a pool "before n05" ends at n04.
    assert history.pool(key_of(ANDROID, "baseline"), before=T0 + 5 * DAY).run_ids == [f"n{i:02d}" for i in range(0, 5)]


def test_pool_is_per_cell(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    gone = (ANDROID, "+winograd")
    for i in range(9):
        # The Winograd cell failed twice and was not run twice: its pool reaches further back.
        night = Night(day=i, failed={gone} if i in (7, 8) else set(), skip={gone} if i in (5, 6) else set())
        add_run(store, f"n{i:02d}", night, seed=i)
    add_run(store, "cand", Night(day=9, tags=()), seed=9)
    pools = tag_baseline(TagHistory(store, "nightly", before=T0 + 9 * DAY, exclude={"cand"}), store.load_run("cand"))
    assert pools[key_of(*gone)].run_ids == ["n00", "n01", "n02", "n03", "n04"]
    assert pools[key_of(ANDROID, "baseline")].run_ids == [f"n{i:02d}" for i in range(2, 9)]


def test_too_few_tagged_runs(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    for i in range(2):
        add_run(store, f"n{i:02d}", Night(day=i), seed=i)
    add_run(store, "cand", Night(day=2, tags=()), seed=2)
    with pytest.raises(BaselineError) as err:
        compare_runs(store, "nightly", "cand")
    message = str(err.value)
    assert f"need at least {MIN_POOL_RUNS}" in message and "2 (per cell)" in message
    assert "harness tag RUN nightly" in message and "--baseline RUN" in message
    # One more tagged run and it works.
    add_run(store, "n02", Night(day=1.5), seed=3)
    report = compare_runs(store, "nightly", "cand")
    assert all(len(c.baseline_runs) == 3 for c in report.cells)


def test_a_new_cell_without_enough_runs_is_inconclusive(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    new = (ANDROID, "+winograd")
    for i in range(6):
        add_run(store, f"n{i:02d}", Night(day=i, skip={new} if i < 4 else set()), seed=i)
    add_run(store, "cand", Night(day=6, tags=()), seed=6)
    cells = {c.key: c for c in compare_runs(store, "nightly", "cand").cells}
    fresh = cells[key_of(*new)]
    assert fresh.verdict == "INCONCLUSIVE" and "has 2 accepted run(s) with this cell" in fresh.latency.reason
    assert fresh.latency.candidate_median is not None  # what was measured is still shown
    assert cells[key_of(ANDROID, "baseline")].baseline_runs == [f"n{i:02d}" for i in range(6)]


def test_rebaseline(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    for i in range(10):
        # A deliberate 12% slowdown of FlashAttention on the phone from night 8 on (an accuracy fix, say).
        add_run(store, f"n{i:02d}", Night(day=i, latency=slow(1.12, REGRESSED) if i >= 8 else {}), seed=i)
    add_run(store, "cand", Night(day=10, latency=slow(1.12, REGRESSED), tags=()), seed=10)
    before = compare_runs(store, "nightly", "cand")
    assert {c.key: c for c in before.cells}[key_of(*REGRESSED)].verdict == "REGRESSION"

    assert record_rebaseline(store, "n08", "nightly", {"variant": r"\+flash_attention", "device": "android:.*"},
                             "accuracy fix makes FlashAttention slower") == "n08"
    report = compare_runs(store, "nightly", "cand")
    cells = {c.key: c for c in report.cells}
    moved = cells[key_of(*REGRESSED)]
    # Only the runs since the re-baseline (2 < 3 allowed: a deliberate choice), and the history too.
    assert moved.baseline_runs == ["n08", "n09"] and moved.history_runs == ["n08", "n09"]
    assert "re-baseline at run n08 (accuracy fix" in moved.baseline_note and "allowed right after" in moved.baseline_note
    assert moved.verdict != "REGRESSION" and moved.rebaseline["run_id"] == "n08"
    # Other cells are not affected by the match.
    assert cells[key_of("ios:00008120-001A", "+flash_attention")].baseline_runs == [f"n{i:02d}" for i in range(3, 10)]
    assert cells[key_of(ANDROID, "+winograd")].rebaseline is None
    # Re-baselining needs a completed, accepted run.
    add_run(store, "dead", Night(day=11, status="failed"), seed=11)
    with pytest.raises(BaselineError, match="not completed"):
        record_rebaseline(store, "dead", "nightly")
    with pytest.raises(BaselineError, match="FIELD=REGEX"):
        parse_match(["colour=red"])
    assert parse_match(["variant=\\+winograd"]) == {"variant": "\\+winograd"}


def test_resolve_refs(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    add_run(store, "n00", Night(day=0), seed=0)
    add_run(store, "nightly-run", Night(day=1, tags=()), seed=1)  # a run id that starts like the tag
    add_run(store, "rr", Night(day=2, tags=(), run_group=RERUN_GROUP_PREFIX + "nightly-run"), seed=2)
    ref = resolve_baseline(store, "nightly")
    assert ref.kind == "tag" and ref.tag == "nightly"  # a tag wins over a run-id prefix
    assert resolve_baseline(store, "nightly-r").run_id == "nightly-run"
    with pytest.raises(BaselineError, match="tags in the store: nightly"):
        resolve_baseline(store, "weekly")
    assert resolve_candidate(store, "latest") == "nightly-run"  # the rerun is newer but never "latest"
    assert resolve_candidate(store, "rr") == "rr"


def test_run_baseline_cells(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    add_run(store, "base", Night(day=0, failed={(ANDROID, "baseline")}, skip={(ANDROID, "+winograd")}), seed=0)
    add_run(store, "cand", Night(day=1, tags=()), seed=1)
    cand = store.load_run("cand")
    pools = run_baseline(store, "base", cand)
    assert len(pools) == len(DEVICES) * len(VARIANTS)
    assert "failed (device: device dropped off adb)" in pools[key_of(ANDROID, "baseline")].error
    assert "has no job for this cell" in pools[key_of(ANDROID, "+winograd")].error
    assert pools[key_of(ANDROID, "+sgn_gelu")].run_ids == ["base"]
