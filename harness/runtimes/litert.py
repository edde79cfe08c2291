"""One interface over LiteRT's two host engines, so a workload runs a .tflite the same way on either:

    model = open_model(path, "litert-cpu", threads=2)            # Interpreter (XNNPACK)
    model = open_model(path, "litert-gpu", gpu=report, ...)      # CompiledModel on the GPU accelerator
    model.set_inputs([a, b, c]); model.run(); out = model.output()

Inputs and outputs follow the serving signature's order. For litert-gpu, `gpu` is the
`harness.runtimes.litert_gpu.ProbeReport` of the same file: it says which Vulkan driver worked, and
this process takes that driver's environment before the engine starts.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

LITERT_RUNTIMES: tuple[str, ...] = ("litert-cpu", "litert-gpu")


class CpuModel:
    """ai-edge-litert's Interpreter (XNNPACK) with its tensors allocated."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from harness.export.tflite import load_interpreter, signature_io

        self.path = str(path)
        self.interpreter = load_interpreter(path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs, self.outputs = signature_io(self.interpreter)
        self.fully_accelerated = True  # nothing to delegate: the CPU is the unit asked for

    def set_inputs(self, arrays: Sequence[Any]) -> None:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"{self.path} takes {len(self.inputs)} inputs "
                             f"({[i['name'] for i in self.inputs]}), got {len(arrays)}")
        for desc, arr in zip(self.inputs, arrays):
            self.interpreter.set_tensor(desc["index"], np.array(
                arr, dtype=desc["dtype"], order="C").reshape(tuple(int(d) for d in desc["shape"])))

    def run(self) -> None:
        self.interpreter.invoke()

    def output(self, index: int = 0) -> np.ndarray:
        return self.interpreter.get_tensor(self.outputs[index]["index"])  # a copy


def open_model(path: str | os.PathLike, runtime: str, *, threads: int | None = None, gpu: Any = None,
               allow_cpu: bool = False, precision: str = "auto"):
    """A loaded model of `runtime` (LITERT_RUNTIMES) ready to run."""
    if runtime == "litert-cpu":
        return CpuModel(path, threads)
    if runtime == "litert-gpu":
        from harness.runtimes.litert_gpu import GpuModel, apply_env, driver_env

        if gpu is None or not gpu.driver:
            raise ValueError("open_model(..., 'litert-gpu') needs the file's probe report (harness.runtimes."
                             "litert_gpu.probe) with the driver that worked")
        apply_env(driver_env(gpu.driver))
        return GpuModel(path, allow_cpu=allow_cpu, precision=precision)
    raise ValueError(f"open_model: {runtime!r} is not a LiteRT runtime; known: {', '.join(LITERT_RUNTIMES)}")


class ModelFn:
    """A loaded model as a torch-in, torch-out callable (what the e2e loop's ComponentFns holds)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self.inputs = model.inputs

    def __call__(self, *tensors):
        import torch

        arrays = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in tensors]
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the {self.name} artifact takes {len(self.inputs)} inputs, got {len(arrays)}")
        self.model.set_inputs(arrays)
        self.model.run()
        return torch.from_numpy(np.array(self.model.output()))
