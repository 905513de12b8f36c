"""Grid sweeps run each distinct effective configuration once and say how big the grid was."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import trials_phrase
from orchestrator.space.coherence import grid_points
from orchestrator.space.config import load_space

SPACE = """
name: grid-dupes
task: blobs
pipeline: [teacher, distill, quantize, export]
objectives: {val_accuracy: max, size_bytes: min}
params:
  teacher.epochs: 2
  distill.epochs: 1
  quantize.mode: {choice: [none, dynamic_int8, onnx_int8]}
  export.runtime: {choice: [eager, onnxruntime]}
search: {algorithm: grid, trials: 10}
latency: {warmup: 2, repeats: 5}
"""


def _space(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(SPACE))
    return load_space(path)


def test_grid_points_drop_points_with_the_same_effective_configuration(tmp_path: Path) -> None:
    points, total = grid_points(_space(tmp_path))
    assert total == 6
    # none x {eager, onnxruntime} differ; dynamic_int8 x onnxruntime deploys eager (= the
    # eager point); onnx_int8 always deploys to onnxruntime (both runtimes are one config).
    assert points == [
        {"quantize.mode": "none", "export.runtime": "eager"},
        {"quantize.mode": "none", "export.runtime": "onnxruntime"},
        {"quantize.mode": "dynamic_int8", "export.runtime": "eager"},
        {"quantize.mode": "onnx_int8", "export.runtime": "eager"},
    ]
    assert trials_phrase(_space(tmp_path)).startswith("4 trials (grid of 6: 2 points")


@pytest.mark.usefixtures("ray_session")
def test_grid_sweep_runs_each_effective_configuration_once(tmp_path: Path) -> None:
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep

    outcome = execute_sweep(prepare_sweep(_space(tmp_path), storage=tmp_path / "results"))
    trials = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    assert len(trials) == 4, [r["params"] for r in trials]
    assert all(r["status"] == "ok" for r in trials), [r["error"] for r in trials]
    effective = {
        (json.loads(r["params"])["quantize.mode"], json.loads(r["params"])["export.runtime"])
        for r in trials
    }
    assert effective == {
        ("none", "eager"),
        ("none", "onnxruntime"),
        ("dynamic_int8", "eager"),
        ("onnx_int8", "onnxruntime"),
    }


def test_validate_summary_gives_the_grid_trials_not_search_trials(tmp_path: Path) -> None:
    summary = _space(tmp_path).summary()
    assert "grid, 4 trials (grid of 6: 2 points repeat another's effective" in summary, summary


def test_lowrank_after_unstructured_prune_is_its_recorded_no_op(tmp_path: Path) -> None:
    """lowrank leaves layers holding pruned zeros whole, so after an unstructured prune it has
    nothing to factorise: the space makes it `rank_ratio: 1.0` (its no-op) instead of a trial
    that can only fail; the default prune method counts as what it is (l1_unstructured)."""
    from orchestrator.space.coherence import effective_knobs
    from stages.prune import PruneParams

    pipeline = ("teacher", "prune", "lowrank")
    for method, kept in (("l1_unstructured", 1.0), ("global", 1.0), ("random", 1.0),
                         ("structured", 0.5)):  # fmt: skip
        knobs = effective_knobs({"prune.method": method, "lowrank.rank_ratio": 0.5}, pipeline)
        assert knobs["lowrank.rank_ratio"] == kept, method
    assert PruneParams().method == "l1_unstructured" and PruneParams().ratio == 0.5
    default = effective_knobs({"lowrank.rank_ratio": 0.5}, pipeline)
    assert default["lowrank.rank_ratio"] == 1.0
    unpruned = effective_knobs({"prune.ratio": 0.0, "lowrank.rank_ratio": 0.5}, pipeline)
    assert unpruned["lowrank.rank_ratio"] == 0.5  # no zeros: lowrank applies


def test_a_knob_the_task_does_not_use_is_not_recorded() -> None:
    """distill.student_ratio shapes the student made from the teacher; a task with its own
    student does not use it, so its trials' effective knobs leave it out."""
    from orchestrator.engine.pipeline import SweepPlan
    from orchestrator.engine.plan import stage_defaults

    pipeline = ("teacher", "distill")
    plan = SweepPlan(sweep_id="s", task="t", pipeline=pipeline, defaults=stage_defaults(pipeline),
                     fixed={}, code_version="v", storage="x", objectives=(),
                     fingerprint={"teacher": "a", "student": "b", "data": "c"})  # fmt: skip
    assert "student_ratio" not in plan.resolve({})["distill"]
    made = SweepPlan(**{**plan.__dict__, "fingerprint": {"teacher": "a", "student": "none"}})
    assert made.resolve({})["distill"]["student_ratio"] == 0.5


