"""The `params` section: each "stage.param" key becomes a `Distribution` (a plain value, a
choice or a range), and every candidate value is checked by the stage's own params dataclass.

Stage parameter ranges are not repeated here: both ends of a range and every choice are checked
by building the stage's params (`StageSpec.make_params`), the single source of truth.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from orchestrator.space.checks import Collector, did_you_mean, fail, fmt_list, short
from orchestrator.space.model import DISTRIBUTION_KINDS, Distribution
from stages.errors import SqueezerayError

_Scalar = str | int | float | bool


def parse_params(source: str, raw: Any, pipeline: tuple[str, ...]) -> dict[str, Distribution]:
    """Each `params` key as a Distribution; SpaceErrors lists every bad key."""
    errors = Collector()
    params = collect_params(errors, source, raw, pipeline)
    errors.raise_if_any()
    return {k: d for k, d in params.items() if k.split(".")[0] in pipeline}


def collect_params(
    errors: Collector, source: str, raw: Any, pipeline: tuple[str, ...]
) -> dict[str, Distribution]:
    """Each `params` key that parses, as a Distribution; every bad key goes to `errors`.

    A key of a known stage that is not in the pipeline is an error but is returned too, so
    its values are still checked against that stage (one `validate` run reports both)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.attempt(
            fail,
            source,
            "params",
            f"{short(raw)} is not accepted; accepted: a mapping "
            "{stage.param: distribution or value}",
            fallback=None,
        )
        return {}
    params: dict[str, Distribution] = {}
    for key, spec in raw.items():
        in_pipeline = errors.attempt(_parse_param_key, source, key, pipeline, fallback=False)
        if not in_pipeline and not _known_stage_key(key):
            continue  # no stage to check its values against
        dist = errors.attempt(_parse_distribution, source, f"params.{key}", spec, fallback=None)
        if dist is not None:
            params[key] = dist
    return params


def _known_stage_key(key: Any) -> bool:
    """`stage.param` with a known stage (whether or not the pipeline holds it)."""
    from stages import PIPELINE_ORDER

    return (
        isinstance(key, str)
        and key.count(".") == 1
        and all(key.split("."))
        and (key.split(".")[0] in PIPELINE_ORDER)
    )


def _parse_param_key(source: str, key: Any, pipeline: tuple[str, ...]) -> bool:
    """True for a `stage.param` key of a stage in the pipeline; else raises, naming the fix."""
    from stages import PIPELINE_ORDER

    full = f"params.{key}"
    if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
        fail(source, full, f"{key!r} is not a key; accepted: 'stage.param', e.g. prune.ratio")
    stage = key.split(".")[0]
    if stage not in PIPELINE_ORDER:
        fail(
            source,
            full,
            f"{stage!r} is not a stage{did_you_mean(stage, PIPELINE_ORDER)};"
            f" accepted: {', '.join(PIPELINE_ORDER)}",
        )
    if stage not in pipeline:
        fail(
            source,
            full,
            f"stage {stage!r} is not in the pipeline {fmt_list(pipeline)}; "
            f"accepted: add {stage} to the pipeline or remove the key",
        )
    return True


_ACCEPTED_DISTRIBUTIONS = (
    "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} (optional "
    "step: k), {choice: [a, b, ...]}, or a plain value"
)


def _parse_distribution(source: str, key: str, raw: Any) -> Distribution:
    """One `params` entry: a plain value (fixed) or a one-kind mapping (`choice`, a range,
    `fixed`); SqueezerayError names the file, the key, the value and what is accepted."""
    accepted = _ACCEPTED_DISTRIBUTIONS
    if raw is None:
        fail(source, key, f"has no value; accepted: {accepted}")
    if isinstance(raw, list):
        fail(
            source,
            key,
            f"{short(raw)} is a list; to search it write {{choice: "
            f"{fmt_list(raw)}}}; accepted: {accepted}",
        )
    if not isinstance(raw, Mapping):
        return _parse_plain_value(source, key, raw)
    kind = _distribution_kind(source, key, raw)
    arg = raw[kind]
    if kind == "fixed":
        if isinstance(arg, Mapping | list):
            fail(
                source,
                key,
                f"fixed {short(arg)} is not a plain value; accepted: a number, string or boolean",
            )
        return _parse_distribution(source, key, arg)
    if kind == "choice":
        return _parse_choice(source, key, arg)
    return _parse_range(source, key, kind, raw)


