"""Suite schema (YAML, validated with pydantic) and its expansion into a Plan of jobs.

A suite declares the model, the workload, the variants (the paper's ladder or explicit flag sets),
runtime options, the measurement policy and the devices. `--set key=value` overrides any field:
`key` is a dotted path (`measure.iterations`) or a field name that is unique in the schema
(`iterations`, `runtime`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import resources
from harness.models.configs import MODELS
from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
from harness.thresholds import parse_threshold_overrides
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


class SuiteOptions(RuntimeOptions):
    """Runtime options as a suite gives them: the runtime must be in the registry (harness.runtimes),
    and the `options.extra` keys it owns must have its types."""

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        from harness.runtimes import get_runtime

        get_runtime(v)  # UnknownRuntimeError (a ValueError) names the known runtimes
        return v

    @model_validator(mode="after")
    def _runtime_options(self) -> "SuiteOptions":
        from harness.runtimes import get_runtime

        get_runtime(self.runtime).parse_options(self.extra)
        return self


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
    options: SuiteOptions = Field(default_factory=SuiteOptions)
    measure: SuiteMeasure = Field(default_factory=SuiteMeasure)
    check: CheckPolicy = Field(default_factory=CheckPolicy)
    devices: list[str] = Field(default_factory=lambda: ["host"])
    workload_args: dict[str, Any] = Field(default_factory=dict)
    # Verdict threshold overrides: [{match: {device|workload|variant|options_hash: regex}, set: {...}}]
    # (harness.thresholds.parse_threshold_overrides; README "Regression detection").
    thresholds: list[dict[str, Any]] = Field(default_factory=list)
    # Same-session A/B sampling plan (`harness compare --ab`): harness.abtest.SequentialPlan fields
    # (block, first_look, batch, max_samples, max_seconds, design, seed); flags override them.
    ab: dict[str, Any] = Field(default_factory=dict)
    # Sweep axes: suite field path (as --set takes it: model, options.dtype, workload_args.steps) -> values.
    # The plan is the Cartesian product of the axes (in the order written) x variants x devices.
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("sweep")
    @classmethod
    def _valid_sweep(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for key, values in v.items():
            path = sweep_axis_path(key)
            if not values:
                raise ValueError(f"sweep axis {key!r} has no values; give a list of at least one value")
            canonical = ".".join(path)
            if canonical in out:
                raise ValueError(f"sweep axis {key!r} repeats axis {canonical!r}; give each field once")
            out[canonical] = list(values)
        return out

    def combinations(self) -> list[tuple[dict[str, Any], "Suite"]]:
        """(axes, suite) for every combination of the sweep, in plan order (the first axis varies slowest).
        Each suite is this one with the axis values applied and no sweep; without a sweep: [({}, self)]."""
        if not self.sweep:
            return [({}, self)]
        base = self.model_dump(mode="json", exclude={"sweep"}, exclude_unset=False)
        base["model"] = _model_input(self.model)
        out = []
        for values in itertools.product(*self.sweep.values()):
            axes = dict(zip(self.sweep, values))
            data = copy.deepcopy(base)
            for key, value in axes.items():
                _set_path(data, tuple(key.split(".")), copy.deepcopy(value), f"sweep {key}")
            try:
                out.append((axes, Suite.model_validate(data)))
            except ValidationError as exc:
                raise SuiteError(_combination_errors(exc, axes)) from None
        return out

    @field_validator("ab")
    @classmethod
    def _valid_ab(cls, v: dict[str, Any]) -> dict[str, Any]:
        from harness.abtest import SequentialPlan

        SequentialPlan.from_dict(v)  # raises PlanError (a ValueError) naming the field and the fix
        return v

    @field_validator("thresholds")
    @classmethod
    def _valid_thresholds(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def sweep_axis_path(key: str) -> tuple[str, ...]:
    """The field path a sweep axis names (as `--set` resolves keys); `sweep` itself and the plan's other
    dimensions (variants, devices) and `name` cannot be swept."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"sweep axis {key!r} must be a suite field path such as options.dtype")
    try:
        # A top-level field is itself (`model` takes the same shorthand and objects as `model:`).
        path = (key,) if key in Suite.model_fields else resolve_override_key(key)
    except SuiteError as exc:
        raise ValueError(f"sweep axis {key!r}: " + str(exc).replace(f"--set {key}=...: ", "").replace(
            f"--set {key}=... ", "")) from None
    model: Any = Suite
    for i, part in enumerate(path):  # typed sections must have the field; free-form maps take any key
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            break
        if part not in model.model_fields:
            where = ".".join(path[:i]) or "the suite"
            raise ValueError(f"sweep axis {key!r}: {where} has no field {part!r}; known fields: "
                             f"{', '.join(model.model_fields)}")
        model = model.model_fields[part].annotation
    if path[0] in ("sweep", "name", "variants", "devices"):
        raise ValueError(f"sweep axis {key!r}: {path[0]} cannot be swept (variants and devices are already "
                         "dimensions of the plan); sweep fields such as model, options.dtype, workload_args.steps")
    return path


