"""End-to-end generation (issue 6): components, the timed loop, composition, the e2e report.

Whole-model tests use the tiny config; SD 1.4's text encoder and VAE decoder are only counted on
the meta device (no memory, no init).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.models.configs import (
    SD14_TEXT_ENCODER_PARAMS, SD14_VAE_DECODER_PARAMS, TINY_TEXT_ENCODER, TINY_VAE, get_model_config,
)
from harness.models.patch import apply_flags, describe_patch
from harness.models.pipeline import (
    SCHEDULERS, Pipeline, PipelineError, VAEDecoder, build_pipeline, build_scheduler, build_text_encoder,
    build_vae_decoder, count_parameters, random_token_ids,
)
from harness.models.unet import WeightsError
from harness.protocol import Execution, JobResult, JobSpec, MemoryFigures
from harness.composition import (
    COMPOSED_LABEL, CompositionError, compose_e2e, composed_components, host_scheduler_ms_per_step,
)
from harness.report.e2e import PAPER_REFERENCE_S, e2e_table
from harness.variants import LADDER
from harness.workloads.common import InputError
from harness.workloads.e2e import parse_args

ROOT = Path(__file__).resolve().parents[1]
ALL_FLAGS = LADDER[-1][1]  # + Winograd (all): every flag switched


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the CI machine's 2 cores are shared, and spinning OpenMP threads on an
    oversubscribed machine make these small models 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_pipe() -> Pipeline:
    torch.manual_seed(0)
    return build_pipeline("tiny", seed=0)


# ------------------------------------------------------------------------------------ components

def test_sd14_parameter_counts_from_configs():
    """The SD 1.4 text encoder and VAE decoder built by our functions (on the meta device: no memory)."""
    with torch.device("meta"):
        text = build_text_encoder("sd14")
        decoder = build_vae_decoder("sd14")
    assert isinstance(decoder, VAEDecoder)
    assert count_parameters(text) == SD14_TEXT_ENCODER_PARAMS == 123_060_480
    # 49,490,199 = the decoder (49,490,179) + post_quant_conv (a 4->4 1x1 conv: 16 weights + 4 biases);
    # the encoder and quant_conv of the AutoencoderKL are not kept.
    assert count_parameters(decoder) == SD14_VAE_DECODER_PARAMS == 49_490_199
    assert count_parameters(decoder.post_quant_conv) == 20
    assert count_parameters(decoder.decoder) == 49_490_179
    assert {k.split(".")[0] for k in decoder.state_dict()} == {"decoder", "post_quant_conv"}
    assert type(text).__name__ == "CLIPTextModel" and text.config.hidden_act == "quick_gelu"


def test_sd14_config_shapes():
    cfg = get_model_config("sd14")
    assert cfg.image_size == 512 and cfg.vae_scale_factor == 8 and cfg.text_tokens == 77
    assert cfg.text_encoder["hidden_size"] == cfg.unet["cross_attention_dim"] == 768
    tiny = get_model_config("tiny")
    assert tiny.text_encoder["hidden_size"] == tiny.unet["cross_attention_dim"]
    assert tiny.text_encoder["max_position_embeddings"] == tiny.text_tokens
    assert tiny.image_size == 128


def test_flags_apply_to_the_vae_decoder(tiny_pipe):
    """GroupNorm, attention and every 3x3 conv of the decoder are switched; outputs stay the same."""
    decoder = build_vae_decoder("tiny", seed=3)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = decoder(latents)
        replaced = apply_flags(decoder, ALL_FLAGS)
        out = decoder(latents)
    assert replaced["attention"] == 1 and replaced["groupnorm"] > 0 and replaced["gelu"] == 0
    assert replaced["conv3x3"] > 0 and replaced["conv3x3_winograd"] == replaced["conv3x3"]  # all stride 1
    assert describe_patch(decoder)["conv3x3"] == {"winograd_f4": replaced["conv3x3"]}
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-4


def test_checkpoint_loading_and_missing_parts(tmp_path):
    """--weights: the text encoder loads a checkpoint with SD's legacy `text_model.` keys; the VAE a
    diffusers folder; a folder without the part fails naming it."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusers import AutoencoderKL

    torch.manual_seed(7)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER))
    (tmp_path / "text_encoder").mkdir()
    text.config.to_json_file(tmp_path / "text_encoder" / "config.json")
    save_file({f"text_model.{k}": v.contiguous() for k, v in text.state_dict().items()},
              tmp_path / "text_encoder" / "model.safetensors")
    vae = AutoencoderKL(**TINY_VAE)
    vae.save_pretrained(tmp_path / "vae")

    loaded = build_text_encoder("tiny", weights=tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in text.state_dict().items())
    decoder = build_vae_decoder("tiny", weights=tmp_path)
    assert torch.equal(decoder.decoder.conv_in.weight, vae.decoder.conv_in.weight)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="text_encoder/config.json"):
        build_text_encoder("tiny", weights=empty)
    with pytest.raises(WeightsError, match="vae/config.json"):
        build_vae_decoder("tiny", weights=empty)


