"""Search-space parsing and validation (orchestrator.space: config, parse, params, model): good
spaces load, bad ones stop with a SqueezerayError naming the file, the key and the value, and
nothing imports ray."""

from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.space.checks import parse_duration
from orchestrator.space.config import load_space, packaged_space_path
from orchestrator.space.metrics import METRICS
from orchestrator.space.model import Constraint, Distribution, SearchSpace
from orchestrator.space.parse import parse_space
from stages import get_stage
from stages.errors import SqueezerayError

PACKAGED = sorted(p.stem for p in packaged_space_path("default").parent.glob("*.yaml"))

# A small valid space; BAD_CASES edit copies of it.
BASE: dict[str, Any] = {
    "name": "t",
    "task": "blobs",
    "pipeline": ["teacher", "distill", "prune", "finetune", "lora", "quantize"],
    "objectives": {"val_accuracy": "max", "size_bytes": "min"},
    "params": {
        "distill.temperature": {"choice": [2.0, 4.0]},
        "prune.ratio": {"uniform": [0.0, 0.9]},
        "lora.rank": {"choice": [0, 4]},
        "teacher.epochs": 2,
    },
    "search": {"algorithm": "optuna", "trials": 4, "seed": 0},
}


def _with(**changes: Any) -> dict[str, Any]:
    """BASE with top-level keys replaced (None removes) and `params__X` keys set in params."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        if key.startswith("params__"):
            data["params"][key[len("params__") :].replace("__", ".")] = value
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def _write(tmp_path: Path, content: dict[str, Any] | str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


# (id, file content, substrings the message must contain besides the file name)
BAD_CASES: list[tuple[str, dict[str, Any] | str, list[str]]] = [
    ("malformed-yaml", "task: digits\npipeline: [teacher, distill\n", ["malformed YAML", ":3:"]),
    (
        "unquoted-constraint",
        "task: digits\npipeline: [teacher]\nconstraints:\n  accuracy: >= 0.95\n",
        [":4:", "malformed YAML", "quote"],
    ),
    (
        "duplicate-yaml-key",
        "task: digits\ntask: blobs\npipeline: [teacher]\n",
        ["duplicate", "'task'"],
    ),
    ("empty-file", "", ["(top level)", "empty"]),
    ("top-level-list", "- teacher\n- distill\n", ["(top level)", "['teacher', 'distill']"]),
    ("unknown-top-level-key", _with(pipline=["teacher"]), ["pipline", "did you mean pipeline"]),
    ("missing-pipeline", _with(pipeline=None), ["pipeline", "missing"]),
    (
        "unknown-stage",
        _with(params__distil__temperature=4.0),
        ["params.distil.temperature", "'distil'", "did you mean distill"],
    ),
    (
        "unknown-stage-param",
        _with(params__prune__ration=0.5),
        ["params.prune.ration", "'ration'", "did you mean prune.ratio"],
    ),
    (
        "stage-not-in-pipeline",
        _with(params__export__runtime="onnxruntime"),
        ["params.export.runtime", "'export'", "'teacher', 'distill'"],
    ),
    (
        "quantize-before-prune",
        _with(pipeline=["teacher", "distill", "quantize", "prune"], params={}),
        ["pipeline", "'prune' after 'quantize'", "teacher -> distill -> prune"],
    ),
    (
        "lora-without-student",
        _with(pipeline=["teacher", "lora"], params={}),
        ["pipeline", "'lora'"],
    ),
    (
        "no-teacher",
        _with(pipeline=["distill", "prune"], params={}),
        ["pipeline", "'distill'", "start"],
    ),
    (
        "duplicate-stage",
        _with(pipeline=["teacher", "distill", "distill"], params={}),
        ["pipeline", "'distill' twice"],
    ),
    ("unknown-pipeline-stage", _with(pipeline=["teacher", "prunning"]), ["'prunning'", "prune"]),
    (
        "ratio-above-range",
        _with(params__prune__ratio={"uniform": [0.0, 1.2]}),
        ["params.prune.ratio", "1.2", "[0, 1)"],
    ),
    (
        "ratio-high-end-1",
        _with(params__prune__ratio={"uniform": [0.0, 1.0]}),
        ["params.prune.ratio", "1.0", "[0, 1)"],
    ),
    ("negative-rank", _with(params__lora__rank={"choice": [-1, 4]}), ["params.lora.rank", "-1"]),
    (
        "temperature-zero",
        _with(params__distill__temperature=0),
        ["params.distill.temperature", "=0", "(0"],
    ),
    (
        "alpha-above-one",
        _with(params__distill__alpha={"choice": [0.5, 1.5]}),
        ["params.distill.alpha", "1.5", "[0, 1]"],
    ),
    ("epochs-negative", _with(params__teacher__epochs=-1), ["params.teacher.epochs", "=-1"]),
    ("distill-epochs-zero", _with(params__distill__epochs=0), ["distill.epochs=0", "[1, inf]"]),
    (
        "int-param-uniform",
        _with(params__teacher__epochs={"uniform": [1, 10]}),
        ["params.teacher.epochs", "integer"],
    ),
    (
        "low-above-high",
        _with(params__prune__ratio={"uniform": [0.8, 0.2]}),
        ["params.prune.ratio", "0.8", "0.2", "low < high"],
    ),
    (
        "loguniform-zero",
        _with(params__distill__temperature={"loguniform": [0.0, 10.0]}),
        ["params.distill.temperature", "loguniform", "0.0", "0 < low"],
    ),
    ("empty-choice", _with(params__prune__method={"choice": []}), ["params.prune.method", "[]"]),
    (
        "unknown-distribution",
        _with(params__prune__ratio={"normal": [0.1, 0.2]}),
        ["params.prune.ratio", "'normal'"],
    ),
    (
        "range-not-two",
        _with(params__prune__ratio={"uniform": [0.1]}),
        ["params.prune.ratio", "[0.1]", "two numbers"],
    ),
    (
        "int-float-bounds",
        _with(params__lora__rank={"int": [0.5, 8]}),
        ["params.lora.rank", "0.5", "integer"],
    ),
    (
        "int-step-misfit",
        _with(params__lora__rank={"int": [0, 9], "step": 4}),
        ["params.lora.rank", "step 4", "9"],
    ),
    ("list-as-value", _with(params__prune__ratio=[0.1, 0.2]), ["params.prune.ratio", "choice"]),
    (
        "bad-choice-value",
        _with(params__prune__method={"choice": ["l1_unstructured", "magnitude"]}),
        ["params.prune.method", "'magnitude'", "structured"],
    ),
    (
        "unknown-objective",
        _with(objectives={"acuracy": "max"}),
        ["objectives.acuracy", "did you mean val_accuracy"],
    ),
    (
        "bad-direction",
        _with(objectives={"val_accuracy": "maximize"}),
        ["objectives.val_accuracy", "'maximize'", "max, min"],
    ),
    (
        "constraint-syntax",
        _with(constraints={"val_accuracy": "at least 0.9"}),
        ["constraints.val_accuracy", "'at least 0.9'", ">="],
    ),
    (
        "constraint-unknown-metric",
        _with(constraints={"size": "<= 5000"}),
        ["constraints.size", "'size'", "size_bytes"],
    ),
    ("trials-zero", _with(search={"trials": 0}), ["search.trials", "0", ">= 1"]),
    ("bad-algorithm", _with(search={"algorithm": "bayes"}), ["search.algorithm", "'bayes'"]),
    (
        "bad-scheduler",
        _with(search={"scheduler": "hyperband"}),
        ["search.scheduler", "'hyperband'"],
    ),
    ("bad-time-budget", _with(search={"time_budget": "soon"}), ["search.time_budget", "'soon'"]),
    ("bad-sampler", _with(search={"sampler": "cmaes"}), ["search.sampler", "'cmaes'", "gp"]),
    ("unknown-search-key", _with(search={"trails": 3}), ["search.trails", "search.trials"]),
    ("bad-latency", _with(latency={"repeats": 0}), ["latency.repeats", "0"]),
    ("bad-precision", _with(latency={"precision": 2}), ["latency.precision", "2", "[0, 1)"]),
    (
        "null-precision",
        _with(latency={"precision": None}),
        ["latency.precision", "null (an empty value)", "not a number"],
    ),
    (
        "text-precision",
        _with(latency={"precision": "2%"}),
        ["latency.precision", "'2%'", "not a number"],
    ),
    (
        "grid-with-range",
        _with(search={"algorithm": "grid"}),
        ["params.prune.ratio", "uniform", "grid"],
    ),
    ("unknown-task", _with(task="digit"), ["task", "'digit'", "did you mean digits"]),
    (
        "task-import-fails",
        _with(task="squeezeray_no_such_module_xyz:make"),
        ["task", "squeezeray_no_such_module_xyz"],
    ),
]


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_space_loads(name: str) -> None:
    space = load_space(name, check_task=True)
    assert space.source == str(packaged_space_path(name))
    assert space.pipeline[0] == "teacher"
    assert space.search.trials >= 1
    # Every stage gets a params object from the fixed values plus a mid-range sample.
    sample = {k: _middle(d) for k, d in space.searched().items()}
    for stage in space.pipeline:
        get_stage(stage).make_params(space.stage_params(stage, sample))


def test_packaged_names_and_default() -> None:
    assert {"default", "quick", "tiny", "digits-cnn"} <= set(PACKAGED)
    assert load_space(None, check_task=False) == load_space("default", check_task=False)
    with pytest.raises(SqueezerayError, match="did you mean quick"):
        load_space("quik")


def test_default_space_searches_the_required_knobs() -> None:
    space = load_space(None)
    searched = space.searched()
    for knob in (
        "distill.temperature",
        "distill.alpha",
        "prune.ratio",
        "prune.method",
        "lora.rank",
        "quantize.mode",
    ):
        assert knob in searched, knob
    assert space.task == "digits"
    assert space.search.algorithm == "optuna" and space.search.trials == 24
    # Expensive upstream knobs are choices, so trials share teacher and KD runs.
    assert searched["distill.temperature"].kind == "choice"
    assert searched["distill.alpha"].kind == "choice"
    assert [o.name for o in space.objectives] == ["val_accuracy", "size_bytes", "latency_ms_sweep"]


def test_tiny_space_shares_teacher_and_kd() -> None:
    space = load_space("tiny")
    assert space.search.trials == 4
    assert not any(k.split(".")[0] in ("teacher", "distill") for k in space.searched())


def test_parse_values_and_helpers(tmp_path: Path) -> None:
    text = """
