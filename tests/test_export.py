"""harness.export on a small config of the SD 1.4 UNet architecture ("nano": one down/up level with
cross attention, one without, no mid block; every block type, GroupNorm/GEGLU/attention/3x3 conv).

Conversions are real (litert-torch, coremltools) and shared through one cache per test session;
each takes seconds on an idle 2-core machine.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.export import (
    FORMATS, ExportError, ReferenceMismatchError, UnknownFormatError, cache, ensure_artifact, lookup_artifact,
    plan_artifacts,
)
from harness.export.mapping import effective_flags, na_flags
from harness.models.configs import MODELS, TINY_UNET, ModelConfig
from harness.protocol import ModelRef
from harness.variants import LADDER, Flags, ladder_flags

NANO = ModelConfig(
    "nano",
    {**TINY_UNET, "block_out_channels": [32, 32], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1, "sample_size": 8,
     "mid_block_type": None},
    text_tokens=8, description="test config: the SD 1.4 blocks at one level each",
)
# What the nano UNet holds (harness.models.patch.flag_coverage): 6 attention blocks (3 transformer
# blocks x self + cross), 16 GroupNorms, 3 GEGLUs.
ATTENTION, GROUPNORM, GELU = 6, 16, 3
MODEL = ModelRef(name="nano", seed=0)


@pytest.fixture(scope="module")
def nano():
    added = "nano" not in MODELS
    MODELS.setdefault("nano", NANO)
    yield NANO
    if added:
        MODELS.pop("nano", None)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One artifact cache for the session's export tests (every module finds it at the same path)."""
    path = tmp_path_factory.getbasetemp() / "export-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tflite_pair(nano, shared_cache):
    """The baseline and the all-optimizations rows as .tflite artifacts (fp16 weights), read back."""
    from harness.export.tflite import read_graph

    out = {}
    for name in ("baseline", "+flash_attention"):
        art = ensure_artifact(MODEL, ladder_flags(name), "tflite", cache_dir=shared_cache)
        out[name] = (art, read_graph(art.path))
    return out


# ------------------------------------------------------------------------------------ mapping

def test_flags_a_format_cannot_express_are_na_and_share_the_artifact():
    flash, winograd = ladder_flags("+flash_attention"), ladder_flags("+winograd")
    for fmt in FORMATS:
        assert effective_flags(winograd, fmt) == effective_flags(flash, fmt)
        assert na_flags(winograd, fmt) == ["conv3x3"]
        assert na_flags(flash, fmt) == []
        assert effective_flags(replace(winograd, winograd_tile=2), fmt) == effective_flags(flash, fmt)
    with pytest.raises(UnknownFormatError, match="known formats: tflite, coreml"):
        effective_flags(flash, "onnx")


def test_unknown_format_is_an_error_listing_the_formats(nano, tmp_path):
    with pytest.raises(UnknownFormatError, match="unknown artifact format 'onnx'; known formats: tflite, coreml"):
        ensure_artifact(MODEL, ladder_flags("baseline"), "onnx", cache_dir=tmp_path)


def test_key_hashes_config_weights_flags_format_dtype_and_versions(nano):
    base = ladder_flags("baseline")
    key, doc = cache.artifact_key(MODEL, NANO, base, "tflite", "fp16", {"litert-torch": "1"})
    assert key == cache.artifact_key(MODEL, NANO, base, "tflite", "fp16", {"litert-torch": "1"})[0]
    assert doc["flags"] == base.to_dict() and doc["weights"] == {"random_seed": 0}
    others = [
        cache.artifact_key(MODEL, NANO, ladder_flags("+opt_softmax"), "tflite", "fp16", {"litert-torch": "1"}),
        cache.artifact_key(MODEL, NANO, base, "coreml", "fp16", {"litert-torch": "1"}),
        cache.artifact_key(MODEL, NANO, base, "tflite", "fp32", {"litert-torch": "1"}),
        cache.artifact_key(MODEL, NANO, base, "tflite", "fp16", {"litert-torch": "2"}),
        cache.artifact_key(ModelRef(name="nano", seed=1), NANO, base, "tflite", "fp16", {"litert-torch": "1"}),
        cache.artifact_key(MODEL, replace(NANO, text_tokens=9), base, "tflite", "fp16", {"litert-torch": "1"}),
    ]
    assert len({key, *(k for k, _ in others)}) == 1 + len(others)
    # n/a flags do not change the key: +flash_attention and +winograd are one artifact.
    assert (cache.artifact_key(MODEL, NANO, ladder_flags("+winograd"), "tflite", "fp16")[0]
            == cache.artifact_key(MODEL, NANO, ladder_flags("+flash_attention"), "tflite", "fp16")[0])