def _set_path(data: dict, path: tuple[str, ...], value: Any, what: str) -> None:
    """data[path] = value, creating sections; `what` names the source in errors (--set ..., sweep ...)."""
    node = data
    for part in path[:-1]:
        if part == "model" and isinstance(node.get(part), str):
            node[part] = {"name": node[part]}  # expand the `model: NAME` shorthand
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SuiteError(f"{what}: {'.'.join(path[:-1])} is not a section")
    node[path[-1]] = value


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def apply_overrides(data: dict, overrides: list[str]) -> list[tuple[tuple[str, ...], str]]:
    applied = []
    for item in overrides:
        if "=" not in item:
            raise SuiteError(f"--set {item!r} is not key=value (example: --set iterations=20)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.startswith("sweep."):
            axis = key[len("sweep."):]
            try:
                path: tuple[str, ...] = ("sweep", ".".join(sweep_axis_path(axis)))
            except ValueError as exc:
                raise SuiteError(f"--set {item}: {exc}") from None
        else:
            path = resolve_override_key(key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if path[0] == "sweep" and len(path) == 2:
            if not isinstance(value, list):
                raise SuiteError(f"--set {item}: a sweep axis takes a list of values, e.g. "
                                 f"--set {key}=[{raw or 'a'}, ...]")
            sweep = data.get("sweep") or {}
            if not isinstance(sweep, dict):
                raise SuiteError(f"--set {item}: the suite's sweep is not a mapping")
            for other in list(sweep):  # the same axis spelled differently (dtype vs options.dtype)
                try:
                    if ".".join(sweep_axis_path(other)) == path[1] and other != path[1]:
                        del sweep[other]
                except ValueError:
                    pass
            data["sweep"] = sweep
            sweep[path[1]] = value
        else:
            if path[0] != "sweep":
                for axis in (data.get("sweep") or {}) if isinstance(data.get("sweep"), dict) else {}:
                    try:
                        axis_path = sweep_axis_path(axis)
                    except ValueError:
                        continue
                    if _overlaps(axis_path, path):
                        raise SuiteError(
                            f"--set {item} conflicts with the suite's sweep axis {axis!r}, which sets "
                            f"{'.'.join(axis_path)} in every combination; change the axis instead "
                            f"(--set sweep.{'.'.join(axis_path)}=[...]) or drop it (--set sweep={{}})")
            _set_path(data, path, value, f"--set {item}")
        applied.append((path, item))
    return applied


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    path = Path(path)
    if not path.is_file():
        builtin = resources.builtin_suite(str(path))  # `harness run smoke`: a built-in suite by name
        if builtin is None:
            here = Path("suites")
            known = sorted(p.name for p in here.glob("*.yaml")) \
                if here.is_dir() and here.resolve() != resources.suites_dir().resolve() else []
            hint = f" (suites here: {', '.join(known)})" if known else ""
            raise SuiteError(f"suite file {str(path)!r} not found{hint}; built-in suites, by name: "
                             f"{', '.join(resources.builtin_suites())} (e.g. `harness run smoke`)")
        path = builtin
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not a text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} is not "
                         "UTF-8); a suite is a YAML text file such as suites/smoke.yaml") from None
    except OSError as exc:
        raise SuiteError(f"suite file {str(path)!r} cannot be read: {exc.strerror}") from None
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
    if isinstance(data.get("sweep"), dict):  # an unknown axis names its own line
        for key in data["sweep"]:
            try:
                sweep_axis_path(key)
            except ValueError as exc:
                line = lines.get(("sweep", key)) or lines.get(("sweep",))
                raise SuiteError(f"invalid suite:\n  {path}:{line}: sweep: {exc}") from None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_format_errors(path, exc, lines, applied)) from None
    _check_combinations(suite, path, lines, applied, data)
    return suite


def _model_input(model: ModelRef) -> dict:
    """A model as suite input: the fields that were given (a config/factory model's derived name is not)."""
    out = model.model_dump(mode="json")
    if model.kind != "builtin":
        out.pop("name", None)
    return out


