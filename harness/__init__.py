"""Benchmark harness for large diffusion models on phone GPUs."""

__version__ = "0.1.0"
