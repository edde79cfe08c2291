"""Table 1 on LiteRT's GPU engine (ML Drift over WebGPU/Vulkan) at SD 1.4 size, beside PyTorch on the
same GPU, and the 20-step end-to-end generation through the GPU engine.

The full-size artifacts (1.6 GB per UNet row) do not travel to a lent GPU machine, so this runs in two
places (README "The phone GPU engine on this host"):

  here:   python bench/litert_gpu.py prepare --out .skel [--dtype fp16] [--model sd14]
          exports (through the harness cache: `harness export`, reference-checked against PyTorch) the
          UNet of every ladder row, the text encoder and the VAE decoder of every row, and writes each
          as a weightless skeleton (harness.export.skeleton) plus index.json (what each file is, its
          export facts: planned tensor MB, weight MB, reference error, n/a flags).
  there:  python bench/litert_gpu.py run .skel [--iterations 30] [--torch] [--e2e] [--json OUT]
          refills every skeleton (seeded weights with the originals' statistics), then per UNet row,
          each in its own process: compile on the GPU accelerator (the harness probe: adapter, wholly
          on the GPU or not, refused ops), time CompiledModel.run (median of --iterations after warm-up;
          also with the output read back), check the GPU's output against LiteRT's CPU interpreter on
          the same file and inputs, and read the process's GPU memory (NVML); --torch adds the harness's
          torch rows and diffusers' eager / torch.compile(reduce-overhead) from bench/gpu_table1.py in
          the same call; --e2e times one 512x512 20-step image through the three components on the GPU
          (the harness's generation loop, scheduler in torch on the host CPU).

Prints the table last. Latency does not depend on weight values; outputs do, hence the engine-vs-engine
check on the refilled files (the artifacts were checked against PyTorch when they were exported).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = float(1 << 20)
E2E_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


# ------------------------------------------------------------------------------------ here: prepare

def prepare(out: Path, dtype: str, model_name: str, cache: Path | None, e2e: bool) -> int:
    from harness.export import ensure_artifact, plan_artifacts
    from harness.export.skeleton import strip
    from harness.protocol import ModelRef
    from harness.variants import LADDER

    out.mkdir(parents=True, exist_ok=True)
    model = ModelRef(name=model_name)
    components = E2E_COMPONENTS if e2e else ("unet",)
    planned = plan_artifacts(model, list(LADDER), ["tflite"], dtype, cache, components)
    index: dict = {"model": model_name, "dtype": dtype, "files": []}
    for p in planned:
        name, flags = p.variants[0]
        t0 = time.time()
        print(f"[prepare] {p.component} {name}: export ...", flush=True)
        art = ensure_artifact(model, flags, "tflite", dtype, cache, variant=name, component=p.component)
        skel = out / f"{p.component}-{art.key[:16]}.skel"
        manifest = strip(art.path, skel)
        meta = art.meta
        index["files"].append({
            "component": p.component, "rows": [n for n, _ in p.variants], "key": art.key, "skeleton": skel.name,
            "artifact_mb": art.size_bytes / MB, "skeleton_mb": skel.stat().st_size / MB,
            "weight_mb": meta.get("weight_bytes", 0) / MB, "planned_tensor_mb": meta.get("planned_tensor_bytes", 0) / MB,
            "op_count": meta.get("op_count"), "reference_rel_error": (meta.get("reference") or {}).get("rel_error"),
            "na_flags": {n: art.meta.get("na_flags") for n, _ in p.variants}, "gpu_check_here": meta.get("gpu"),
            "generated_buffers": len(manifest["generated"]),
        })
        print(f"[prepare] {p.component} {name}: {art.size_bytes / MB:.0f} MB -> {skel.stat().st_size / MB:.2f} MB "
              f"skeleton ({time.time() - t0:.0f} s; GPU check here: {(meta.get('gpu') or {}).get('fully_accelerated')})",
              flush=True)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    total = sum(f.stat().st_size for f in out.iterdir()) / MB
    print(f"{out}: {len(index['files'])} skeletons, {total:.1f} MB")
    return 0


# ------------------------------------------------------------------------------------ there: one row

def _row_child(path: str, iterations: int, warmup: int, cpu_threads: int) -> dict:
    """In a child process: compile, time and check one refilled file on the GPU (prints JSON)."""
    import numpy as np

    from harness.runtimes.litert import CpuModel
    from harness.runtimes.litert_gpu import GpuModel, gpu_memory_bytes

    out: dict = {}
    t0 = time.perf_counter()
    model = GpuModel(path)
    out["init_ms"] = (time.perf_counter() - t0) * 1000
    out["fully_accelerated"] = model.fully_accelerated
    rng = np.random.default_rng(0)
    arrays = []
    for desc in model.inputs:
        dtype = np.dtype(desc["dtype"])
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.standard_normal(desc["shape"]).astype(dtype))
        else:  # token ids: BOS, ids, EOS padding as the pipeline feeds them
            arrays.append(rng.integers(0, 1000, size=desc["shape"]).astype(dtype))
    if len(arrays) == 3 and arrays[1].size == 1:  # the UNet's timestep: a real one
        arrays[1] = np.full(arrays[1].shape, 500.0, dtype=arrays[1].dtype)
    model.set_inputs(arrays)
    t0 = time.perf_counter()
    model.run()
    out["first_run_ms"] = (time.perf_counter() - t0) * 1000
    gpu_out = np.array(model.output(), dtype=np.float32)
    for _ in range(warmup):
        model.run()
    samples, with_read = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        model.run()
        samples.append((time.perf_counter() - t0) * 1000)
    for _ in range(max(3, iterations // 5)):
        t0 = time.perf_counter()
        model.run()
        model.output()
        with_read.append((time.perf_counter() - t0) * 1000)
    out["samples_ms"], out["ms"] = samples, statistics.median(samples)
    out["ms_with_output_read"] = statistics.median(with_read)
    out["gpu_bytes"], out["gpu_memory_method"] = gpu_memory_bytes()
    del model
    cpu = CpuModel(path, threads=cpu_threads)
    cpu.set_inputs(arrays)
    t0 = time.perf_counter()
    cpu.run()
    out["cpu_ms"] = (time.perf_counter() - t0) * 1000
    ref = np.array(cpu.output(), dtype=np.float32)
    out["finite"] = bool(np.isfinite(gpu_out).all())
    out["gpu_vs_cpu_rel"] = float(np.max(np.abs(gpu_out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
    return out


def _row(path: Path, iterations: int, warmup: int, cpu_threads: int, timeout: float, driver: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_row", str(path), "--iterations", str(iterations),
           "--warmup", str(warmup), "--cpu-threads", str(cpu_threads), "--driver", driver]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    from harness.runtimes.litert_gpu import parse_engine_log

    log = parse_engine_log(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("@@row "):
            row = json.loads(line[6:])
            row["adapter"] = log.adapter.label() if log.adapter else None
            return row
    tail = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith(("INFO:", "I0000")))[-1500:]
    return {"error": f"row process ended with code {proc.returncode}: {tail}"}


# ------------------------------------------------------------------------------------ there: e2e

def e2e(paths: dict[str, Path], steps: int, model_name: str) -> dict:
    """One 512x512 image of `steps` guided steps through the three components on the GPU: the harness's
    generation loop (`Pipeline.from_functions` + `time_images`), scheduler and guidance in torch."""
    from harness.models.configs import get_model_config
    from harness.models.pipeline import ComponentFns, Pipeline, scheduler_config
    from harness.runtimes.litert import ModelFn
    from harness.runtimes.litert_gpu import GpuModel, gpu_memory_bytes
    from harness.suite import expand, load_suite
    from harness.workloads.e2e import parse_args, time_images

    import torch

    torch.set_num_threads(1)
    suite_file = "e2e_smoke.yaml" if model_name == "tiny" else "e2e.yaml"  # the model's native image size
    suite = load_suite(ROOT / "suites" / suite_file, [f"workload_args.steps={steps}", "warmup_runs=1", "iterations=1",
                                                      "check.enabled=false", f"model.name={model_name}"])
    spec = expand(suite, ["host"], "litert-gpu-e2e").jobs[0].spec
    cfg = get_model_config(model_name)
    args = parse_args(spec, cfg.image_size, cfg.vae_scale_factor)
    t0 = time.perf_counter()
    fns = {name: ModelFn(GpuModel(paths[comp]), name) for name, comp in
           (("text_encoder", "text_encoder"), ("unet", "unet"), ("decoder", "vae_decoder"))}
    init_ms = (time.perf_counter() - t0) * 1000
    pipe = Pipeline.from_functions(cfg, ComponentFns(encode=fns["text_encoder"], unet=fns["unet"],
                                                     decode=fns["decoder"]),
                                   args["scheduler"], scheduler_config(None), None, "cpu", "fp32")
    result: dict = {"extra": {}}
    images = time_images(pipe, spec, args, result)
    comp = result["components_ms"]
    rgb = images[-1][0]
    gpu_bytes, method = gpu_memory_bytes()
    return {"total_s": result["samples_ms"][0] / 1000, "warmup_total_s": result["warmup_ms"][0] / 1000,
            "text_encoder_ms": comp["text_encoder_ms"][0], "unet_ms_per_step": statistics.median(comp["unet_ms"][0]),
            "unet_calls": len(comp["unet_ms"][0]), "scheduler_ms_per_step": statistics.median(comp["scheduler_ms"][0]),
            "decoder_ms": comp["decoder_ms"][0], "init_ms": init_ms, "steps": steps, "scheduler": args["scheduler"],
            "image_finite_mean": float(rgb.mean()), "gpu_bytes": gpu_bytes, "gpu_memory_method": method}


# ------------------------------------------------------------------------------------ there: run

def run(skel: Path, iterations: int, warmup: int, with_torch: str | None, with_e2e: bool, json_out: Path | None,
        workdir: Path, cpu_threads: int, steps: int, skip_litert: bool = False,
        only_rows: list[str] | None = None, with_probe: bool = False) -> int:
    from harness.export.skeleton import refill
    from harness.runtimes.litert_gpu import probe

    index = json.loads((skel / "index.json").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    rows, files = [], {}
    for f in index["files"]:
        path = workdir / f["skeleton"].replace(".skel", ".tflite")
        files[f["key"]] = path
        if skip_litert or (f["component"] != "unet" and not with_e2e) or (
                f["component"] == "unet" and only_rows and not set(f["rows"]) & set(only_rows) and not with_e2e):
            continue
        t0 = time.time()
        done = path.with_name(path.name + ".from")  # the skeleton a refilled file came from (a second call skips it)
        stamp = f"{f['skeleton']} {(skel / f['skeleton']).stat().st_size}"
        if path.is_file() and done.is_file() and done.read_text() == stamp:
            continue
        refill(skel / f["skeleton"], path)
        done.write_text(stamp)
        print(f"[refill] {f['component']} {','.join(f['rows'])}: {time.time() - t0:.0f} s", flush=True)
    adapter, driver = None, "auto"
    for f in index["files"]:
        if f["component"] != "unet" or skip_litert or (only_rows and not set(f["rows"]) & set(only_rows)):
            continue
        path = files[f["key"]]
        t0 = time.time()
        row = {"row": f"litert-gpu {f['rows'][0]}", "rows": f["rows"], "weight_mb": f["weight_mb"],
               "planned_tensor_mb": f["planned_tensor_mb"], "op_count": f["op_count"],
               "export_ref_err": f["reference_rel_error"]}
        if with_probe:  # a separate compile in a child (engine crash safety, refused ops named)
            report = probe(path)
            row.update(fully_accelerated=report.fully_accelerated, probe=report.summary())
            if not report.fully_accelerated:
                row["error"] = report.summary() + " " + report.error
            driver = report.driver or driver
        if "error" not in row:  # the row's own child compiles GPU-only: it fails unless wholly on the GPU
            if driver == "auto":  # no probe: the first driver `auto` would try (the environment's, on a GPU machine)
                from harness.runtimes.litert_gpu import driver_candidates

                driver = driver_candidates("auto")[0]
            got = _row(path, iterations, warmup, cpu_threads, timeout=1800, driver=driver)
            row.update(got)
            row.setdefault("fully_accelerated", bool(got.get("fully_accelerated")))
        row["wall_s"] = round(time.time() - t0, 1)
        adapter = adapter or row.get("adapter")
        rows.append(row)
        if json_out:  # as it goes: a call cut off at its limit keeps what it measured
            json_out.write_text(json.dumps({"model": index["model"], "adapter": adapter, "rows": rows}, indent=1,
                                           default=str))
        print(f"[litert-gpu] {row['row']}: {row.get('ms')} ms, GPU vs CPU {row.get('gpu_vs_cpu_rel')}, "
              f"fully accelerated {row['fully_accelerated']}, GPU MB {(row.get('gpu_bytes') or 0) / MB:.0f}", flush=True)
    e2e_row = None
    if with_e2e:
        paths = {}
        for comp in E2E_COMPONENTS:
            f = next(f for f in index["files"] if f["component"] == comp and "+flash_attention" in f["rows"])
            paths[comp] = files[f["key"]]
        try:
            from harness.runtimes.litert_gpu import apply_env, driver_env

            if driver == "auto":
                from harness.runtimes.litert_gpu import driver_candidates

                driver = driver_candidates("auto")[0]
            apply_env(driver_env(driver))
            e2e_row = e2e(paths, steps, index["model"])
        except Exception as exc:  # noqa: BLE001 - report it, keep the table
            e2e_row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"[e2e] {e2e_row}", flush=True)
    if json_out:
        json_out.write_text(json.dumps({"model": index["model"], "adapter": adapter, "rows": rows, "e2e": e2e_row},
                                       indent=1, default=str))
    torch_rows: list[dict] = []
    gpu_name = None
    if with_torch:
        import torch

        sys.path.insert(0, str(ROOT / "bench"))
        import gpu_table1

        gpu_name = torch.cuda.get_device_name(0)
        if with_torch in ("all", "harness"):
            torch_rows += gpu_table1.harness_rows(iterations, None)
        if with_torch in ("all", "diffusers"):
            drows, _ = gpu_table1.diffusers_rows(iterations, skip_compile=False, modes=("reduce-overhead",))
            torch_rows += drows
    doc = {"model": index["model"], "adapter": adapter, "gpu": gpu_name, "dtype": index["dtype"], "rows": rows,
           "torch_rows": torch_rows,
           "e2e": e2e_row}
    if json_out:
        json_out.write_text(json.dumps(doc, indent=1, default=str))
    print(render(doc))
    return 0


def render(doc: dict) -> str:
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"{doc.get('model', 'sd14')} UNet iteration, batch 2, {doc['dtype']} weights; LiteRT GPU engine on "
             f"{doc['adapter']}"
             + (f"; torch on {doc['gpu']}" if doc.get("gpu") else ""),
             "| row | ms | ms + read | planned tensor MB | GPU MB | weights MB | fully on GPU | GPU vs CPU err |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in doc["rows"]:
        name = r["row"] + (f" (= {', '.join(r['rows'][1:])})" if len(r["rows"]) > 1 else "")
        if r.get("error") and not r.get("ms"):
            lines.append(f"| {name} | ERROR: {r['error'][:200]} |")
            continue
        lines.append(f"| {name} | {f(r.get('ms'), '.2f')} | {f(r.get('ms_with_output_read'), '.2f')} | "
                     f"{f(r.get('planned_tensor_mb'), ',.0f')} | {f((r.get('gpu_bytes') or 0) / MB or None, ',.0f')} | "
                     f"{f(r.get('weight_mb'), ',.0f')} | {'yes' if r.get('fully_accelerated') else 'NO'} | "
                     f"{f(r.get('gpu_vs_cpu_rel'), '.1e')} |")
    for r in doc.get("torch_rows") or []:
        if r.get("error") and not r.get("ms"):
            lines.append(f"| torch: {r['row']} | ERROR: {r['error'][:200]} |")
            continue
        lines.append(f"| torch: {r['row']} | {f(r.get('ms'), '.2f')} | - | {f(r.get('tensor_mb'), ',.0f')} (measured) | - | "
                     f"{f(r.get('weight_mb'), ',.0f')} | CUDA | {f(r.get('err'), '.1e')} (vs diffusers) |")
    e = doc.get("e2e")
    if e:
        if e.get("error"):
            lines.append(f"\nend to end through litert-gpu: ERROR {e['error']}")
        else:
            lines.append(f"\nend to end through litert-gpu (+FlashAttention row, {e['steps']} steps, {e['scheduler']}): "
                         f"{e['total_s']:.2f} s per image (text encoder {e['text_encoder_ms']:.1f} ms, UNet "
                         f"{e['unet_ms_per_step']:.1f} ms x {e['unet_calls']}, scheduler {e['scheduler_ms_per_step']:.1f} "
                         f"ms/step on the host CPU, decoder {e['decoder_ms']:.1f} ms); first image "
                         f"{e['warmup_total_s']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="export and strip the full-size artifacts (here)")
    p.add_argument("--out", type=Path, default=ROOT / ".skel")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32", "int8"))
    p.add_argument("--model", default="sd14")
    p.add_argument("--cache", type=Path)
    p.add_argument("--unet-only", action="store_true", help="leave out the text encoder and VAE decoder")
    r = sub.add_parser("run", help="refill, compile, time and check on the GPU (there)")
    r.add_argument("skeletons", type=Path)
    r.add_argument("--iterations", type=int, default=30)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--torch", nargs="?", const="all", choices=("all", "harness", "diffusers"),
                   help="add torch rows of bench/gpu_table1.py on the CUDA GPU: the harness's ladder (CUDA graphs), "
                        "diffusers' eager and torch.compile(mode='reduce-overhead'), or all (default)")
    r.add_argument("--skip-litert", action="store_true", help="only the torch rows (with --torch)")
    r.add_argument("--rows", help="comma-separated ladder rows of the litert-gpu table (default: all)")
    r.add_argument("--probe", action="store_true", help="compile each file in a probe child first (names refused "
                   "ops, survives an engine crash; a second compile)")
    r.add_argument("--e2e", action="store_true", help="time a 20-step 512x512 image through litert-gpu")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--json", type=Path)
    r.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "litert_gpu_bench")
    r.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    c = sub.add_parser("_row")
    c.add_argument("path")
    c.add_argument("--iterations", type=int, default=30)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--cpu-threads", type=int, default=1)
    c.add_argument("--driver", default="environment")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args.out, args.dtype, args.model, args.cache, not args.unet_only)
    if args.cmd == "_row":
        from harness.runtimes.litert_gpu import apply_env, driver_env

        apply_env(driver_env(args.driver))
        print("@@row " + json.dumps(_row_child(args.path, args.iterations, args.warmup, args.cpu_threads), default=str),
              flush=True)
        os._exit(0)  # skip the engine's teardown
    return run(args.skeletons, args.iterations, args.warmup, args.torch, args.e2e, args.json, args.workdir,
               args.cpu_threads, args.steps, args.skip_litert, args.rows.split(",") if args.rows else None,
               args.probe)


if __name__ == "__main__":
    sys.exit(main())