def test_weights_identity_follows_the_checkpoint_files(tmp_path):
    unet = tmp_path / "ckpt" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text("{}")
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 10)
    first = cache.weights_identity(str(tmp_path / "ckpt"), 0)
    assert cache.weights_identity(str(tmp_path / "ckpt"), 5) == first  # the seed does not matter then
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 11)
    assert cache.weights_identity(str(tmp_path / "ckpt"), 0) != first


# ------------------------------------------------------------------------------------ .tflite graphs

def _ops(graph) -> dict[str, int]:
    return graph.op_histogram()


def _check_baseline(g0) -> None:
    h0, c0 = g0.op_histogram(), g0.category_histogram()
    # Softmax as separate ops, GroupNorm and GELU decomposed, no composites.
    assert h0.get("SOFTMAX", 0) == 0 and h0["REDUCE_MAX"] == ATTENTION and h0["EXP"] == ATTENTION
    assert h0["SUM"] == ATTENTION and h0.get("GELU", 0) == 0 and g0.composites() == {}
    assert {"MEAN", "RSQRT"} <= set(c0["groupnorm"]) and c0["groupnorm"]["RSQRT"] == GROUPNORM
    assert c0["gelu"] and "GELU" not in c0["gelu"]


def _check_flash(g3) -> None:
    """GPU-clean forms (harness.export.rewrite): no composites; GroupNorm folded (one RSQRT per norm, its
    affine folded into the scale); builtin GELU; attention as the online softmax: no SOFTMAX op."""
    h3, c3 = g3.op_histogram(), g3.category_histogram()
    assert g3.composites() == {} and h3.get("BROADCAST_TO", 0) == 0
    assert c3["groupnorm"]["RSQRT"] == GROUPNORM and c3["groupnorm"]["MEAN"] == 2 * GROUPNORM
    assert h3["GELU"] == GELU and h3.get("SOFTMAX", 0) == 0
    assert c3["attention"]["BATCH_MATMUL"] == 2 * ATTENTION and c3["attention"]["REDUCE_MAX"] == ATTENTION


def test_tflite_baseline_and_all_optimizations_differ_as_the_mapping_says(tflite_pair, shared_cache, nano):
    (base, g0), (flash, g3) = tflite_pair["baseline"], tflite_pair["+flash_attention"]
    _check_baseline(g0)
    _check_flash(g3)
    # The 3x3 convolutions are the same CONV_2D ops in both (Winograd is the delegate's choice).
    assert g3.category_histogram()["conv3x3"]["CONV_2D"] == g0.category_histogram()["conv3x3"]["CONV_2D"] > 0
    # + Winograd: n/a on .tflite, the same file as + FlashAttention, said so.
    wino = ensure_artifact(MODEL, ladder_flags("+winograd"), "tflite", cache_dir=shared_cache)
    assert wino.cached and wino.path == flash.path and wino.key == flash.key and wino.sha256 == flash.sha256
    assert wino.na_flags == ["conv3x3"] and flash.na_flags == []
    for art, graph in tflite_pair.values():
        ref = art.meta["reference"]
        assert ref["passed"] and 0 < ref["rel_error"] < 5e-2  # fp16 weights: close, not exact
        assert graph.weight_bytes_by_dtype["float16"] > 0.9 * graph.weight_bytes
        assert art.meta["planned_tensor_bytes"] == graph.plan().total_bytes > 0
    # The folded GroupNorm and the online softmax leave fewer activations to plan.
    assert g3.plan().total_bytes < g0.plan().total_bytes


