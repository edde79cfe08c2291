"""Suite schema (YAML, validated with pydantic) and its expansion into a Plan of jobs.

A suite declares the model, the workload, the variants (the paper's ladder or explicit flag sets),
runtime options, the measurement policy and the devices. `--set key=value` overrides any field:
`key` is a dotted path (`measure.iterations`) or a field name that is unique in the schema
(`iterations`, `runtime`).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.models.configs import MODELS
from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
from harness.variants import LADDER, Flags


class SuiteError(ValueError):
    """A suite that cannot be used; the message names the file, line and field, and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteModel(ModelRef):
    @model_validator(mode="after")
    def _loadable(self) -> "SuiteModel":
        """A built-in name must be known; a unet_config must be a readable JSON config; a factory must
        import and be callable (harness.models.loaders raises errors naming the problem and the fix)."""
        from harness.models import loaders

        if self.kind == "builtin" and self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; known models: {', '.join(MODELS)}, or give "
                             "model: {unet_config: path/to/config.json} or model: {factory: 'module:function'}")
        try:
            if self.kind == "unet_config":
                loaders.read_unet_config(self.unet_config)
            elif self.kind == "factory":
                loaders.load_factory(self.factory)
        except loaders.ModelLoadError as exc:
            raise ValueError(str(exc)) from None
        return self


class VariantSpec(_Strict):
    name: str
    flags: dict[str, Any] = Field(default_factory=dict)

    @field_validator("flags")
    @classmethod
    def _valid_flags(cls, v: dict[str, Any]) -> dict[str, Any]:
        Flags.from_dict(v)  # raises ValueError naming the flag and the known values
        return v


class SuiteMeasure(MeasurePolicy):
    shuffle: bool = False  # run each device's jobs in a shuffled order
    shuffle_seed: int = 0


class Suite(_Strict):
    name: str
    description: str = ""
    model: SuiteModel = Field(default_factory=SuiteModel)
    workload: Literal["unet_iteration", "e2e"] = "unet_iteration"
    # "ladder" (the five cumulative rows of Table 1), or a list of ladder step names and
    # {name, flags} entries.
    variants: Literal["ladder"] | list[str | VariantSpec] = "ladder"
    options: RuntimeOptions = Field(default_factory=RuntimeOptions)
    measure: SuiteMeasure = Field(default_factory=SuiteMeasure)
    check: CheckPolicy = Field(default_factory=CheckPolicy)
    devices: list[str] = Field(default_factory=lambda: ["host"])
    workload_args: dict[str, Any] = Field(default_factory=dict)
    # Verdict threshold overrides: [{match: {device|workload|variant|options_hash: regex}, set: {...}}]
    # (harness.compare.parse_threshold_overrides; README "Regression detection").
    thresholds: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("thresholds")
    @classmethod
    def _valid_thresholds(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from harness.compare import parse_threshold_overrides

        parse_threshold_overrides(v)  # raises ValueError naming the entry and the problem
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("variants")
    @classmethod
    def _known_steps(cls, v: Any) -> Any:
        if isinstance(v, list):
            names = [n for n, _ in LADDER]
            for item in v:
                if isinstance(item, str) and item not in names:
                    raise ValueError(f"unknown ladder step {item!r}; known steps: {', '.join(names)}, "
                                     "or give {name: ..., flags: {...}}")
            if not v:
                raise ValueError("variants is empty; use 'ladder' or list at least one variant")
        return v

    def variant_list(self) -> list[tuple[str, Flags]]:
        if self.variants == "ladder":
            return list(LADDER)
        ladder = dict(LADDER)
        out = []
        for item in self.variants:
            if isinstance(item, str):
                out.append((item, ladder[item]))
            else:
                out.append((item.name, Flags.from_dict(item.flags)))
        return out


# ---------------------------------------------------------------- loading, with line numbers

def _line_map(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_line_map(value, path + (key.value,)))
            lines[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines.update(_line_map(value, path + (i,)))
    return lines


def _schema_leaves(model: type[BaseModel], prefix: tuple = ()) -> dict[str, list[tuple]]:
    """Field name -> dotted paths where it occurs, for resolving `--set name=value`."""
    out: dict[str, list[tuple]] = {}
    for name, info in model.model_fields.items():
        path = prefix + (name,)
        out.setdefault(name, []).append(path)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for leaf, paths in _schema_leaves(ann, path).items():
                out.setdefault(leaf, []).extend(paths)
    return out


def resolve_override_key(key: str) -> tuple[str, ...]:
    if "." in key:
        return tuple(key.split("."))
    if key in Suite.model_fields:
        # A top-level name wins, except a section name: `--set runtime=...` means options.runtime.
        ann = Suite.model_fields[key].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return (key,)
    paths = [p for p in _schema_leaves(Suite).get(key, []) if len(p) > 1]
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise SuiteError(f"--set {key}=...: no suite field is named {key!r}; use a dotted path such as "
                         "measure.iterations or options.runtime (see README, 'Suite format')")
    raise SuiteError(f"--set {key}=... is ambiguous: it could be {', '.join('.'.join(p) for p in paths)}; "
                     "use the dotted path")


def apply_overrides(data: dict, overrides: list[str]) -> list[tuple[tuple[str, ...], str]]:
    applied = []
    for item in overrides:
        if "=" not in item:
            raise SuiteError(f"--set {item!r} is not key=value (example: --set iterations=20)")
        key, raw = item.split("=", 1)
        path = resolve_override_key(key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for part in path[:-1]:
            if part == "model" and isinstance(node.get(part), str):
                node[part] = {"name": node[part]}  # expand the `model: NAME` shorthand
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SuiteError(f"--set {item}: {'.'.join(path[:-1])} is not a section")
        node[path[-1]] = value
        applied.append((path, item))
    return applied


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in Path("suites").glob("*.yaml")) if Path("suites").is_dir() else []
        hint = f" (suites here: {', '.join(known)})" if known else ""
        raise SuiteError(f"suite file {str(path)!r} not found{hint}")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SuiteError(f"{where}: malformed YAML: {getattr(exc, 'problem', exc)}. Fix the syntax "
                         "(indentation, a missing colon or quote)") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping (name:, model:, variants:, ...), "
                         f"got {type(data).__name__}")
    lines = _line_map(node) if node is not None else {}
    applied = apply_overrides(data, overrides or [])
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_format_errors(path, exc, lines, applied)) from None


