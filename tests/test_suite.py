"""Suite validation errors name the file, line and field; overrides; expansion into a plan."""
from pathlib import Path

import pytest

from harness.suite import SuiteError, expand, load_suite
from harness.variants import LADDER

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_shipped_suites_load():
    for name in ("smoke", "table1"):
        suite = load_suite(REPO / "suites" / f"{name}.yaml")
        assert [n for n, _ in suite.variant_list()] == [n for n, _ in LADDER]
    assert load_suite(REPO / "suites" / "table1.yaml").model.name == "sd14"


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nmeasure:\n  iterations: [1, 2\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    assert "malformed YAML" in str(e.value) and f"{p}:" in str(e.value)


def test_unknown_field_names_line_and_known_fields(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nmeasure:\n  warmup_runs: 1\n  iteratons: 3\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert f"{p}:5: measure.iteratons: unknown field 'iteratons'" in msg
    assert "iterations" in msg  # the known fields are listed


def test_bad_value_names_field_and_value(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nmeasure:\n  iterations: lots\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    assert f"{p}:4: measure.iterations" in str(e.value) and "'lots'" in str(e.value)


def test_unknown_flag_value_and_model(tmp_path):
    p = write(tmp_path, "name: x\nmodel: sd99\nvariants:\n  - name: v\n    flags: {softmax: turbo}\n")
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert "unknown model 'sd99'" in msg and "known models: sd14, tiny" in msg
    assert "'turbo'" in msg and "naive, optimized" in msg and f"{p}:5" in msg


def test_unknown_ladder_step(tmp_path):
    p = write(tmp_path, "name: x\nvariants: [baseline, +magic]\n")
    with pytest.raises(SuiteError, match=r"unknown ladder step '\+magic'"):
        load_suite(p)


def test_missing_name(tmp_path):
    p = write(tmp_path, "model: tiny\n")
    with pytest.raises(SuiteError, match="name: required field is missing"):
        load_suite(p)


def test_missing_file():
    with pytest.raises(SuiteError, match="not found"):
        load_suite("no/such/suite.yaml")


def test_overrides_short_and_dotted(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\n")
    s = load_suite(p, ["iterations=20", "measure.warmup_runs=3", "runtime=litert-cpu", "dtype=fp16",
                       "devices=[host]"])
    assert s.measure.iterations == 20 and s.measure.warmup_runs == 3
    assert s.options.runtime == "litert-cpu" and s.options.dtype == "fp16"


def test_override_errors(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\n")
    with pytest.raises(SuiteError, match="no suite field is named 'bogus'"):
        load_suite(p, ["bogus=1"])
    with pytest.raises(SuiteError, match="not key=value"):
        load_suite(p, ["iterations"])
    with pytest.raises(SuiteError, match=r"--set iterations=abc: measure.iterations"):
        load_suite(p, ["iterations=abc"])
    assert load_suite(p, ["seed=5"]).model.seed == 5  # unique leaf name

def test_expand_plan_keys_and_shuffle(tmp_path):
    p = write(tmp_path, "name: x\nmodel: tiny\nmeasure: {shuffle: true, shuffle_seed: 3}\n")
    s = load_suite(p)
    plan = expand(s, ["host"], "r1")
    assert len(plan.jobs) == 5
    assert sorted(j.variant_index for j in plan.jobs) == list(range(5))
    assert [j.variant_index for j in plan.jobs] != list(range(5))  # shuffled with the seed
    again = expand(s, ["host"], "r2")
    assert [j.job_key for j in plan.jobs] == [j.job_key for j in again.jobs]  # stable across runs
    assert len({j.job_key for j in plan.jobs}) == 5
    assert plan.jobs[0].spec.run_id == "r1" and plan.jobs[0].spec.job_id == "r1-000"
    plain = expand(load_suite(p, ["shuffle=false"]), ["host"], "r3")
    assert [j.variant_index for j in plain.jobs] == list(range(5))