@pytest.mark.slow
def test_tflite_each_ladder_row_changes_only_its_ops(tflite_pair, shared_cache, nano):
    """Row by row: + optimized softmax touches only the softmax, + S-GN/GELU only GroupNorm/GELU."""
    from harness.export.tflite import read_graph

    g0, g3 = tflite_pair["baseline"][1], tflite_pair["+flash_attention"][1]
    g1 = read_graph(ensure_artifact(MODEL, ladder_flags("+opt_softmax"), "tflite", cache_dir=shared_cache).path)
    g2 = read_graph(ensure_artifact(MODEL, ladder_flags("+sgn_gelu"), "tflite", cache_dir=shared_cache).path)
    h1, h2 = g1.op_histogram(), g2.op_histogram()
    c0, c1, c2, c3 = (g.category_histogram() for g in (g0, g1, g2, g3))
    assert h1["SOFTMAX"] == ATTENTION and h1.get("REDUCE_MAX", 0) == 0 and h1.get("EXP", 0) == 0
    assert c1["groupnorm"] == c0["groupnorm"] and c1["gelu"] == c0["gelu"] and c1["conv3x3"] == c0["conv3x3"]
    assert g2.composites() == {} and h2["GELU"] == GELU and c2["groupnorm"]["RSQRT"] == GROUPNORM
    assert sum(c2["groupnorm"].values()) < sum(c0["groupnorm"].values())  # the folded form: fewer ops
    assert c2["attention"] == c1["attention"] and h2["SOFTMAX"] == ATTENTION
    assert c3["groupnorm"] == c2["groupnorm"] and c3["gelu"] == c2["gelu"]


def test_fp16_weights_are_half_the_parameters(tflite_pair, nano):
    from harness.models.unet import build_unet, count_parameters

    params = count_parameters(build_unet(NANO))
    graph = tflite_pair["baseline"][1]
    fp16, fp32 = graph.weight_bytes_by_dtype["float16"], graph.weight_bytes_by_dtype.get("float32", 0)
    # Every parameter is stored once: fp16 for the matrices, fp32 for what the recipe leaves (norm scales).
    assert abs((fp16 / 2 + fp32 / 4) - params) / params < 0.02


# ------------------------------------------------------------------------------------ cache

