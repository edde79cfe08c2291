"""Same-session A/B: the sequential verdicts (harness.abtest) and `harness compare --ab` on the host."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.abtest import (
    A, B, ABSession, PlanError, SequentialPlan, block_order, compare_ab, hodges_lehmann,
)
from harness.compare import INCONCLUSIVE, NO_CHANGE, REGRESSION, UNSTABLE
from harness.store import Store
from harness.thresholds import Thresholds

REPO = Path(__file__).resolve().parents[1]


def _drive(session: ABSession, rng: np.random.Generator, factor_b: float, cv: float, drift_per_block: float = 0.0):
    i = 0
    while not session.done:
        side = session.next_side()
        level = 1.0 + drift_per_block * i
        x = 100.0 * level * (factor_b if side == B else 1.0) * rng.lognormal(0.0, cv, size=session.plan.block)
        session.add(side, x, seconds=0.1)
        i += 1
    return session


def test_plan_spends_alpha_over_its_looks():
    plan = SequentialPlan(block=5, first_look=20, batch=20, max_samples=100)
    assert plan.looks == [20, 40, 60, 80, 100]
    alphas = plan.look_alphas(0.01)
    assert sum(alphas) == pytest.approx(0.01) and all(a == pytest.approx(0.002) for a in alphas)
    uneven = SequentialPlan(block=5, first_look=30, batch=10, max_samples=50)
    assert uneven.look_alphas(0.01) == pytest.approx([0.006, 0.002, 0.002])


def test_plan_errors_name_the_field():
    with pytest.raises(PlanError, match="first_look .* multiple of 2 x block"):
        SequentialPlan(block=5, first_look=15)
    with pytest.raises(PlanError, match="max_samples"):
        SequentialPlan(max_samples=10)
    with pytest.raises(PlanError, match="unknown A/B plan field.*blocks"):
        SequentialPlan.from_dict({"blocks": 5})
    with pytest.raises(PlanError, match="'block' must be a whole number"):
        SequentialPlan.from_dict({"block": "five"})
    with pytest.raises(PlanError, match="design must be one of abba, random"):
        SequentialPlan.from_dict({"design": "aabb"})


def test_block_orders():
    assert "".join(block_order(4)) == "ABBAABBA"
    assert "".join(block_order(2, start=2)) == "ABBA"  # continues the quartets across looks
    rnd = block_order(50, "random", seed=3)
    assert rnd == block_order(50, "random", seed=3) and rnd != block_order(50, "random", seed=4)
    assert all(sorted(rnd[i:i + 2]) == [A, B] for i in range(0, 100, 2))


def test_hodges_lehmann_ci_agrees_with_the_rank_test():
    rng = np.random.default_rng(0)
    for shift in (1.0, 1.03, 1.1):
        a = 100 * rng.lognormal(0, 0.05, 30)
        b = 100 * shift * rng.lognormal(0, 0.05, 30)
        est = hodges_lehmann(a, b, 0.01)
        assert est.ci_low <= est.ratio <= est.ci_high
        # the Moses interval inverts the Mann-Whitney test: CI above 1 exactly when p is small (up to ties/approx)
        if est.p_slower < 0.005:
            assert est.ci_low > 1.0
        if est.ci_low > 1.0:
            assert est.p_slower < 0.02
    with pytest.raises(ValueError, match="positive, finite"):
        hodges_lehmann([1.0, -1.0], [1.0, 2.0], 0.01)


def test_a_clear_step_is_decided_at_the_first_look():
    s = _drive(ABSession(plan=SequentialPlan()), np.random.default_rng(1), 1.10, 0.02)
    assert s.verdict.verdict == REGRESSION and len(s.looks) == 1
    assert s.stop_reason.startswith("REGRESSION at look 1 of 5") and len(s.samples_a) == len(s.samples_b) == 20
    assert "".join(b.side for b in s.blocks) == "ABBAABBA"
    assert "A/B same session, look 1 of 5" in s.verdict.reason


def test_no_change_stops_early_and_inconclusive_samples_more():
    s = _drive(ABSession(plan=SequentialPlan()), np.random.default_rng(2), 1.0, 0.02)
    assert s.verdict.verdict == NO_CHANGE and len(s.looks) == 1
    # a 6% step in 10% noise: not shown at 20 samples, so the session keeps sampling
    counts = []
    for seed in range(10):
        t = _drive(ABSession(plan=SequentialPlan(), thresholds=Thresholds(cv_max=0.2)),
                   np.random.default_rng(100 + seed), 1.06, 0.10)
        counts.append(len(t.looks))
        assert len(t.samples_a) == t.looks[-1].n_a
    assert max(counts) > 1


def test_budget_and_time_stops():
    plan = SequentialPlan(block=5, first_look=10, batch=10, max_samples=20)
    s = ABSession(plan=plan, thresholds=Thresholds(cv_max=0.5))
    rng = np.random.default_rng(5)
    while not s.done:  # a shift right at min_effect in heavy noise: never shown
        side = s.next_side()
        s.add(side, 100 * (1.04 if side == B else 1.0) * rng.lognormal(0, 0.3, 5), seconds=1.0)
    assert len(s.looks) == 2 and s.verdict.verdict == INCONCLUSIVE
    assert s.stop_reason.startswith("sample budget spent: 20 samples per side")
    timed = ABSession(plan=SequentialPlan(max_seconds=5.0), thresholds=Thresholds(cv_max=0.5))
    while not timed.done:
        side = timed.next_side()
        timed.add(side, 100 * (1.04 if side == B else 1.0) * rng.lognormal(0, 0.3, 5), seconds=1.0)
    assert timed.verdict.verdict == INCONCLUSIVE and len(timed.looks) == 1
    assert timed.stop_reason.startswith("time budget spent")


def test_abba_cancels_a_linear_drift_within_the_session():
    """The machine warms up 1% per block: A and B alike; ABBA order keeps it out of the verdict."""
    verdicts = [_drive(ABSession(plan=SequentialPlan()), np.random.default_rng(s), 1.0, 0.01, 0.01).verdict.verdict
                for s in range(20)]
    assert verdicts.count(REGRESSION) == 0 and verdicts.count(NO_CHANGE) >= 18


def test_noise_is_unstable_unless_the_change_is_beyond_doubt():
    rng = np.random.default_rng(7)
    a = 40 * rng.lognormal(0, 0.3, 20)
    assert compare_ab(a, 40 * rng.lognormal(0, 0.3, 20), look_alpha=0.002).verdict == UNSTABLE
    v = compare_ab(a, 4000 * rng.lognormal(0, 0.3, 20), look_alpha=0.002)
    assert v.verdict == REGRESSION and "CI lies wholly beyond" in v.reason


def test_suite_ab_section_is_validated(tmp_path):
    from harness.suite import SuiteError, load_suite

    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nmodel: tiny\nab: {block: 5, first_look: 15}\n")
    with pytest.raises(SuiteError, match="first_look"):
        load_suite(bad)


# ------------------------------------------------------------------------------ the CLI, on the host


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _suite(tmp: Path, name: str, factory: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "model": {"factory": factory}, "variants": ["baseline"],
        "measure": {"warmup_runs": 1, "iterations": 5}, "check": {"enabled": False},
        "ab": {"block": 5, "first_look": 10, "batch": 10, "max_samples": 20},
        # a busy test machine stretches sleeps: judge however noisy (a 15x change is beyond doubt anyway)
        "thresholds": [{"set": {"cv_max": 1.0}}],
    }))
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two stored runs whose suites differ in the model: what an A/B session re-runs is the stored suite
    (their own jobs, ordinary `harness run` results, play no part, so none are stored here)."""
    from harness.suite import load_suite

    tmp = tmp_path_factory.mktemp("ab")
    url = f"sqlite:///{tmp}/r.db"
    store = Store(url)
    ids = []
    for i, (name, factory) in enumerate((("fast", "tests.fakes.sleepy_unet:fast"),
                                         ("slow", "tests.fakes.sleepy_unet:slow"))):
        doc = load_suite(_suite(tmp, name, factory)).model_dump(mode="json")
        doc["devices"] = ["host"]
        run_id = f"20261206-00000{i}-{name}"
        store.create_run(run_id, name, doc)
        store.finish_run(run_id, "completed")
        ids.append(run_id)
    return tmp, url, ids