def test_random_token_ids_are_deterministic():
    cfg = get_model_config("sd14")
    ids = random_token_ids(cfg, "a photo of a cat", seed=0)
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[:, 0].tolist() == [49406, 49406]  # BOS
    assert (ids[0, 1:] == 49407).all()  # "" : BOS + EOS padding
    assert (ids[1, 1:6] < 49406).all() and (ids[1, 6:] == 49407).all()  # 5 words, then EOS padding
    assert torch.equal(ids, random_token_ids(cfg, "a photo of a dog", seed=0))
    assert not torch.equal(ids, random_token_ids(cfg, "a photo of a cat", seed=1))


def test_schedulers_use_sd14_betas():
    for name in SCHEDULERS:
        sched = build_scheduler(name)
        assert sched.config.beta_schedule == "scaled_linear"
        assert sched.config.beta_start == 0.00085 and sched.config.beta_end == 0.012
        assert sched.config.num_train_timesteps == 1000
    assert type(build_scheduler("dpmsolver++")).__name__ == "DPMSolverMultistepScheduler"
    assert build_scheduler("dpmsolver++").config.algorithm_type == "dpmsolver++"
    with pytest.raises(PipelineError, match="known schedulers: dpmsolver\\+\\+, euler, pndm"):
        build_scheduler("ddim")


# ------------------------------------------------------------------------------------ the loop

@pytest.mark.parametrize("scheduler, evals", [("dpmsolver++", 5), ("euler", 5), ("pndm", 6)])
def test_loop_step_count_and_shapes(tiny_pipe, scheduler, evals):
    """Every step runs the UNet once on batch 2 (guidance); PNDM (PLMS) adds one call."""
    tiny_pipe.scheduler_name = scheduler
    seen = []
    hook = tiny_pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((tuple(args[0].shape), tuple(kwargs["encoder_hidden_states"].shape))),
        with_kwargs=True)
    try:
        rgb, times = tiny_pipe.generate("a red cube", steps=5, seed=0, height=64, width=96)
    finally:
        hook.remove()
        tiny_pipe.scheduler_name = "dpmsolver++"
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    assert len(times.unet_ms) == len(times.scheduler_ms) == len(seen) == evals
    assert set(seen) == {((2, 4, 8, 12), (2, 8, 32))}
    assert rgb.std() > 0  # not a constant image


