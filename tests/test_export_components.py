"""harness.export beyond the UNet of a built-in model: the text encoder and VAE decoder components,
int8 weight-only artifacts, factory models and ReLU attention; and the keys of the existing artifacts,
which must not move.

Real conversions of the `tiny` config (and the tiny MobileDiffusion-like factory), shared through
one module-scoped cache: each takes seconds to a minute on a 2-core machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.export import (
    COMPONENTS, DEFAULT_REL_TOLERANCE, DTYPES, ExportError, UnknownComponentError, cache, ensure_artifact,
    lookup_artifact, plan_artifacts,
)
from harness.export.inspect import format_report, inspect_artifact
from harness.models.configs import get_model_config
from harness.protocol import ModelRef
from harness.variants import LADDER, Flags, ladder_flags

TINY = ModelRef(name="tiny")
FACTORY = ModelRef(factory="harness.models.mobilediffusion:build_tiny_unet")
TFLITE_VERSIONS = {"litert-torch": "1.0", "ai-edge-litert": "2.0", "ai-edge-quantizer": "0.1", "torch": "2.5",
                   "diffusers": "0.30"}
COREML_VERSIONS = {"coremltools": "8.0", "torch": "2.5", "diffusers": "0.30"}


@pytest.fixture(scope="module")
def comp_cache(tmp_path_factory, seed_cache) -> Path:
    """The module's cache, started from the session's tiny fp16 baseline components (tests/conftest.py)."""
    return seed_cache(tmp_path_factory.mktemp("export-components-cache"))


# ------------------------------------------------------------------------------------ keys (no conversion)

def test_keys_of_existing_unet_artifacts_are_unchanged():
    """Computed on the code before components/int8/factory export existed: a full-size artifact cached
    under these keys must stay a cache hit. The .tflite keys moved once, on purpose, with
    EXPORT_VERSION["tflite"] 2 (the GPU-clean forms change every .tflite's graph; the old keys were
    7bd42f5f... and 639de05d...); the Core ML keys did not."""
    expected = {
        ("tiny", "baseline", "tflite", "fp16"): "8d443e5489a6c7c309d7fe58e45e40b38130a911",
        ("tiny", "+flash_attention", "coreml", "fp32"): "2594cf6d55832b4e83b85eb18b9c2fddf6f2ff42",
        ("sd14", "baseline", "tflite", "fp16"): "6433dd4ec2c6f58593208fd33cd4dc52e680a817",
        ("sd14", "+flash_attention", "coreml", "fp16"): "73b169fea48677c85db3392794a26d438bd75841",
    }
    for (name, row, fmt, dtype), key in expected.items():
        versions = TFLITE_VERSIONS if fmt == "tflite" else COREML_VERSIONS
        args = (ModelRef(name=name), get_model_config(name), ladder_flags(row), fmt, dtype, versions)
        assert cache.artifact_key(*args)[0] == key
        assert cache.artifact_key(*args, component="unet")[0] == key
        doc = cache.artifact_key(*args)[1]
        assert "component" not in doc and "model_source" not in doc
    assert cache.artifact_filename("sd14", "8d443e5489a6c7c309d7fe58e45e40b38130a911", "tflite") == \
        "unet-sd14-8d443e5489a6c7c3.tflite"


def test_component_keys_and_which_rows_share_them():
    cfg = get_model_config("tiny")

    def key(row, component, fmt="tflite", dtype="fp16"):
        return cache.artifact_key(TINY, cfg, ladder_flags(row), fmt, dtype, TFLITE_VERSIONS, component)[0]

    # The text encoder: one artifact for every row; the decoder follows its blocks' flags.
    assert len({key(row, "text_encoder") for row, _ in LADDER}) == 1
    assert key("baseline", "vae_decoder") != key("+opt_softmax", "vae_decoder") != key("+sgn_gelu", "vae_decoder")
    assert key("+flash_attention", "vae_decoder") == key("+winograd", "vae_decoder")  # conv3x3 n/a
    keys = {key("baseline", c) for c in COMPONENTS} | {key("baseline", "unet", dtype="int8")}
    assert len(keys) == 4
    assert cache.artifact_filename("sd14", "ab" * 20, "tflite", "text_encoder").startswith("text_encoder-sd14-abab")
    planned = plan_artifacts(TINY, list(LADDER), ["tflite"], "fp16", None, COMPONENTS)
    by_comp = {c: [p for p in planned if p.component == c] for c in COMPONENTS}
    assert [len(by_comp[c]) for c in COMPONENTS] == [4, 1, 4]
    assert [n for n, _ in by_comp["text_encoder"][0].variants] == [n for n, _ in LADDER]
    assert by_comp["text_encoder"][0].na()["+winograd"] == ["softmax", "groupnorm_gelu", "attention", "conv3x3"]


def test_factory_and_unet_config_keys_hash_their_source(tmp_path):
    import json

    from harness.models import loaders

    doc = cache.artifact_key(FACTORY, {"factory": FACTORY.factory}, Flags(), "tflite", "fp16", TFLITE_VERSIONS)[1]
    src = doc["model_source"]
    assert src["factory"] == FACTORY.factory and src["module_file"] == "mobilediffusion.py"
    assert len(src["module_sha256"]) == 64
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"sample_size": 8, "cross_attention_dim": 32}))
    ref = ModelRef(unet_config=str(path))
    first = cache.artifact_key(ref, loaders.config_model_config(ref), Flags(), "tflite", "fp16", TFLITE_VERSIONS)
    path.write_text(json.dumps({"sample_size": 8, "cross_attention_dim": 32}) + "\n")  # same config, new bytes
    second = cache.artifact_key(ref, loaders.config_model_config(ref), Flags(), "tflite", "fp16", TFLITE_VERSIONS)
    assert first[1]["model"] == second[1]["model"] and first[0] != second[0]


def test_unknown_component_and_dtype_are_clear_errors(comp_cache):
    with pytest.raises(UnknownComponentError, match="unknown component 'clip'; known components: unet, "
                                                    "text_encoder, vae_decoder"):
        ensure_artifact(TINY, Flags(), "tflite", cache_dir=comp_cache, component="clip")
    with pytest.raises(UnknownComponentError, match="known components"):
        lookup_artifact(TINY, Flags(), "tflite", cache_dir=comp_cache, component="vae")
    with pytest.raises(UnknownComponentError, match="known components"):
        plan_artifacts(TINY, list(LADDER), ["tflite"], "fp16", comp_cache, ("unet", "decoder"))
    with pytest.raises(ExportError, match="not 'int4'; pick one with --dtype") as info:
        ensure_artifact(TINY, Flags(), "tflite", "int4", cache_dir=comp_cache)
    assert info.value.kind == "input" and DTYPES == ("fp16", "fp32", "int8")
    with pytest.raises(ExportError, match="defines a UNet only") as info:
        ensure_artifact(FACTORY, Flags(), "tflite", cache_dir=comp_cache, component="text_encoder")
    assert info.value.kind == "input"


# ------------------------------------------------------------------------------------ .tflite components

@pytest.fixture(scope="module")
def tflite_components(comp_cache):
    return {c: ensure_artifact(TINY, ladder_flags("baseline"), "tflite", cache_dir=comp_cache, component=c)
            for c in ("text_encoder", "vae_decoder")}


def test_tflite_text_encoder_and_decoder(tflite_components, comp_cache):
    from harness.export.tflite import load_interpreter, signature_io

    cfg = get_model_config("tiny")
    s = cfg.unet["sample_size"]
    want = {"text_encoder": ([("input_ids", [cfg.batch, cfg.text_tokens], np.int32)],
                             [cfg.batch, cfg.text_tokens, cfg.text_encoder["hidden_size"]]),
            "vae_decoder": ([("latents", [1, 4, s, s], np.float32)], [1, 3, s * 8, s * 8])}
    for component, art in tflite_components.items():
        assert art.path.name.startswith(f"{component}-tiny-") and art.meta["component"] == component
        ref = art.meta["reference"]
        assert ref["passed"] and 0 < ref["rel_error"] < DEFAULT_REL_TOLERANCE["fp16"]
        interpreter = load_interpreter(art.path)
        inputs, outputs = signature_io(interpreter)
        assert [(i["name"], list(i["shape"]), i["dtype"]) for i in inputs] == want[component][0]
        assert list(outputs[0]["shape"]) == want[component][1]
        report = inspect_artifact(art.path)
        assert report["component"] == component and report["weight_bytes_by_dtype"]["float16"] > 0
        assert f"component {component}" in format_report(report)
    hist = inspect_artifact(tflite_components["vae_decoder"].path)["categories"]
    # The decoder's blocks follow the flags: decomposed GroupNorm, naive softmax in its mid-block attention.
    assert hist["groupnorm"].get("RSQRT", 0) > 0 and hist["attention"].get("REDUCE_MAX") == 1
    # The text encoder takes every row: +winograd finds the same file in the cache.
    again = ensure_artifact(TINY, ladder_flags("+winograd"), "tflite", cache_dir=comp_cache, component="text_encoder")
    assert again.cached and again.path == tflite_components["text_encoder"].path
    assert again.na_flags == ["softmax", "groupnorm_gelu", "attention", "conv3x3"]


def test_tflite_int8_weights(comp_cache):
    art = ensure_artifact(TINY, ladder_flags("baseline"), "tflite", "int8", cache_dir=comp_cache,
                          component="vae_decoder")
    by_dtype = art.meta["weight_bytes_by_dtype"]
    assert by_dtype["int8"] > 0.9 * art.meta["weight_bytes"] and by_dtype.get("float32", 0) < 0.05 * by_dtype["int8"]
    assert "float16" not in by_dtype and art.meta["weight_mb_by_dtype"]["int8"] > 0
    ref = art.meta["reference"]
    # Coarser than fp16 (about 1e-3 here), still within the int8 tolerance.
    assert ref["passed"] and 5e-3 < ref["rel_error"] < DEFAULT_REL_TOLERANCE["int8"]
    report = inspect_artifact(art.path)
    assert report["weight_bytes_by_dtype"]["int8"] == by_dtype["int8"] and "int8" in format_report(report)
    # On LiteRT's GPU engine (SwiftShader): wholly on it (its Linears are 1x1 convolutions in int8 files),
    # and its output is the CPU interpreter's.
    from harness.runtimes.litert_gpu import swiftshader_icd

    if swiftshader_icd() is not None:
        import numpy as np

        from harness.runtimes.litert import CpuModel, open_model
        from harness.runtimes.litert_gpu import probe

        assert art.meta["gpu"]["fully_accelerated"] is True
        gpu = open_model(art.path, "litert-gpu", gpu=probe(art.path))
        cpu = CpuModel(art.path)
        x = np.random.default_rng(0).standard_normal(tuple(int(d) for d in cpu.inputs[0]["shape"])).astype(np.float32)
        for m in (gpu, cpu):
            m.set_inputs([x])
            m.run()
        out, ref = np.asarray(gpu.output()), np.asarray(cpu.output())
        assert float(np.abs(out - ref).max() / np.abs(ref).max()) < 1e-3


def test_factory_model_with_relu_attention_exports_to_tflite(comp_cache):
    from harness.export.tflite import read_graph

    relu = Flags(softmax="optimized", groupnorm_gelu="fused", attention="relu", conv3x3="winograd")
    art = ensure_artifact(FACTORY, relu, "tflite", cache_dir=comp_cache, variant="+relu_attention")
    assert art.path.name.startswith("unet-factory_harness_models_mobilediffusion_build_tiny_unet-")
    assert art.meta["key_doc"]["model_source"]["factory"] == FACTORY.factory
    assert art.meta["reference"]["passed"] and "ReLU attention" in art.meta["reference"]["method"]
    graph = read_graph(art.path)
    hist, cats = graph.op_histogram(), graph.category_histogram()
    assert hist.get("SOFTMAX", 0) == 0 and "odml.scaled_dot_product_attention" not in graph.composites()
    assert cats["attention"].get("RELU", 0) > 0 and cats["attention"].get("BATCH_MATMUL", 0) > 0
    assert graph.composites() == {} and cats["gelu"].get("GELU", 0) > 0  # the other flags still apply
    # softmax does not apply under relu attention: the naive-softmax twin is the same artifact.
    twin = ensure_artifact(FACTORY, Flags(groupnorm_gelu="fused", attention="relu"), "tflite", cache_dir=comp_cache)
    assert twin.cached and twin.path == art.path

    # The host's litert-cpu runtime runs it: the factory's declared input shapes, the ReLU reference.
    from harness.protocol import CheckPolicy, JobSpec, RuntimeOptions
    from harness.workloads.litert import run_litert

    spec = JobSpec(job_id="f", run_id="r", device="host", model=FACTORY, variant="+relu_attention", flags=relu.to_dict(),
                   options=RuntimeOptions(runtime="litert-cpu", dtype="fp16"), artifact=str(art.path),
                   check=CheckPolicy(rel_tolerance=5e-2))
    result: dict = {"extra": {}}
    run_litert(spec, result)
    assert result.get("error") is None, result.get("error")
    assert result["check"].passed and result["samples_ms"]


def test_e2e_suite_exports_every_component(tflite_components, comp_cache, capsys):
    from harness.export.commands import export_suite, suite_components
    from harness.suite import Suite

    suite = Suite(name="t", model={"name": "tiny"}, workload="e2e",
                  variants=["baseline", {"name": "wino", "flags": {"conv3x3": "winograd"}}])
    assert suite_components(suite) == COMPONENTS
    assert export_suite(suite, ["tflite"], "fp16", comp_cache) == 0
    err = capsys.readouterr().err
    # the session's tiny fp16 baseline components are in the cache (tests/conftest.py): nothing to convert
    assert "nothing to build: all 3 artifact(s) for 2 variant(s) are in the cache" in err
    assert "text_encoder tflite: rows baseline (n/a: conv3x3), wino (n/a: conv3x3)" not in err
    assert "text_encoder tflite: rows baseline, wino (n/a: conv3x3) are the same artifact under the mapping " \
           "(the flags do not apply to it); built once" in err
    assert "vae_decoder tflite: rows baseline, wino (n/a: conv3x3)" in err
    unet = lookup_artifact(TINY, Flags(), "tflite", cache_dir=comp_cache)[1]
    assert unet is not None and unet.path.name.startswith("unet-tiny-") and unet.meta["reference"]["passed"]


# ------------------------------------------------------------------------------------ .mlpackage

def test_coreml_text_encoder_and_int8_decoder(comp_cache):
    enc = ensure_artifact(TINY, ladder_flags("baseline"), "coreml", cache_dir=comp_cache, component="text_encoder")
    cfg = get_model_config("tiny")
    assert enc.meta["reference"]["spec_ok"] and enc.meta["reference"]["passed"]
    assert enc.meta["input_shapes"] == {"input_ids": [cfg.batch, cfg.text_tokens]}
    assert enc.path.name.startswith("text_encoder-tiny-") and enc.path.suffix == ".mlpackage"
    dec = ensure_artifact(TINY, Flags(attention="relu"), "coreml", "int8", cache_dir=comp_cache,
                          component="vae_decoder")
    ref = dec.meta["reference"]
    assert ref["spec_ok"] and ref["passed"] and dec.meta["input_shapes"] == {"latents": [1, 4, 16, 16]}
    # The torch program with the weights rounded as the int8 pass rounds them: a real, small error.
    assert 1e-4 < ref["torch_program_rel_error"] < DEFAULT_REL_TOLERANCE["int8"]
    by_dtype = dec.meta["weight_bytes_by_dtype"]
    assert by_dtype["int8"] > 0.8 * dec.meta["weight_bytes"] and by_dtype.get("float32", 0) < 0.01 * by_dtype["int8"]
    report = inspect_artifact(dec.path)
    assert report["categories"]["attention"].get("relu") == 1 and "softmax" not in report["categories"]["attention"]
    assert not any(op.startswith("constexpr") for cat in report["categories"].values() for op in cat)