def test_compare_ab_finds_the_slower_candidate_in_one_session(two_runs):
    tmp, url, (fast, slow) = two_runs
    out_json, out_html, out_md = tmp / "ab.json", tmp / "ab.html", tmp / "ab.md"
    proc = harness("compare", "--ab", "--baseline", fast, "--candidate", slow, "--store", url,
                   "--json", str(out_json), "--html", str(out_html), "--markdown", str(out_md))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # confirmed by design
    doc = json.loads(out_json.read_text())
    cell = doc["cells"][0]
    assert cell["verdict"] == REGRESSION and cell["confirmed"]
    # 30 ms against 2 ms of sleep; a loaded machine stretches both (1.88 seen with 5 test runs beside it)
    assert cell["latency"]["ratio"] > 1.3
    s = cell["sampling"]
    assert s["samples_a"] == s["samples_b"] == 10 and s["order"] == "ABBA" and len(s["looks"]) == 1
    assert s["stop_reason"].startswith("REGRESSION at look 1 of 2")
    assert doc["design"].startswith("A/B in one session: blocks of 5 samples in ABBA quartets")
    # both sides are stored as runs of the session's group, their samples in run order
    store = Store(url)
    a_run, b_run = s["blocks"] and doc["baseline"]["run_id"], doc["candidate"]["id"]
    for rid, source in ((a_run, fast), (b_run, slow)):
        run = store.load_run(rid)
        assert run.run_group.startswith("ab:") and run.status == "completed"
        assert run.suite["ab_source_run"] == source
        (job,) = run.jobs
        assert len(job.result.samples_ms) == 10 and job.result.extra["ab"]["stop_reason"] == s["stop_reason"]
    assert store.latest_run_id(exclude_group_prefix=("rerun:", "ab:")) == slow
    html = out_html.read_text()
    assert 'id="ab-sampling"' in html and "REGRESSION at look 1 of 2" in html
    assert "### Same-session A/B" in out_md.read_text()
    assert "A/B session: 1 cell(s)" in proc.stderr