def _combination_errors(exc: ValidationError, axes: dict[str, Any]) -> str:
    what = ", ".join(f"{k}={v!r}" for k, v in axes.items())
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_branch(p)) or "(top level)"
        msgs.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return f"sweep combination {what}: " + "; ".join(msgs)


def _check_combinations(suite: Suite, path: Path, lines: dict, applied: list, data: dict) -> None:
    """Validate each value of each sweep axis (applied to the suite alone), then every combination;
    errors name the axis, the value and the file line (or the --set that gave the axis)."""
    if not suite.sweep:
        return
    raw_keys = {".".join(sweep_axis_path(k)): k for k in (data.get("sweep") or {})}
    base = suite.model_copy(update={"sweep": {}})
    msgs = []
    for axis, values in suite.sweep.items():
        raw = raw_keys.get(axis, axis)
        source = next((src for p, src in applied if p[:2] == ("sweep", axis) or p == ("sweep",)), None)
        for i, value in enumerate(values):
            single = base.model_copy(update={"sweep": {axis: [value]}})
            try:
                single.combinations()
            except SuiteError as exc:
                line = lines.get(("sweep", raw, i)) or lines.get(("sweep", raw)) or lines.get(("sweep",))
                where = f"--set {source}" if source else (f"{path}:{line}" if line else str(path))
                detail = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
                msgs.append(f"{where}: sweep.{axis}: value {value!r}: {detail}")
    if msgs:
        raise SuiteError("invalid suite:\n  " + "\n  ".join(msgs))
    try:
        suite.combinations()
    except SuiteError as exc:
        line = lines.get(("sweep",))
        raise SuiteError(f"invalid suite:\n  {path}:{line}: sweep: {exc}") from None


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
        # The --set that gave this value; an unknown field is blamed on the --set that introduced it
        # (`--set foo.bar=1` fails at `foo`).
        source = next((src for p, src in applied if tuple(loc[:len(p)]) == p
                       or (err["type"] == "extra_forbidden" and loc and tuple(p[:len(loc)]) == loc)), None)
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
    job_key: str  # stable across runs: device x workload x model x variant x options (x sweep coordinates)
    options_hash: str  # the cell key's runtime-options part (with the sweep coordinates, when swept)
    axes: dict[str, Any] = field(default_factory=dict)  # the sweep coordinates ({} without a sweep)
    combination: int = 0  # index of the sweep combination (Suite.combinations order)


@dataclass
class Plan:
    suite: Suite
    devices: list[str]
    jobs: list[PlannedJob] = field(default_factory=list)


def job_key(device: str, suite: Suite, variant: str, flags: Flags, axes: dict[str, Any] | None = None) -> str:
    """The job's stable key; a job of a sweep also hashes its coordinates (a suite without a sweep keeps
    the keys it always had)."""
    parts: list[Any] = [device, suite.workload, suite.model.model_dump(), variant, flags.to_dict(),
                        suite.options.model_dump(), suite.workload_args]
    if axes:
        parts.append(axes)
    return _hash(parts)


def expand(suite: Suite, devices: list[str] | None = None, run_id: str = "") -> Plan:
    """The plan: for each sweep combination (the first axis varies slowest), for each device, the
    variants in order (shuffled per device and combination when measure.shuffle). Jobs run in plan
    order on each device, so each device's jobs are grouped by combination."""
    devices = devices or suite.devices
    plan = Plan(suite=suite, devices=list(devices))
    for ci, (axes, combo) in enumerate(suite.combinations()):
        measure = MeasurePolicy(**combo.measure.model_dump(include=set(MeasurePolicy.model_fields)))
        options_hash = _hash([combo.options.model_dump(), axes]) if axes else _hash(combo.options.model_dump())
        variants = combo.variant_list()
        for device in devices:
            order = list(range(len(variants)))
            if combo.measure.shuffle:
                seed = f"{combo.measure.shuffle_seed}:{device}" + (f":{ci}" if axes else "")
                random.Random(seed).shuffle(order)
            for vi in order:
                name, flags = variants[vi]
                key = job_key(device, combo, name, flags, axes)
                spec = JobSpec(
                    job_id=f"{run_id}-{len(plan.jobs):03d}" if run_id else key,
                    run_id=run_id, device=device, workload=combo.workload,
                    model=ModelRef(**combo.model.model_dump()), variant=name, flags=flags.to_dict(),
                    options=RuntimeOptions(**combo.options.model_dump()), measure=measure, check=combo.check,
                    workload_args=combo.workload_args, axes=dict(axes),
                )
                plan.jobs.append(PlannedJob(len(plan.jobs), device, name, vi, flags, spec, key, options_hash,
                                            dict(axes), ci))
    return plan