GRID_LOWRANK = {
    "name": "prune-x-lowrank",
    "task": "digits",
    "pipeline": ["teacher", "prune", "lowrank"],
    "objectives": {"val_accuracy": "max", "size_bytes": "min"},
    "params": {
        "teacher.epochs": 2,
        "prune.ratio": 0.5,
        "prune.method": {"choice": ["l1_unstructured", "structured"]},
        "lowrank.rank_ratio": 0.5,
        "lowrank.epochs": 1,
    },
    "search": {"algorithm": "grid", "trials": 2},
    "latency": {"warmup": 2, "repeats": 5, "rounds": 2},
}


def _summary_and_start(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> tuple[Any, str, str]:
    """The space in `text` loaded, validate's summary of it, and the sweep's first lines."""
    from types import SimpleNamespace

    from orchestrator.cli import _print_start

    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    space = load_space(path)
    summary = space.summary()
    storage = SimpleNamespace(uri=str(tmp_path / "runs"))
    _print_start("sweep", SimpleNamespace(sweep_id="s1", space=space, storage=storage))
    return space, summary, capsys.readouterr().err


LOWRANK_SPACE = """
name: lowrank-skip
task: blobs
pipeline: [teacher, prune, finetune, lowrank, quantize]
params:
  prune.method: {method}
  prune.ratio: {ratio}
  lowrank.rank_ratio: 0.5
  quantize.mode: {{choice: [none, dynamic_int8]}}
search: {{algorithm: grid}}
"""


@pytest.mark.parametrize(
    ("method", "ratio", "said"),
    [
        ("l1_unstructured", "0.3", "warning: lowrank.rank_ratio 0.5 applies in no trial"),
        ("{choice: [l1_unstructured, structured]}", "0.3", "note: lowrank.rank_ratio 0.5 is "),
        ("global", "{choice: [0.0, 0.3]}", "note: lowrank.rank_ratio 0.5 is skipped"),
        ("structured", "0.3", None),
        ("l1_unstructured", "0.0", None),  # no zeros: lowrank applies
    ],
)
def test_validate_and_the_sweep_say_when_lowrank_is_skipped_after_unstructured_pruning(
    tmp_path: Path, method: str, ratio: str, said: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed lowrank.rank_ratio 0.5 after l1_unstructured ran as 1.0 in every trial while
    validate listed 0.5 under "fixed" and the sweep said nothing (new user 6 F4): validate's
    summary and the sweep's start line say so, from the rule the trials run
    (`coherence.make_coherent`)."""
    _, summary, started = _summary_and_start(
        tmp_path, LOWRANK_SPACE.format(method=method, ratio=ratio), capsys
    )
    if said is None:
        assert "warning:" not in summary and "note:" not in summary, summary
        assert "lowrank" not in started, started
        return
    for text in (summary, started):
        flat = " ".join(text.split())
        assert said in flat, text
        assert "lowrank after an unstructured prune runs as its no-op rank_ratio 1.0" in flat
    if said.startswith("warning"):
        assert "prune.method structured, or drop lowrank" in " ".join(summary.split()).replace(
            ":", ""
        )


RUNTIME_SPACE = """
name: runtime-rule
task: blobs
pipeline: [teacher, quantize, export]
params:
  quantize.mode: {mode}
  export.runtime: {runtime}
search: {{algorithm: grid}}
"""


@pytest.mark.parametrize(
    ("mode", "runtime", "said", "why"),
    [
        ("onnx_int8", "eager", "warning: export.runtime 'eager' applies in no trial",
         "rows record export.runtime onnxruntime. Set export.runtime: onnxruntime"),
        ("{choice: [none, onnx_int8]}", "torchscript",
         "note: export.runtime 'torchscript' is replaced by onnxruntime (recorded so) in the "
         "trials whose quantize.mode is 'onnx_int8'", "deploys on onnxruntime only"),
        ("dynamic_int8", "onnxruntime", "warning: export.runtime 'onnxruntime' applies in no "
         "trial", "rows record export.runtime eager. Set export.runtime: eager"),
        ("{choice: [none, float16]}", "onnxruntime",
         "note: export.runtime 'onnxruntime' is replaced by eager (recorded so) in the trials "
         "whose quantize.mode is 'float16'", "makes a model onnxruntime cannot run"),
        ("{choice: [none, onnx_int8]}", "onnxruntime", None, None),
        ("dynamic_int8", "torchscript", None, None),
        # both rules in one grid (new user F-RNN-3's lstm.yaml): each replacement its note
        ("{choice: [none, dynamic_int8, onnx_int8]}", "{choice: [eager, onnxruntime]}",
         "note: export.runtime 'eager' is replaced by onnxruntime (recorded so) in the trials "
         "whose quantize.mode is 'onnx_int8'",
         "note: export.runtime 'onnxruntime' is replaced by eager (recorded so) in the trials "
         "whose quantize.mode is 'dynamic_int8'"),
    ],
)  # fmt: skip
def test_validate_and_the_sweep_say_when_export_runtime_is_replaced(
    tmp_path: Path,
    mode: str,
    runtime: str,
    said: str | None,
    why: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An export.runtime the quantize.mode replaces (an ONNX mode deploys on onnxruntime, a
    torch-quantized one never does) ran and was recorded as the other runtime while validate
    listed the space's value and the sweep said nothing. Now both say so, as for lowrank, from
    the rule the trials run: the warning exactly when no grid point runs the runtime set."""
    from orchestrator.space.coherence import effective_knobs

    space, summary, started = _summary_and_start(
        tmp_path, RUNTIME_SPACE.format(mode=mode, runtime=runtime), capsys
    )
    points, _ = grid_points(space)
    ran = [
        effective_knobs({**space.fixed(), **p}, space.pipeline)["export.runtime"] for p in points
    ]
    if said is None:
        assert "warning:" not in summary and "note:" not in summary, summary
        assert "warning:" not in started and "note:" not in started, started
        assert set(ran) == {runtime}
        return
    for text in (summary, started):
        flat = " ".join(text.split())
        assert said in flat and str(why) in flat, text
    runtimes = set(re.findall(r"\w+", runtime)) - {"choice"}  # the runtimes the space sets
    assert (not runtimes & set(ran)) == said.startswith("warning"), ran


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_grid_of_prune_method_x_lowrank_runs_no_error_rows(tmp_path: Path) -> None:
    """Through Ray, from a dict space: the unstructured point runs as lowrank's no-op (no
    error row); `run_sweep` returns a SweepResult whose helpers answer on the same rows."""
    import orchestrator

    result = orchestrator.run_sweep(GRID_LOWRANK, storage=tmp_path / "runs")
    assert isinstance(result, orchestrator.SweepResult)
    trials = [r for r in result.table.to_pylist() if not r["is_baseline"]]
    assert [r["status"] for r in trials] == ["ok", "ok"], [r["error"] for r in trials]
    ratio = {json.loads(r["params"])["prune.method"]: json.loads(r["params"]) for r in trials}
    assert ratio["l1_unstructured"]["lowrank.rank_ratio"] == 1.0
    assert ratio["structured"]["lowrank.rank_ratio"] == 0.5
    # the result object
    assert result.front().num_rows >= 1 and len(result.to_pandas()) == len(trials) + 1
    smallest = result.best("size_bytes", where="val_accuracy >= 0")
    assert smallest["size_bytes"] == min(r["size_bytes"] for r in trials)
    with pytest.raises(orchestrator.SqueezerayError, match="'accuracy' is ambiguous"):
        result.best("accuracy")
    assert result.plot(tmp_path / "front.png").stat().st_size > 1000
    card = result.export(smallest["trial_id"], tmp_path / "model").card
    assert card["ratios"]["speedup"] == smallest["speedup"] and card["recheck"]["ok"]
    again = orchestrator.run_sweep(storage=tmp_path / "runs", resume=True,
                                   sweep_id=result.sweep_id)  # fmt: skip
    assert again.sweep_id == result.sweep_id and again.table.num_rows == result.table.num_rows


NEW_MODES_SPACE = """
name: quantize-modes
task: blobs
pipeline: [teacher, quantize, export]
objectives: {val_accuracy: max, size_bytes: min}
params:
  teacher.epochs: 1
  quantize.mode: {choice: [torchao_dynamic_int8, int8_weight_only, static_int8, qat,
                           onnx_static_int8, float16, bfloat16]}
  export.runtime: {choice: [eager, onnxruntime, compiled]}
search: {algorithm: grid}
"""


def test_every_quantize_mode_parses_and_deploys_where_it_can(tmp_path: Path) -> None:
    """The space parser accepts the torchao/PT2E/ORT-static/half modes and the `compiled`
    runtime; onnx_static_int8 always deploys to onnxruntime, torch modes never do."""
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(NEW_MODES_SPACE))
    points, total = grid_points(load_space(path))
    assert total == 7 * 3
    from orchestrator.space.coherence import effective_knobs

    runtimes: dict[str, set[str]] = {}
    for point in points:
        knobs = effective_knobs(point, ("teacher", "quantize", "export"))
        runtimes.setdefault(knobs["quantize.mode"], set()).add(knobs["export.runtime"])
    assert runtimes.pop("onnx_static_int8") == {"onnxruntime"}
    assert all(found == {"eager", "compiled"} for found in runtimes.values()), runtimes


def test_int4_without_its_kernel_package_is_refused_when_the_space_loads(tmp_path: Path) -> None:
    import importlib.util

    from stages.errors import SqueezerayError

    if importlib.util.find_spec("mslk") is not None:
        pytest.skip("mslk is installed: int4_weight_only runs")
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(NEW_MODES_SPACE).replace("bfloat16]", "int4_weight_only]"))
    with pytest.raises(SqueezerayError, match=r"int4_weight_only.*mslk"):
        load_space(path)