def test_compare_ab_flag_errors(two_runs):
    _, url, (fast, slow) = two_runs
    proc = harness("compare", fast, slow, "--store", url, "--block", "5")
    assert proc.returncode == 2 and "only apply to a same-session A/B comparison: add --ab" in proc.stderr
    proc = harness("compare", "--ab", fast, slow, "--store", url, "--first-look", "7")
    assert proc.returncode == 2 and "first_look (7) must be a multiple of 2 x block (10)" in proc.stderr
    proc = harness("compare", "--ab", fast, slow, "--store", url, "--device", "android:NOPE")
    assert proc.returncode == 2


def test_ctrl_c_keeps_the_finished_blocks(two_runs):
    import signal
    import time

    _, url, (fast, slow) = two_runs
    proc = subprocess.Popen([sys.executable, "-m", "harness", "compare", "--ab", fast, slow, "--store", url,
                             "--first-look", "40", "--batch", "10", "--max-samples", "100"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "block 3 (" in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + err
    assert "the finished blocks are stored" in err
    store = Store(url)
    runs = [store.load_run(r["id"]) for r in store.list_runs() if (r["run_group"] or "").startswith("ab:")]
    latest = max(runs, key=lambda r: r.started_at)
    group = [r for r in runs if r.run_group == latest.run_group]
    assert sorted(r.status for r in group) == ["interrupted", "interrupted"]
    stored = sum(len(r.jobs[0].result.samples_ms) for r in group if r.jobs)
    assert stored >= 10  # at least the two blocks that finished before block 3 began
    ab = group[0].jobs[0].result.extra["ab"]
    assert ab["stop_reason"].startswith("interrupted (Ctrl-C)")