def _is_branch(part: Any) -> bool:
    """pydantic's union-branch markers in an error location (e.g. 'list[union[str,VariantSpec]]')."""
    return isinstance(part, str) and ("[" in part or part in ("str", "VariantSpec"))


def _format_errors(path: Path, exc: ValidationError, lines: dict, applied: list) -> str:
    errors = exc.errors()
    # A union reports one error per branch; keep the deepest ones (the branch the input meant).
    deepest: dict[Any, int] = {}
    for err in errors:
        if any(_is_branch(p) for p in err["loc"]):
            top = err["loc"][0]
            deepest[top] = max(deepest.get(top, 0), len(err["loc"]))
    msgs = []
    for err in errors:
        if any(_is_branch(p) for p in err["loc"]) and len(err["loc"]) < deepest[err["loc"][0]]:
            continue
        loc = tuple(p for p in err["loc"] if not _is_branch(p))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        source = next((src for p, src in applied if tuple(loc[:len(p)]) == p), None)
        if source:
            where = f"--set {source}"
        else:
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
            where = f"{path}:{line}" if line else str(path)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = loc[:-1]
            msg = f"unknown field {loc[-1]!r}" + _known_fields_hint(parent)
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        msgs.append(f"{where}: {dotted}: {msg}")
    return "invalid suite:\n  " + "\n  ".join(msgs)


def _known_fields_hint(parent: tuple) -> str:
    model: Any = Suite
    for part in parent:
        info = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return ""
        model = info.annotation
    return f"; known fields: {', '.join(model.model_fields)}"


# ---------------------------------------------------------------- expansion

def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PlannedJob:
    """One job of a plan: a device, a variant, and the JobSpec the device's agent will read."""

    index: int  # position in the plan
    device: str
    variant: str
    variant_index: int  # position in the suite's variant list (the row order of Table 1)
    flags: Flags
    spec: JobSpec
    job_key: str  # stable across runs: device x workload x model x variant x options
    options_hash: str  # the cell key's runtime-options part


@dataclass
class Plan:
    suite: Suite
    devices: list[str]
    jobs: list[PlannedJob] = field(default_factory=list)


def expand(suite: Suite, devices: list[str] | None = None, run_id: str = "") -> Plan:
    devices = devices or suite.devices
    plan = Plan(suite=suite, devices=list(devices))
    measure = MeasurePolicy(**suite.measure.model_dump(include=set(MeasurePolicy.model_fields)))
    options_hash = _hash(suite.options.model_dump())
    variants = suite.variant_list()
    for device in devices:
        order = list(range(len(variants)))
        if suite.measure.shuffle:
            random.Random(f"{suite.measure.shuffle_seed}:{device}").shuffle(order)
        for vi in order:
            name, flags = variants[vi]
            key = _hash([device, suite.workload, suite.model.model_dump(), name, flags.to_dict(),
                         suite.options.model_dump(), suite.workload_args])
            spec = JobSpec(
                job_id=f"{run_id}-{len(plan.jobs):03d}" if run_id else key,
                run_id=run_id, device=device, workload=suite.workload,
                model=ModelRef(**suite.model.model_dump()), variant=name, flags=flags.to_dict(),
                options=suite.options, measure=measure, check=suite.check,
                workload_args=suite.workload_args,
            )
            plan.jobs.append(PlannedJob(len(plan.jobs), device, name, vi, flags, spec, key, options_hash))
    return plan