def test_generation_is_deterministic(tiny_pipe):
    a, _ = tiny_pipe.generate("x", steps=2, seed=5, height=64, width=64)
    b, _ = tiny_pipe.generate("x", steps=2, seed=5, height=64, width=64)
    c, _ = tiny_pipe.generate("x", steps=2, seed=6, height=64, width=64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(PipelineError, match="multiples of 8"):
        tiny_pipe.generate("x", steps=3, height=100, width=128)


def test_component_times_add_up_to_the_total(tiny_pipe):
    """total is one clock pair around the whole image; the components are timed separately. The
    difference is the loop's own overhead between clock reads: >= 0 and small. A slow progress
    callback is not counted."""
    def slow_callback(done: int, total: int) -> None:
        time.sleep(0.005)

    for _ in range(2):
        _, times = tiny_pipe.generate("a red cube", steps=6, seed=0, height=64, width=64, on_step=slow_callback)
        parts = (times.text_encoder_ms + sum(times.unet_ms) + sum(times.scheduler_ms) + times.decoder_ms
                 + times.prepare_ms + times.postprocess_ms)
        assert parts == pytest.approx(times.components_sum_ms)
        assert times.gap_ms == pytest.approx(times.total_ms - parts)
        assert times.gap_ms >= 0
        # 6 x 5 ms of callback would show here if it were counted.
        assert times.gap_ms < 1.0 + 0.01 * times.total_ms, times.to_dict()
        assert min(times.unet_ms) > 0 and times.text_encoder_ms > 0 and times.decoder_ms > 0


def test_workload_args_validation():
    spec = JobSpec(job_id="j", run_id="r", device="host", workload="e2e", variant="baseline",
                   model={"name": "tiny"}, workload_args={"steps": 4, "scheduler": "euler"})
    args = parse_args(spec, 128)
    assert args["steps"] == 4 and args["scheduler"] == "euler" and args["height"] == args["width"] == 128
    assert args["guidance_scale"] == 7.5
    bad = spec.model_copy(update={"workload_args": {"scheduler": "ddim"}})
    with pytest.raises(InputError, match="known schedulers"):
        parse_args(bad, 128)
    bad = spec.model_copy(update={"workload_args": {"stpes": 20}})
    with pytest.raises(InputError, match="unknown e2e workload_args"):
        parse_args(bad, 128)
    bad = spec.model_copy(update={"workload_args": {"height": 500}})
    with pytest.raises(InputError, match="height must be a positive multiple of 8"):
        parse_args(bad, 128)


# ------------------------------------------------------------------------------------ composition

def test_compose_e2e():
    # text + 20 x (UNet + host scheduler) + decoder
    assert compose_e2e(120.0, 500.0, 800.0, 2.5, 20) == pytest.approx(120 + 20 * 502.5 + 800)
    comp = composed_components(120.0, 500.0, 800.0, 2.5, 20, sources={"host_run": "r1"})
    assert comp["method"] == "composed" and comp["label"] == COMPOSED_LABEL
    assert comp["total_ms"] == pytest.approx(10970.0)
    with pytest.raises(CompositionError, match="steps"):
        compose_e2e(1, 1, 1, 1, 0)
    with pytest.raises(CompositionError, match="unet_ms"):
        compose_e2e(1, -1, 1, 1, 20)
    with pytest.raises(CompositionError, match="decoder_ms"):
        compose_e2e(1, 1, float("nan"), 1, 20)
    assert host_scheduler_ms_per_step({"scheduler_ms": [[1.0, 3.0], [2.0, 9.0]]}) == 2.5


# ------------------------------------------------------------------------------------ through the CLI

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`harness run suites/e2e_smoke.yaml --store sqlite:///TMP/x.db` for the last ladder row (every flag,
    Winograd in the decoder too), one image: one agent process (its imports take most of the time)."""
    work = tmp_path_factory.mktemp("e2e_cli")
    db = work / "x.db"
    cmd = [sys.executable, "-m", "harness", "run", str(ROOT / "suites" / "e2e_smoke.yaml"),
           "--store", f"sqlite:///{db}", "--set", "variants=[+winograd]",
           "--set", "iterations=1", "--set", "warmup_runs=0", "--set", "threads=1"]
    env = dict(os.environ, HARNESS_CACHE=str(work / "cache"))
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, db, proc.stdout.strip().splitlines()[-1]


def test_cli_run_stores_components_and_image(smoke_run):
    from PIL import Image

    from harness.store import Store

    work, db, run_id = smoke_run
    run = Store(f"sqlite:///{db}").load_run(run_id)
    assert [(j.workload, j.variant) for j in run.jobs] == [("e2e", "+winograd")]
    for job in run.jobs:
        res = job.result
        assert res.status == "ok", res.error
        comp = res.components_ms
        assert comp["method"] == "measured" and comp["steps"] == 20 and comp["unet_evals"] == 20
        assert len(comp["unet_ms"]) == len(res.samples_ms) == 1 and len(comp["unet_ms"][0]) == 20
        assert comp["total_ms"] == res.samples_ms
        assert 0 <= comp["gap_ms"][0] < 1.0 + 0.01 * comp["total_ms"][0]
        assert res.check is not None and res.check.passed
        image = Path(res.extra["image_path"])
        assert image.parent.parent.parent == work / "results" / "runs"  # beside result.json
        assert (image.parent / "result.json").is_file()
        with Image.open(image) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
        assert res.extra["prompt_tokens"] == "random" and "noise" in res.extra["image_note"]
        assert res.memory.weight_bytes == sum(res.extra["weight_bytes"].values())
    replaced = run.jobs[0].result.extra["replaced"]
    assert replaced["decoder"]["conv3x3_winograd"] == replaced["decoder"]["conv3x3"] > 0
    assert replaced["unet"]["attention"] > 0 and replaced["decoder"]["attention"] == 1


def test_e2e_table_and_report_from_the_stored_run(smoke_run):
    from harness.report.render import render
    from harness.store import Store

    work, db, run_id = smoke_run
    store = Store(f"sqlite:///{db}")
    run = store.load_run(run_id)

    # A fake Android device measured the components separately; its figure is composed with the
    # host's measured scheduler cost.
    host_sched = host_scheduler_ms_per_step(run.jobs[0].result.components_ms)
    comp = composed_components(text_ms=40.0, unet_ms=480.0, decoder_ms=900.0, scheduler_ms=host_sched, steps=20)
    fake = JobResult(job_id="android-0", status="ok", components_ms=comp,
                     execution=Execution(timing_method="benchmark_model", accelerator="gpu"),
                     memory=MemoryFigures(peak_rss_bytes=3 * 2**30))
    store.record_device(run_id, {"id": "android:FAKE01", "kind": "android", "model": "SM-S918B", "gpu": "Adreno 740"})
    for index, (variant, flags) in enumerate(LADDER[:2]):
        store.record_job(run_id, job_key=f"k-android-{index}", job_index=9 + index, device_id="android:FAKE01",
                         workload="e2e", model="tiny", variant=variant, variant_index=index, flags=flags.to_dict(),
                         options={"runtime": "litert-gpu", "dtype": "fp16"}, options_hash="h", result=fake)
    run = store.load_run(run_id)

    df = e2e_table(run)
    assert list(zip(df["device"], df["variant"])) == [
        ("android:FAKE01", "baseline"), ("android:FAKE01", "+opt_softmax"), ("host", "+winograd")]
    host = df[df["device"] == "host"]
    for _, r in host.iterrows():
        res = next(j.result for j in run.jobs if j.device_id == "host" and j.variant == r["variant"])
        c = res.components_ms
        assert r["total_s"] == pytest.approx(res.samples_ms[0] / 1000)
        assert r["unet_total_ms"] == pytest.approx(sum(c["unet_ms"][0]))
        assert r["unet_step_ms"] == pytest.approx(float(np.median(c["unet_ms"][0])))
        assert r["scheduler_ms"] == pytest.approx(sum(c["scheduler_ms"][0]))
        parts = r["text_ms"] + r["unet_total_ms"] + r["scheduler_ms"] + r["decoder_ms"]
        assert parts + r["other_ms"] == pytest.approx(r["total_s"] * 1000)
        assert 0 <= r["other_ms"] < 0.1 * r["total_s"] * 1000
        assert r["peak_kind"] == "RSS" and r["peak_mb"] > 0 and r["method"] == "measured"
    android = df[df["device"] == "android:FAKE01"].iloc[0]
    assert android["label"] == "Baseline"
    assert android["method"] == "composed"
    assert android["total_s"] * 1000 == pytest.approx(40 + 20 * (480 + host_sched) + 900)
    assert android["unet_total_ms"] == pytest.approx(9600.0) and android["peak_mb"] == pytest.approx(3072)

    html_path = work / "reports" / "r.html"
    html = render(run, "html", html_path)
    assert "End-to-end generation" in html and "UNet ms ×20" in html
    assert f"{PAPER_REFERENCE_S:.2f}" in html and "S23 Ultra" in html
    assert COMPOSED_LABEL in html and "noise" in html and "random token ids" in html
    assert 'alt="stacked end-to-end time' in html  # the breakdown plot, embedded
    for job in run.jobs:
        if job.device_id == "host":
            href = os.path.relpath(job.result.extra["image_path"], html_path.parent)
            assert f'href="{href}"' in html
            assert (html_path.parent / href).is_file()
    md = render(run, "md")
    assert "## End-to-end generation" in md and COMPOSED_LABEL in md
    csv = render(run, "csv")
    assert csv.splitlines()[0].startswith("run_id,device,step,variant,label,status,method,total_s")
    assert len(csv.splitlines()) == 4
    json.dumps(df.to_dict(orient="records"), default=str)  # the table serializes