def _parse_plain_value(source: str, key: str, raw: Any) -> Distribution:
    """A knob fixed to one number, string or boolean."""
    if not isinstance(raw, _Scalar):
        fail(source, key, f"{short(raw)} is not accepted; accepted: {_ACCEPTED_DISTRIBUTIONS}")
    if isinstance(raw, float) and not math.isfinite(raw):
        fail(
            source,
            key,
            f"{raw!r} is not a finite number; accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    return Distribution("fixed", value=raw)


def _distribution_kind(source: str, key: str, raw: Mapping[str, Any]) -> str:
    """The one distribution kind a mapping names (`step` aside, and only with `int`)."""
    kinds = [k for k in raw if k != "step"]
    if len(kinds) != 1:
        fail(
            source,
            key,
            f"{short(dict(raw))} is not a distribution (one kind per key); "
            f"accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    kind = kinds[0]
    if kind not in DISTRIBUTION_KINDS:
        fail(
            source,
            key,
            f"{kind!r} is not a distribution"
            f"{did_you_mean(str(kind), DISTRIBUTION_KINDS)}; accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    if "step" in raw and kind != "int":
        fail(
            source,
            key,
            f"step={raw['step']!r} is only accepted with int; accepted: "
            "{int: [low, high], step: k}",
        )
    return str(kind)


def _parse_choice(source: str, key: str, arg: Any) -> Distribution:
    """`{choice: [a, b, ...]}`: a non-empty list of distinct finite scalars."""
    if not isinstance(arg, list) or not arg:
        fail(
            source,
            key,
            f"choice {short(arg)} is not accepted; accepted: a non-empty "
            "list, e.g. {choice: [1, 2, 4]}",
        )
    for item in arg:
        if not isinstance(item, _Scalar) or (isinstance(item, float) and not math.isfinite(item)):
            fail(
                source,
                key,
                f"choice {short(arg)}: {short(item)} is not accepted; "
                "accepted: finite numbers, strings or booleans",
            )
    if len(set(map(_value_key, arg))) != len(arg):
        fail(source, key, f"choice {fmt_list(arg)} repeats a value; accepted: distinct values")
    return Distribution("choice", choices=tuple(arg))


def _parse_range(source: str, key: str, kind: str, raw: Mapping[str, Any]) -> Distribution:
    """`{uniform|loguniform|int: [low, high]}` (int with an optional `step`)."""
    shown = f"{kind} {short(raw[kind])}"
    low, high = _range_bounds(source, key, kind, raw[kind], shown)
    step = None
    if "step" in raw:
        step = raw["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            fail(source, key, f"{shown} step {step!r}: is not accepted; accepted: an integer >= 1")
        if (high - low) % step:
            fail(
                source,
                key,
                f"{shown} step {step}: {high} - {low} is not a multiple of "
                f"{step}; accepted: high - low divisible by step",
            )
    if kind == "int":
        return Distribution("int", low=low, high=high, step=step)
    return Distribution(kind, low=float(low), high=float(high))


def _range_bounds(source: str, key: str, kind: str, arg: Any, shown: str) -> tuple[Any, Any]:
    """A range's `[low, high]`: two finite numbers (integers for `int`), low < high, and
    low > 0 for `loguniform`."""
    if not isinstance(arg, list) or len(arg) != 2:
        fail(
            source,
            key,
            f"{shown} is not accepted; accepted: a list of two numbers "
            f"[low, high], e.g. {{{kind}: [1, 8]}}",
        )
    for bound in arg:
        if (
            isinstance(bound, bool)
            or not isinstance(bound, int | float)
            or not math.isfinite(bound)
        ):
            fail(
                source,
                key,
                f"{shown}: {short(bound)} is not a finite number; accepted: "
                "[low, high] with numbers",
            )
        if kind == "int" and not isinstance(bound, int):
            fail(
                source,
                key,
                f"{shown}: {bound!r} is not an integer; accepted: {{int: "
                "[low, high]} with integers (use uniform for a float range)",
            )
    low, high = arg
    if low >= high:
        fail(
            source,
            key,
            f"{shown}: low {low!r} >= high {high!r}; accepted: low < high (write "
            f"a plain value to fix the knob)",
        )
    if kind == "loguniform" and low <= 0:
        fail(source, key, f"{shown}: low {low!r} <= 0; accepted: loguniform needs 0 < low < high")
    return low, high


def validate_stage_params(
    source: str, pipeline: tuple[str, ...], params: dict[str, Distribution]
) -> dict[str, Distribution]:
    """Check every key and candidate value against the stage's own params dataclass; float
    params get float values (so 4 and 4.0 give one stage-cache key). SpaceErrors lists every
    bad key of every stage."""
    from stages import PIPELINE_ORDER

    errors = Collector()
    out: dict[str, Distribution] = {}
    keyed = {k.split(".")[0] for k in params}
    for stage in [s for s in PIPELINE_ORDER if s in pipeline or s in keyed]:
        mine = {k: d for k, d in params.items() if k.split(".")[0] == stage}
        out.update(errors.attempt(_validate_stage, source, stage, mine, fallback=mine))
    errors.raise_if_any()
    return {k: out[k] for k in params}  # the YAML's order


def _validate_stage(
    source: str, stage: str, mine: dict[str, Distribution]
) -> dict[str, Distribution]:
    """One stage's keys: known names, integer params not given float ranges, then every
    candidate value built into the stage's params (each key alone, then all fixed values
    together, so an error names the right key)."""
    from stages import get_stage

    spec = get_stage(stage)
    hints = _field_types(spec.params)
    errors = Collector()
    named = {
        key: dist
        for key, dist in mine.items()
        if errors.attempt(_check_param_name, source, spec, key, dist, hints, fallback=False)
    }  # the values of keys with a bad name are not checked (nothing to check them against)
    fixed = {k.split(".")[1]: d.value for k, d in named.items() if d.kind == "fixed"}
    # Fixed values first, each alone; then every candidate of a searched knob with the fixed
    # ones that passed (so one bad fixed value is reported once, and the searched knobs are
    # still checked in the same run).
    good: dict[str, Any] = {}
    for key, dist in named.items():
        if dist.kind == "fixed":
            before = len(errors.errors)
            _check_values(errors, source, spec, key, dist, {})
            if len(errors.errors) == before:
                good[key.split(".")[1]] = dist.value
    for key, dist in named.items():
        if dist.kind != "fixed":
            _check_values(errors, source, spec, key, dist, good)
    errors.raise_if_any()
    _make_params(source, f"params.{stage}.*", spec, fixed, "")
    return {k: _as_float_values(d) if hints.get(k.split(".")[1]) is float else d
            for k, d in mine.items()}  # fmt: skip


def _check_values(
    errors: Collector,
    source: str,
    spec: Any,
    key: str,
    dist: Distribution,
    base: dict[str, Any],
) -> None:
    """Every candidate value of `key` built into the stage's params together with `base`."""
    param = key.split(".")[1]
    shown = f"{dist.describe()}: " if dist.kind != "fixed" else ""
    for value in dist.values_for_validation():
        errors.attempt(_make_params, source, f"params.{key}", spec, {**base, param: value},
                       shown, fallback=None)  # fmt: skip


def _check_param_name(
    source: str, spec: Any, key: str, dist: Distribution, hints: dict[str, Any]
) -> bool:
    stage, param = key.split(".")
    names = spec.param_names()
    if param not in names:
        fail(
            source,
            f"params.{key}",
            f"{param!r} is not a parameter of stage "
            f"{stage!r}{did_you_mean(param, names, prefix=stage + '.')}; accepted: "
            + ", ".join(f"{stage}.{n}" for n in names),
        )
    if hints.get(param) is int and dist.kind in ("uniform", "loguniform"):
        fail(
            source,
            f"params.{key}",
            f"{dist.describe()}: {key} is an integer parameter; accepted: "
            "{int: [low, high]} or a choice of integers",
        )
    return True


def _field_types(params_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(params_cls)
    except Exception:  # unresolvable annotations: no coercion, make_params still checks
        return {}


def _make_params(source: str, key: str, spec: Any, values: dict[str, Any], shown: str) -> None:
    """Build the stage's params dataclass; its own range checks are the single source of truth."""
    try:
        spec.make_params(values)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{source}: {key}: {shown}{exc}") from exc
    except (TypeError, ValueError) as exc:  # a check that did not raise our error type
        raise SqueezerayError(
            f"{source}: {key}: {shown}{values!r} is not accepted by stage {spec.name!r}: {exc}"
        ) from exc


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _as_float_values(dist: Distribution) -> Distribution:
    """Ints given for a float param become floats (4 and 4.0 must give one stage-cache key)."""
    if dist.kind == "fixed":
        return dataclasses.replace(dist, value=_as_float(dist.value))
    if dist.kind == "choice":
        return dataclasses.replace(dist, choices=tuple(_as_float(v) for v in dist.choices))
    return dist


def _value_key(value: Any) -> tuple[bool, Any]:
    # True == 1 in Python, but they are different choices; 1 and 1.0 are the same one.
    return (isinstance(value, bool), value)
