"""The .tflite graphs a job names (`options.extra.graph`, `options.extra.graphs.{text_encoder,unet,
vae_decoder}`) and their check; Android and AI Hub read them the same way."""
from __future__ import annotations

from pathlib import Path

from harness.devices.base import JobFailure
from harness.protocol import JobSpec

# The .tflite components of an `e2e` job, in the order they run (one benchmark_model run each).
E2E_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
GRAPHS_HINT = ("give the three graphs with --set options.extra.graphs.text_encoder=PATH --set "
               "options.extra.graphs.unet=PATH --set options.extra.graphs.vae_decoder=PATH (host .tflite files)")


def given_graph(spec: JobSpec, component: str = "unet") -> tuple[str, str | None]:
    """(where it came from, host path or None) of the user's .tflite for `component`.

    `options.extra.graphs` maps text_encoder, unet and vae_decoder to host .tflite paths; when given, all
    three are required (a partial or malformed mapping is an input failure). `options.extra.graph` is the
    UNet's (the unet_iteration workload, or the e2e UNet when `graphs` is absent).
    """
    extra = spec.options.extra
    graphs = extra.get("graphs")
    if graphs is not None:
        if not isinstance(graphs, dict):
            raise JobFailure("input", f"options.extra.graphs must map {', '.join(E2E_COMPONENTS)} to host .tflite "
                              f"paths, got {graphs!r}; {GRAPHS_HINT}")
        unknown = sorted(set(map(str, graphs)) - set(E2E_COMPONENTS))
        if unknown:
            raise JobFailure("input", f"options.extra.graphs: unknown component(s) {', '.join(unknown)}; known: "
                              f"{', '.join(E2E_COMPONENTS)}")
        missing = [c for c in E2E_COMPONENTS if not graphs.get(c)]
        if missing:
            raise JobFailure("input", f"options.extra.graphs lacks {', '.join(missing)}: when any graph is given, "
                              f"all three are required; {GRAPHS_HINT}")
        if component == "unet" and extra.get("graph") and spec.workload != "e2e":
            return "options.extra.graph", str(extra["graph"])
        return f"options.extra.graphs.{component}", str(graphs[component])
    if component == "unet" and extra.get("graph"):
        return "options.extra.graph", str(extra["graph"])
    return "options.extra.graph", None


TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of a .tflite (bytes 4..8)


def check_tflite(path: Path, where: str) -> None:
    """Raise an input JobFailure unless `path` is a readable file with the .tflite identifier."""
    if not path.is_file():
        raise JobFailure("input", f"{where} {str(path)!r} is not a file; give the host path of a .tflite, or "
                          "leave it out to export the variant")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise JobFailure("input", f"{where} {str(path)!r} cannot be read: {exc}") from None
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise JobFailure("input", f"{where} {str(path)!r} is not a .tflite model (no {TFLITE_IDENTIFIER.decode()} "
                          "flatbuffer identifier at byte 4); give a LiteRT .tflite file")
