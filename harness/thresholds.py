"""Thresholds of a verdict (`harness.compare`): their defaults, the `Thresholds` dataclass, and the per-cell
overrides a suite or a `--thresholds` file gives. Pure functions, no I/O.

Threshold overrides (`resolve_thresholds`, `parse_threshold_overrides`): a list of
(match, set) pairs, where match maps cell-key fields to regular expressions that must match the
whole value (re.fullmatch; write "android:.*" for a prefix) and set maps Thresholds fields to new
values. Every override whose match holds applies, in order; later ones win.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from harness import stats

# ---------------------------------------------------------------------------------------------
# Defaults: every threshold default lives here, and only here.
# ---------------------------------------------------------------------------------------------
# Significance level of each one-sided Mann-Whitney test (the false-alarm budget of that test).
DEFAULT_ALPHA = 0.01
# Smallest relative change of the median that matters (0.03 = 3% slower or faster).
DEFAULT_MIN_EFFECT = 0.03
# A change must exceed this many robust sigmas of the recent nightly medians (history gate).
DEFAULT_NOISE_K = 3.0
# How many of the most recent accepted nightly medians form the history.
DEFAULT_HISTORY_K = 10
# Fewer history medians than this and the history gate is skipped (robust sigma is meaningless).
DEFAULT_MIN_HISTORY = 5
# A side whose coefficient of variation (std/mean) exceeds this is UNSTABLE.
DEFAULT_CV_MAX = 0.10
# Fewer samples than this on either side and no latency verdict is attempted (INCONCLUSIVE).
DEFAULT_MIN_SAMPLES = 5
# Two-sided confidence level of the bootstrap interval of the median ratio.
DEFAULT_CI_LEVEL = 0.95
# Bootstrap resamples for that interval (see harness.stats.DEFAULT_N_RESAMPLES).
DEFAULT_N_RESAMPLES = stats.DEFAULT_N_RESAMPLES
# Relative rise of the median peak memory that counts as a memory regression (2%).
DEFAULT_MEMORY_REL = 0.02
# Absolute rise of the median peak memory that counts, whichever of the two is larger (10 MiB).
DEFAULT_MEMORY_ABS_BYTES = 10 * 1024 * 1024
# Seed of the bootstrap, so that a verdict is reproducible from the stored samples.
DEFAULT_SEED = 0

# Cell-key fields an override may match on (a cell is one device x workload x variant x options).
CELL_KEY_FIELDS: tuple[str, ...] = ("device", "workload", "variant", "options_hash")


@dataclass(frozen=True)
class Thresholds:
    """The knobs of a verdict; defaults are the module-level DEFAULT_* constants."""

    # Significance level of each one-sided Mann-Whitney U test.
    alpha: float = DEFAULT_ALPHA
    # Smallest relative change of the median that matters (0.03 = 3%).
    min_effect: float = DEFAULT_MIN_EFFECT
    # The change must exceed noise_k robust sigmas of the recent nightly medians.
    noise_k: float = DEFAULT_NOISE_K
    # Number of most recent accepted nightly medians used for the history gate.
    history_k: int = DEFAULT_HISTORY_K
    # Below this many history medians the history gate is skipped.
    min_history: int = DEFAULT_MIN_HISTORY
    # Coefficient of variation (std/mean) above which a run is UNSTABLE.
    cv_max: float = DEFAULT_CV_MAX
    # Minimum samples per side for any latency verdict.
    min_samples: int = DEFAULT_MIN_SAMPLES
    # Confidence level of the bootstrap CI of the median ratio.
    ci_level: float = DEFAULT_CI_LEVEL
    # Bootstrap resamples for that CI.
    n_resamples: int = DEFAULT_N_RESAMPLES
    # Relative rise in median peak memory that is a regression (2%).
    memory_rel: float = DEFAULT_MEMORY_REL
    # Absolute rise in median peak memory that is a regression; the larger of the two applies.
    memory_abs_bytes: int = DEFAULT_MEMORY_ABS_BYTES

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (0.0 < self.alpha < 0.5, f"alpha must be in (0, 0.5), got {self.alpha}"),
            (0.0 <= self.min_effect < 1.0, f"min_effect must be in [0, 1), got {self.min_effect}"),
            (self.noise_k >= 0.0, f"noise_k must be >= 0, got {self.noise_k}"),
            (self.history_k >= 1, f"history_k must be >= 1, got {self.history_k}"),
            (self.min_history >= 2, f"min_history must be >= 2, got {self.min_history}"),
            (self.cv_max > 0.0, f"cv_max must be > 0, got {self.cv_max}"),
            (self.min_samples >= 2, f"min_samples must be >= 2, got {self.min_samples}"),
            (0.0 < self.ci_level < 1.0, f"ci_level must be in (0, 1), got {self.ci_level}"),
            (self.n_resamples >= 100, f"n_resamples must be >= 100, got {self.n_resamples}"),
            (self.memory_rel >= 0.0, f"memory_rel must be >= 0, got {self.memory_rel}"),
            (self.memory_abs_bytes >= 0, f"memory_abs_bytes must be >= 0, got {self.memory_abs_bytes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid threshold: {message}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Thresholds":
        return replace(cls(), **_coerce_threshold_values(data, where="thresholds"))


_THRESHOLD_TYPES: dict[str, type] = {f.name: (int if f.type in ("int", int) else float) for f in fields(Thresholds)}


def _coerce_threshold_values(values: Mapping[str, Any], where: str) -> dict[str, float | int]:
    unknown = sorted(set(values) - set(_THRESHOLD_TYPES))
    if unknown:
        raise ValueError(
            f"{where}: unknown threshold field(s) {unknown}; known fields: {', '.join(_THRESHOLD_TYPES)}"
        )
    out: dict[str, float | int] = {}
    for name, value in values.items():
        want = _THRESHOLD_TYPES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: threshold {name!r} must be a number, got {value!r}")
        if want is int:
            if float(value) != int(value):
                raise ValueError(f"{where}: threshold {name!r} must be a whole number, got {value!r}")
            out[name] = int(value)
        else:
            out[name] = float(value)
    return out


Override = tuple[dict[str, str], dict[str, Any]]


def parse_threshold_overrides(raw: Any) -> list[Override]:
    """Parse overrides as they come from YAML: a list of {match: {field: regex}, set: {threshold: value}}.

    Raises ValueError naming the entry and the problem (unknown cell field, unknown threshold,
    bad regex, wrong type).
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(
            f"threshold overrides must be a list of {{match: {{...}}, set: {{...}}}} entries, got {type(raw).__name__}"
        )
    parsed: list[Override] = []
    for i, entry in enumerate(raw):
        where = f"threshold override #{i}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with keys 'match' and 'set', got {entry!r}")
        extra = sorted(set(entry) - {"match", "set"})
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; an override has only 'match' and 'set'")
        if "set" not in entry:
            raise ValueError(f"{where}: missing 'set' (the thresholds to change)")
        match = entry.get("match") or {}
        if not isinstance(match, Mapping):
            raise ValueError(f"{where}: 'match' must map cell fields to regexes, got {match!r}")
        bad_fields = sorted(set(match) - set(CELL_KEY_FIELDS))
        if bad_fields:
            raise ValueError(
                f"{where}: unknown cell field(s) {bad_fields} in 'match'; known fields: {', '.join(CELL_KEY_FIELDS)}"
            )
        patterns: dict[str, str] = {}
        for key, pattern in match.items():
            if not isinstance(pattern, str):
                raise ValueError(f"{where}: match[{key!r}] must be a regex string, got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where}: match[{key!r}] = {pattern!r} is not a valid regex: {exc}") from None
            patterns[str(key)] = pattern
        values = entry["set"]
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"{where}: 'set' must be a non-empty mapping of threshold -> value, got {values!r}")
        coerced = _coerce_threshold_values(values, where)
        replace(Thresholds(), **coerced)  # validate ranges now, not at first use
        parsed.append((patterns, coerced))
    return parsed


def override_matches(cell_key: Mapping[str, Any], match: Mapping[str, str]) -> bool:
    """True when every regex in match fully matches the corresponding cell-key value."""
    for key, pattern in match.items():
        if key not in cell_key:
            raise ValueError(
                f"threshold override matches on {key!r} but the cell key has no such field "
                f"(fields: {', '.join(map(str, cell_key))})"
            )
        if re.fullmatch(pattern, str(cell_key[key])) is None:
            return False
    return True


def resolve_thresholds(
    cell_key: Mapping[str, Any],
    overrides: Sequence[Override],
    base: Thresholds | None = None,
) -> Thresholds:
    """Defaults (or base), then every override whose regexes all match the cell key; later ones win."""
    values: dict[str, Any] = {}
    for match, settings in overrides:
        if override_matches(cell_key, match):
            values.update(_coerce_threshold_values(settings, "threshold override"))
    return replace(base or Thresholds(), **values)