def test_cache_hit_builds_nothing_and_corruption_is_detected(tflite_pair, shared_cache, nano, tmp_path):
    art = tflite_pair["baseline"][0]
    again = ensure_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache)
    assert again.cached and again.path == art.path and again.sha256 == art.sha256
    assert again.meta["created_at"] == art.meta["created_at"]  # the same entry, nothing rewritten
    key, hit, _ = lookup_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache)
    assert key == art.key and hit is not None
    assert lookup_artifact(MODEL, ladder_flags("+opt_softmax"), "tflite", cache_dir=tmp_path)[1] is None  # miss

    # A copy of the entry in another cache: a flipped byte keeps the size but not the hash, a
    # truncated file loses both, a missing meta.json is not an entry.
    import shutil

    copy = cache.entry(tmp_path, art.key)
    shutil.copytree(art.path.parent, copy.dir)
    meta, why = copy.verify()
    assert meta is not None and why == ""
    path = copy.dir / art.path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "does not hash" in lookup_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=tmp_path)[2]
    path.write_bytes(bytes(data[: len(data) // 3]))
    assert "truncated" in lookup_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=tmp_path)[2]
    (copy.dir / "meta.json").unlink()
    assert "meta.json" in copy.verify()[1]


@pytest.mark.slow
def test_a_corrupt_entry_is_rebuilt(tflite_pair, shared_cache, nano):
    art = tflite_pair["baseline"][0]
    art.path.write_bytes(art.path.read_bytes()[: art.size_bytes // 3])
    rebuilt = ensure_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache)
    assert not rebuilt.cached and "truncated" in rebuilt.meta["rebuilt_because"]
    assert cache.sha256_path(rebuilt.path) == rebuilt.sha256 and rebuilt.path.stat().st_size == rebuilt.size_bytes
    assert ensure_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache).cached


def test_conversion_lock_makes_a_second_caller_wait(tmp_path):
    waited, order = [], []
    with cache.conversion_lock(tmp_path):
        def other():
            with cache.conversion_lock(tmp_path, on_wait=lambda: waited.append(True)):
                order.append("other")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(5)
    assert waited == [True] and order == ["first", "other"]


def test_plan_shares_rows_identical_under_the_mapping(tflite_pair, shared_cache, nano):
    planned = plan_artifacts(MODEL, list(LADDER), ["tflite", "coreml"], "fp16", shared_cache)
    assert [p.fmt for p in planned] == ["tflite"] * 4 + ["coreml"] * 4
    for fmt in ("tflite", "coreml"):
        shared = [p for p in planned if p.fmt == fmt and len(p.variants) > 1]
        assert [[n for n, _ in p.variants] for p in shared] == [["+flash_attention", "+winograd"]]
        assert shared[0].na() == {"+winograd": ["conv3x3"]}
    cached = {p.label for p in planned if p.fmt == "tflite" and p.cached is not None}
    assert {"baseline", "+flash_attention"} <= cached


# ------------------------------------------------------------------------------------ the reference check

def test_cached_artifact_is_judged_against_the_callers_tolerance(tflite_pair, shared_cache, nano):
    with pytest.raises(ReferenceMismatchError, match=r"variant 'baseline' \(tflite\).*tolerance 1e-09") as info:
        ensure_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache, rel_tolerance=1e-9)
    assert info.value.kind == "check"


@pytest.mark.slow
def test_failing_reference_check_is_not_cached_and_names_the_variant(nano, tmp_path):
    with pytest.raises(ReferenceMismatchError) as info:
        ensure_artifact(MODEL, ladder_flags("+opt_softmax"), "tflite", cache_dir=tmp_path, rel_tolerance=1e-9)
    msg = str(info.value)
    assert "'+opt_softmax'" in msg and "disagrees with the PyTorch reference" in msg and "1e-09" in msg
    assert info.value.kind == "check"
    left = [p for p in (tmp_path / "artifacts").iterdir() if p.name != ".lock"]
    assert left == []  # neither an entry nor a half-built directory


def test_converter_crash_fails_that_variant_and_the_others_go_on(tflite_pair, shared_cache, nano, monkeypatch,
                                                                 capsys):
    """A conversion killed mid-way (here: by the export timeout) fails its variant with the reason;
    the cached variants of the same suite are still reported and built ones stay usable."""
    from harness.export.commands import export_suite
    from harness.suite import Suite

    monkeypatch.setenv("HARNESS_EXPORT_TIMEOUT", "1")
    suite = Suite(name="t", model={"name": "nano"},
                  variants=["baseline", {"name": "wino", "flags": {"conv3x3": "winograd"}},
                            {"name": "flash-only", "flags": {"attention": "flash"}}])
    assert export_suite(suite, ["tflite"], "fp16", shared_cache) == 1
    err = capsys.readouterr().err
    assert "FAILED flash-only (tflite)" in err and "export timeout" in err
    assert "FAILED baseline" not in err and "baseline, wino (n/a: conv3x3)" in err
    with pytest.raises(ExportError, match=r"variant 'x' \(tflite\): the converter process ran past") as info:
        ensure_artifact(MODEL, Flags(attention="flash"), "tflite", cache_dir=shared_cache, variant="x")
    assert info.value.kind == "crash"
    assert ensure_artifact(MODEL, ladder_flags("baseline"), "tflite", cache_dir=shared_cache).cached


def test_second_export_builds_nothing_and_says_so(tflite_pair, shared_cache, nano, capsys):
    from harness.export.commands import export_suite
    from harness.suite import Suite

    suite = Suite(name="t", model={"name": "nano"}, variants=["baseline", "+flash_attention", "+winograd"])
    assert export_suite(suite, ["tflite"], "fp16", shared_cache) == 0
    err = capsys.readouterr().err
    assert "nothing to build: all 2 artifact(s) for 3 variant(s) are in the cache" in err
    assert "+flash_attention, +winograd (n/a: conv3x3)" in err


def test_export_prints_whole_paths_on_stdout_and_its_table_fits_80_columns(tflite_pair, shared_cache, nano, tmp_path,
                                                                           capsys, monkeypatch):
    """Issue 20: the table (stderr) fits 80 columns and has no paths; stdout has each artifact's path whole, one
    per line, or with --format json a JSON list; --format tflite, the old spelling, still picks the artifact format."""
    import json

    from harness.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nmodel: nano\nvariants: [baseline, +flash_attention, +winograd]\n")
    want = [str(tflite_pair[name][0].path) for name in ("baseline", "+flash_attention")]
    assert all(len(p) > 60 for p in want)  # longer than any column of an 80-column table
    assert main(["export", str(suite), "--dtype", "fp16", "--cache", str(shared_cache)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == want and all(Path(p).is_file() for p in out.splitlines())
    table = err[err.index("Artifacts: nano, fp16 weights"):]
    assert max(len(line) for line in table.splitlines()) <= 80, err  # the messages above it wrap in the terminal
    assert "cached" in table and "+flash_attention" in table and str(shared_cache) not in err
    assert main(["export", str(suite), "--dtype", "fp16", "--cache", str(shared_cache), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == want and [r["rows"] for r in records] == [
        ["baseline"], ["+flash_attention", "+winograd"]]
    assert {r["status"] for r in records} == {"cached"} and all(r["size_bytes"] > 0 for r in records)
    assert main(["export", str(suite), "--dtype", "fp16", "--cache", str(shared_cache), "--format", "tflite"]) == 0  # old spelling
    assert capsys.readouterr().out.splitlines() == want
    assert main(["export", str(suite), "--dtype", "fp16", "--cache", str(shared_cache), "--format", "tflite",
                 "--artifact-format", "tflite"]) == 2
    assert "old spelling of --artifact-format" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ .mlpackage

@pytest.fixture(scope="module")
def coreml_pair(nano, shared_cache):
    from harness.export.coreml import read_graph

    out = {}
    for name in ("baseline", "+flash_attention"):
        art = ensure_artifact(MODEL, ladder_flags(name), "coreml", cache_dir=shared_cache)
        out[name] = (art, read_graph(art.path))
    return out


def test_coreml_baseline_and_flash_differ_as_the_mapping_says(coreml_pair, shared_cache, nano):
    (base, g0), (flash, g1) = coreml_pair["baseline"], coreml_pair["+flash_attention"]
    h0, h1 = g0.op_histogram(), g1.op_histogram()
    assert h0.get("scaled_dot_product_attention", 0) == 0 and h0["reduce_max"] == ATTENTION
    assert h0["erf"] == GELU and h0.get("gelu", 0) == 0 and h0.get("softmax", 0) == 0
    assert h1["scaled_dot_product_attention"] == ATTENTION and h1["gelu"] == GELU and h1.get("erf", 0) == 0
    assert base.meta["removed_passes"] and not flash.meta["removed_passes"]
    # GroupNorm is primitive ops either way (Core ML has no GroupNorm op), attributed to its category.
    assert g0.category_histogram()["groupnorm"] and g1.category_histogram()["groupnorm"]
    for art in (base, flash):
        ref = art.meta["reference"]
        assert ref["spec_ok"] and ref["passed"] and ref["torch_program_rel_error"] < 1e-4
        assert art.path.suffix == ".mlpackage" and art.path.is_dir()
    assert g1.weight_bytes_by_dtype["float16"] > 0.9 * g1.weight_bytes
    wino = ensure_artifact(MODEL, ladder_flags("+winograd"), "coreml", cache_dir=shared_cache)
    assert wino.cached and wino.path == flash.path and wino.na_flags == ["conv3x3"]


@pytest.mark.slow
def test_coreml_middle_rows(nano, shared_cache):
    from harness.export.coreml import read_graph

    soft = read_graph(ensure_artifact(MODEL, ladder_flags("+opt_softmax"), "coreml", cache_dir=shared_cache).path)
    sgn = read_graph(ensure_artifact(MODEL, ladder_flags("+sgn_gelu"), "coreml", cache_dir=shared_cache).path)
    assert soft.op_histogram()["softmax"] == ATTENTION and soft.op_histogram()["erf"] == GELU
    assert sgn.op_histogram()["softmax"] == ATTENTION and sgn.op_histogram()["gelu"] == GELU


def test_export_of_a_sweep_covers_every_combination(tflite_pair, shared_cache, nano, capsys):
    """`harness export` of a sweep exports each combination's artifacts (here two combinations that need the
    same, already cached files: both say so)."""
    from harness.export.commands import export_suite
    from harness.suite import Suite

    suite = Suite(name="t", model={"name": "nano"}, variants=["baseline", "+flash_attention"],
                  sweep={"options.threads": [1, 2]})
    assert export_suite(suite, ["tflite"], "fp16", shared_cache) == 0
    err = capsys.readouterr().err
    assert "sweep combination options.threads=1" in err and "sweep combination options.threads=2" in err
    assert err.count("nothing to build: all 2 artifact(s) for 2 variant(s)") == 2