name: mine
task: digits
pipeline: [teacher, distill, prune, lora, quantize]
objectives: {val_accuracy: max, latency_ms_sweep_p90: min}
params:
  distill.temperature: {choice: [1, 2, 4]}     # ints become floats for a float param
  distill.lr: 3e-3                             # YAML 1.1 would read this as a string
  prune.ratio: {uniform: [0, 0.5]}
  lora.rank: {int: [0, 8], step: 4}
  teacher.epochs: 5
constraints: {val_accuracy: ">= 0.9", size_bytes: "<= 5e4"}
search: {algorithm: random, trials: 3, seed: 7, scheduler: asha, time_budget: 1h30m,
         max_concurrent: 2, sampler: gp}
latency: {warmup: 3, repeats: 9, precision: 0.05}
"""
    space = load_space(_write(tmp_path, text))
    temp = space.params["distill.temperature"]
    assert temp.choices == (1.0, 2.0, 4.0)
    assert all(isinstance(v, float) for v in temp.choices)
    assert space.fixed() == {"distill.lr": 0.003, "teacher.epochs": 5}
    assert list(space.searched()) == ["distill.temperature", "prune.ratio", "lora.rank"]
    assert space.params["lora.rank"].values_for_validation() == [0, 8]
    assert space.params["prune.ratio"].values_for_validation() == [0.0, 0.5]
    assert space.search.time_budget_s == 5400.0
    assert space.search.scheduler == "asha" and space.search.max_concurrent == 2
    assert space.search.sampler == "gp"
    assert space.latency.warmup == 3 and space.latency.repeats == 9
    assert space.latency.batch_size == 1 and space.latency.precision == 0.05
    assert [str(c) for c in space.constraints] == ["val_accuracy >= 0.9", "size_bytes <= 50000"]
    sampled = {"distill.temperature": 2.0, "prune.ratio": 0.25, "lora.rank": 4}
    assert space.stage_params("distill", sampled) == {"lr": 0.003, "temperature": 2.0}
    assert space.stage_params("prune", sampled) == {"ratio": 0.25}
    assert space.stage_params("quantize", sampled) == {}
    text_summary = space.summary()
    for part in (
        "digits",
        "teacher -> distill",
        "prune.ratio",
        "uniform [0.0, 0.5]",
        "teacher.epochs",
        "3 trials",
    ):
        assert part in text_summary, part


def test_with_overrides_revalidates() -> None:
    space = load_space("tiny")
    changed = space.with_overrides(trials=9, seed=3, name="x", time_budget_s=60, task="digits")
    assert (changed.search.trials, changed.search.seed, changed.name) == (9, 3, "x")
    assert changed.search.time_budget_s == 60.0 and changed.task == "digits"
    assert space.search.trials == 4  # frozen original untouched
    with pytest.raises(SqueezerayError, match="--trials"):
        space.with_overrides(trials=0)
    with pytest.raises(SqueezerayError, match=r"--task.*'digit'"):
        space.with_overrides(task="digit")
    with pytest.raises(SqueezerayError, match=r"--time-budget: -1.0 .*accepted: a duration > 0"):
        space.with_overrides(time_budget_s=-1.0)
    with pytest.raises(SqueezerayError, match=r"--time-budget: True is not a duration"):
        space.with_overrides(time_budget_s=True)  # type: ignore[arg-type]
    assert space.with_overrides(algorithm="grid").search.algorithm == "grid"  # tiny: choices
    with pytest.raises(SqueezerayError, match=r"params\.prune\.ratio.*grid"):
        load_space("default").with_overrides(algorithm="grid")


def test_user_task_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sq_cfg_user_task.py").write_text(
        "from stages.tasks import make_blobs\n"
        "def good():\n    return make_blobs(n_per_class=40)\n"
        "def broken():\n    raise ValueError('no data here')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    space = parse_space(_with(task="sq_cfg_user_task:good"), source="s.yaml")
    assert space.task == "sq_cfg_user_task:good"
    with pytest.raises(SqueezerayError, match=r"s\.yaml: task: .*no data here"):
        parse_space(_with(task="sq_cfg_user_task:broken"), source="s.yaml")
    with pytest.raises(SqueezerayError, match=r"s\.yaml: task: .*no attribute 'missing'"):
        parse_space(_with(task="sq_cfg_user_task:missing"), source="s.yaml")
    # check_task=False skips importing (the sweep checks it once on the driver).
    skipped = parse_space(_with(task="nowhere_xyz:make"), source="s.yaml", check_task=False)
    assert skipped.task == "nowhere_xyz:make"


@pytest.mark.parametrize(("case", "content", "parts"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_space_is_rejected(
    tmp_path: Path, case: str, content: dict[str, Any] | str, parts: list[str]
) -> None:
    ray_was_loaded = "ray" in sys.modules
    path = _write(tmp_path, content)
    with pytest.raises(SqueezerayError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    if not ray_was_loaded:
        assert "ray" not in sys.modules


def test_bad_battery_is_large_enough() -> None:
    assert len(BAD_CASES) >= 15


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("1d", 86400),
        ("45", 45),
        (" 2m 30s ", 150),
        (12.5, 12.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5m", "0s", "0", "1m1m", "m", True])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(SqueezerayError, match="accepted"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("op", "bound", "value", "violation"),
    [
        (">=", 0.95, 0.97, 0.0),
        (">=", 0.95, 0.95, 0.0),
        (">=", 0.95, 0.90, 0.05),
        ("<=", 5000, 4000, 0.0),
        ("<=", 5000, 6500, 1500),
        (">", 1.0, 2.0, 0.0),
        ("<", 1.0, 0.5, 0.0),
        ("<", 1.0, 3.0, 2.0),
        ("==", 2.0, 2.0, 0.0),
        ("==", 2.0, 2.5, 0.5),
    ],
)
def test_constraint_violation(op: str, bound: float, value: float, violation: float) -> None:
    c = Constraint("accuracy", op, bound)
    assert c.violation(value) == pytest.approx(violation)
    assert c.satisfied(value) == (violation == 0.0)


def test_constraint_strict_bound_and_nan() -> None:
    assert Constraint("accuracy", ">", 0.9).violation(0.9) > 0  # hit exactly: still missed
    assert not Constraint("accuracy", "<", 0.9).satisfied(0.9)
    assert math.isinf(Constraint("accuracy", ">=", 0.9).violation(float("nan")))


def test_distribution_describe_never_looks_like_markup() -> None:
    # rich reads "[word" as a style tag; choices are shown as reprs ("['a', 'b']").
    assert Distribution("choice", choices=("a", "b")).describe() == "choice ['a', 'b']"
    assert Distribution("int", low=0, high=8, step=4).describe() == "int [0, 8] step 4"


def test_metrics_match_results_schema() -> None:
    from orchestrator.store.schema import METRIC_COLUMNS

    assert set(METRICS) == set(METRIC_COLUMNS)


def test_search_space_is_frozen_and_pickles() -> None:
    space = load_space("tiny")
    assert isinstance(space, SearchSpace)
    assert pickle.loads(pickle.dumps(space)) == space  # it may travel to Ray workers
    with pytest.raises(AttributeError):
        space.task = "digits"  # type: ignore[misc]


def _middle(d: Distribution) -> Any:
    if d.kind == "choice":
        return d.choices[len(d.choices) // 2]
    assert d.low is not None and d.high is not None
    if d.kind == "int":
        return int(d.low)
    return (d.low + d.high) / 2


def test_accuracy_objectives_and_constraints_select_on_the_validation_column(
    tmp_path: Path,
) -> None:
    """Objectives and constraints name their column; the bare `accuracy` and the test split are
    refused with the columns to choose from."""
    data = _with(constraints={"val_accuracy": ">= 0.9", "size_bytes": "< 5000"})
    space = load_space(_write(tmp_path, data))
    assert [o.name for o in space.objectives] == ["size_bytes", "val_accuracy"]  # sorted YAML
    assert space.search_objectives() == (("size_bytes", "min"), ("val_accuracy", "max"))
    assert space.search_constraints() == (
        ("val_accuracy", ">=", 0.9),
        ("size_bytes", "<", 5000.0),
    )
    assert "the search chooses on the validation split" in space.summary()
    for bad, message in (
        (_with(objectives={"accuracy": "max"}), "'accuracy' is ambiguous; name the column"),
        (_with(constraints={"accuracy": ">= 0.9"}), "'accuracy' is ambiguous; name the column"),
        (_with(objectives={"latency_ms": "min"}), "'latency_ms' is ambiguous; name the column"),
        (_with(objectives={"test_accuracy": "max"}), "'test_accuracy' is the test split"),
        (_with(constraints={"test_accuracy": ">= 0.9"}), "'test_accuracy' is the test split"),
        (_with(objectives={"latency_ms_final": "min"}), "measured after the search"),
    ):
        with pytest.raises(SqueezerayError, match=message):
            load_space(_write(tmp_path, bad, "bad.yaml"))
