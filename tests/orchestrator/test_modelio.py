"""A user's trained model in, the chosen compressed model out (issue 14), through real Ray.

The user module is written the way a user writes one: its own nn.Module, its own data split,
a teacher factory that loads a state dict trained outside squeezeray (`weights_only=True`).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from orchestrator.engine.stage_tasks import CACHE_DIR
from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.query.checkpoints import load_model
from orchestrator.query.export import export_trial
from orchestrator.query.pareto import pareto_front
from orchestrator.space.config import load_space
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

USER_MODULE = """
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from stages import Task

WEIGHTS = Path(__file__).with_name("net.pt")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU())
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.body(x))


def splits():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    train, val, test = order[:1200], order[1200:1500], order[1500:]
    return (TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
            TensorDataset(x[test], y[test]))


def pretrained():
    net = Net()
    net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return net.eval()


def make_task():
    train, val, test = splits()
    return Task(name="userdigits", teacher=pretrained,
                student=lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                train=train, val=val, test=test, num_classes=10)
"""

SPACE = """
name: pretrained
task: {module}:make_task
pipeline: [teacher, distill, prune, export]
objectives: {{val_accuracy: max, size_bytes: min, latency_ms_sweep: min}}
params:
  teacher.epochs: 0
  distill.epochs: 3
  prune.ratio: 0.3
  export.runtime: {{choice: [onnxruntime, torchscript, eager]}}
search: {{algorithm: grid, trials: 1}}
latency: {{warmup: 2, repeats: 5}}
"""


def _train_outside(module: Any) -> float:
    """Train the user's Net with a plain torch loop, save its state dict, return test accuracy."""
    torch.manual_seed(0)
    net = module.Net()
    train, _, test = module.splits()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(8):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    torch.save(net.state_dict(), module.WEIGHTS)
    x, y = test.tensors
    with torch.no_grad():
        return int((net.eval()(x).argmax(1) == y).sum()) / len(y)


def _user_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *, student: bool = True
) -> Any:
    import importlib

    text = textwrap.dedent(USER_MODULE)
    if not student:
        text = text.replace(
            "student=lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),",
            "student=None,",
        )
        assert "student=None" in text
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def _test_accuracy(logits: np.ndarray | torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.as_tensor(np.asarray(logits)).argmax(1)
    return int((pred == y).sum()) / len(y)


def test_pretrained_teacher_sweep_export_and_load_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _user_module(tmp_path, monkeypatch, "usermodel_pre")
    outside_accuracy = _train_outside(module)
    saved = torch.load(module.WEIGHTS, weights_only=True)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE.format(module="usermodel_pre"))
    storage = tmp_path / "runs"
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=storage))
    rows = outcome.table.to_pylist()
    baseline = next(r for r in rows if r["is_baseline"])
    trials = [r for r in rows if not r["is_baseline"]]
    assert [r["status"] for r in trials] == ["ok"] * 3, [r["error"] for r in trials]
    # The teacher stage trained nothing: its checkpoint is the saved state dict, bit for bit,
    # and the baseline's accuracy is the one computed outside squeezeray.
    assert baseline["status"] == "ok"
    assert baseline["test_accuracy"] == pytest.approx(outside_accuracy, abs=1e-12)
    teacher_key = baseline["stage_keys"][0]
    teacher = ModelCheckpoint.from_bytes((storage / CACHE_DIR / f"{teacher_key}.ckpt").read_bytes())
    assert teacher.state_dict.keys() == saved.keys()
    assert all(torch.equal(teacher.state_dict[k], saved[k]) for k in saved)
    assert all(r["stage_keys"][0] == teacher_key for r in trials)
    # The front is computed over the trials.
    front = pareto_front(outcome.table, {"val_accuracy": "max", "size_bytes": "min"})
    assert front.num_rows >= 1
    assert any(r["speedup"] is not None for r in trials)  # the front was re-measured

    _, _, test = module.splits()
    x, y = test.tensors
    by_runtime = {r["runtime"]: r for r in trials}
    assert set(by_runtime) == {"onnxruntime", "torchscript", "eager"}
    for runtime, row in by_runtime.items():
        out = tmp_path / f"export-{runtime}"
        result = export_trial(storage, row["trial_id"], output=out)
        card = json.loads((out / "model.json").read_text())
        assert card["trial_id"] == row["trial_id"] and card["sweep_id"] == row["sweep_id"]
        assert card["runtime"] == runtime
        assert card["knobs"]["teacher.epochs"] == 0 and card["knobs"]["prune.ratio"] == 0.3
        assert card["metrics"]["test_accuracy"] == row["test_accuracy"]
        assert card["baseline"]["test_accuracy"] == baseline["test_accuracy"]
        assert card["ratios"]["size_x"] == pytest.approx(baseline["size_bytes"] / row["size_bytes"])
        # one latency ratio: the card's is the row's paired speedup (null if not re-measured)
        assert card["ratios"]["speedup"] == row["speedup"] and "latency_x" not in card["ratios"]
        assert card["metrics"]["latency_ms_final"] == row["latency_ms_final"]
        # one flag, one name: the row's (and, for speedup, its baseline's) latency_cv > 0.25
        from orchestrator.query.steadiness import latency_unsteady, speedup_unsteady

        assert card["metrics"]["latency_unsteady"] == latency_unsteady(row)
        assert card["baseline"]["latency_unsteady"] == latency_unsteady(baseline)
        if row["speedup"] is not None:
            assert card["ratios"]["latency_unsteady"] == speedup_unsteady(row, baseline)
        assert card["stage_keys"] == row["stage_keys"]
        assert card["recheck"]["ok"] is True
        for name, digest in card["sha256"].items():
            import hashlib

            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert set(result.files) >= {"model.json", card["artifact"]}
        # Run the written file the way a deployment would, without squeezeray.
        if runtime == "onnxruntime":
            import onnxruntime as ort

            session = ort.InferenceSession(str(out / "model.onnx"))
            logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        else:
            scripted = torch.jit.load(str(out / "model.pt"))
            with torch.no_grad():
                logits = scripted(x)
        assert _test_accuracy(logits, y) == pytest.approx(row["test_accuracy"], abs=1e-12)
        if runtime == "eager":
            assert {"state_dict.pt", "recipe.json", "checkpoint.pt"} <= set(card["sha256"])
            state = torch.load(out / "state_dict.pt", weights_only=True)
            assert state.keys() == set(
                ModelCheckpoint.from_bytes((out / "checkpoint.pt").read_bytes()).state_dict
            )
        # load_model: a ready predictor in the measured runtime.
        predictor = load_model(storage, row["trial_id"], sweep=row["sweep_id"])
        if runtime == "onnxruntime":
            assert not isinstance(predictor, torch.nn.Module)
        else:
            assert isinstance(predictor, torch.nn.Module)
        with torch.no_grad():
            assert _test_accuracy(predictor(x), y) == pytest.approx(row["test_accuracy"], abs=1e-12)

    # --where/--pick through the CLI: the smallest trial at least as accurate as the worst.
    from typer.testing import CliRunner

    from orchestrator.cli import app

    floor = min(r["val_accuracy"] for r in trials)
    smallest = min(trials, key=lambda r: (r["size_bytes"], r["trial_id"]))
    result = CliRunner().invoke(
        app,
        ["export", "--storage", str(storage), "--where", f"val_accuracy >= {floor}",
         "--pick", "size_bytes", "--output", str(tmp_path / "picked")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    picked = json.loads((tmp_path / "picked" / "model.json").read_text())
    assert picked["trial_id"] == smallest["trial_id"]

    # A damaged checkpoint: a clear error naming what to re-run; --recompute rebuilds it.
    row = by_runtime["onnxruntime"]
    final = storage / CACHE_DIR / f"{row['stage_keys'][-1]}.ckpt"
    final.write_bytes(final.read_bytes()[:100])
    with pytest.raises(SqueezerayError, match=r"export stage.*sha256.*--recompute"):
        export_trial(storage, row["trial_id"], output=tmp_path / "broken")
    result = CliRunner().invoke(
        app,
        [
            "export",
            row["trial_id"],
            "--storage",
            str(storage),
            "--output",
            str(tmp_path / "broken"),
        ],
    )
    assert result.exit_code == 2 and "--recompute" in result.output
    again = export_trial(storage, row["trial_id"], output=tmp_path / "again", recompute=True)
    assert again.card["recheck"]["ok"] is True


NO_STUDENT_SPACE = """
name: made-student
task: {module}:make_task
pipeline: [teacher, distill]
params:
  teacher.epochs: 0
  distill.epochs: 3
  distill.student_ratio: {{choice: [0.25, 0.5]}}
search: {{algorithm: grid, trials: 1}}
latency: {{warmup: 2, repeats: 5}}
"""


def test_student_made_from_a_pretrained_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task with student=None: each trial's student is the teacher pruned to its
    student_ratio and distilled; the smaller ratio has fewer parameters."""
    module = _user_module(tmp_path, monkeypatch, "usermodel_nostudent", student=False)
    _train_outside(module)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(NO_STUDENT_SPACE.format(module="usermodel_nostudent"))
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=tmp_path / "runs"))
    rows = outcome.table.to_pylist()
    baseline = next(r for r in rows if r["is_baseline"])
    trials = {
        json.loads(r["params"])["distill.student_ratio"]: r for r in rows if not r["is_baseline"]
    }
    assert set(trials) == {0.25, 0.5}
    assert all(r["status"] == "ok" for r in trials.values()), [r["error"] for r in trials.values()]
    assert trials[0.25]["params_total"] < trials[0.5]["params_total"] < baseline["params_total"]
    assert all(r["test_accuracy"] > 0.5 for r in trials.values())


def test_student_ratio_on_a_task_with_a_student_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _user_module(tmp_path, monkeypatch, "usermodel_withstudent")
    _train_outside(module)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(NO_STUDENT_SPACE.format(module="usermodel_withstudent"))
    with pytest.raises(SqueezerayError, match=r"distill.student_ratio.*own student.*student=None"):
        prepare_sweep(load_space(space_file), storage=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


F1_MODULE = """
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import TensorDataset

from stages import Metric, Task


def macro_f1(logits, targets):
    return f1_score(targets.numpy(), logits.argmax(1).numpy(), average="macro")


def split(n_per_class, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    xs = [torch.randn(n, 2, generator=g) + c for n, c in zip(n_per_class, centres)]
    ys = [torch.full((n,), k) for k, n in enumerate(n_per_class)]
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def make_task():
    # imbalanced: 20:4:1, so accuracy hides a rare class that macro F1 does not
    return Task(
        name="imbalanced",
        teacher=lambda: nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 3)),
        student=lambda: nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)),
        train=split([800, 160, 40], 0),
        val=split([200, 40, 10], 1),
        test=split([200, 40, 10], 2),
        num_classes=3,
        metric=Metric("f1_macro", macro_f1, "max"),
    )
"""

F1_SPACE = """
name: f1
task: usermetric_f1:make_task
pipeline: [teacher, distill, prune]
objectives: {val_f1_macro: max, size_bytes: min}
constraints: {val_f1_macro: ">= 0.3"}
params:
  teacher.epochs: 4
  distill.epochs: 3
  prune.ratio: {uniform: [0.1, 0.95]}
  prune.method: global
search: {algorithm: optuna, trials: 3, seed: 0}
latency: {warmup: 2, repeats: 5}
"""


def test_custom_metric_macro_f1_as_objective_and_constraint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.compute as pc
    from sklearn.metrics import f1_score

    from orchestrator.query.frontview import build_front

    (tmp_path / "usermetric_f1.py").write_text(textwrap.dedent(F1_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usermetric_f1", None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(F1_SPACE)
    space = load_space(space_file)
    assert space.search_objectives() == (("val_f1_macro", "max"), ("size_bytes", "min"))
    assert space.search_constraints() == (("val_f1_macro", ">=", 0.3),)
    storage = tmp_path / "runs"
    outcome = execute_sweep(prepare_sweep(space, storage=storage))
    table = outcome.table
    assert {"test_f1_macro", "val_f1_macro"} <= set(table.column_names)
    assert "f1_macro" not in table.column_names  # the bare name is no column
    rows = table.to_pylist()
    trials = [r for r in rows if not r["is_baseline"]]
    assert len(trials) == 3 and all(r["status"] == "ok" for r in trials), rows
    from usermetric_f1 import make_task  # type: ignore[import-not-found]

    task = make_task()
    x, y = task.test.tensors
    for row in [*trials, next(r for r in rows if r["is_baseline"])]:
        assert 0.0 <= row["test_f1_macro"] <= 1.0 and 0.0 <= row["val_f1_macro"] <= 1.0
        # feasibility is judged on the validation column
        if not row["is_baseline"]:
            assert row["feasible"] is (row["val_f1_macro"] >= 0.3)
        # the recorded test value is sklearn's macro F1 of the trial's own model
        model = load_model(storage, row["trial_id"], sweep=row["sweep_id"])
        with torch.no_grad():
            pred = model(x).argmax(1)
        assert row["test_f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    # usable on read: the front (chosen on val_f1_macro) and --where
    view = build_front(
        table, {"val_f1_macro": "max", "size_bytes": "min"}, where="val_f1_macro >= 0"
    )
    assert view.front.num_rows >= 1
    assert "val_f1_macro" in view.objectives
    kept = table.filter(pc.greater_equal(table.column("test_f1_macro"), 0.0))
    assert kept.num_rows == len(rows)
    # export re-checks the metric too, and its card carries it
    best = max(trials, key=lambda r: (r["val_f1_macro"], r["trial_id"]))
    card = export_trial(storage, output=tmp_path / "best", pick="val_f1_macro").card
    assert card["trial_id"] == best["trial_id"]
    assert card["metrics"]["test_f1_macro"] == best["test_f1_macro"]
    assert card["recheck"]["ok"] and card["recheck"]["f1_macro"] == pytest.approx(
        best["test_f1_macro"]
    )


def test_unknown_metric_names_the_task_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "usermetric_f1b.py").write_text(textwrap.dedent(F1_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usermetric_f1b", None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        F1_SPACE.replace("usermetric_f1:", "usermetric_f1b:").replace(
            "{val_f1_macro: max", "{f1: max"
        )
    )
    with pytest.raises(SqueezerayError, match=r"objectives.f1: 'f1' is not a metric.*val_f1_macro"):
        load_space(space_file)
    with pytest.raises(SqueezerayError, match=r"objectives.f1: .*val_f1_macro"):
        prepare_sweep(load_space(space_file, check_task=False), storage=tmp_path / "runs")
    # a built-in task has no metric of its own: caught without importing anything
    builtin = tmp_path / "builtin.yaml"
    builtin.write_text("task: digits\npipeline: [teacher]\nobjectives: {f1_macro: max}\n")
    with pytest.raises(SqueezerayError, match=r"objectives.f1_macro: 'f1_macro' is not a metric"):
        load_space(builtin, check_task=False)


WEIGHTS_SPACE = """
task: {module}:make_task
pipeline: [teacher, distill]
params:
  distill.epochs: 2
search: {{algorithm: grid, trials: 1}}
latency: {{warmup: 2, repeats: 5}}
"""


def test_teacher_weights_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squeezeray sweep --teacher-weights PATH`: a factory that builds an untrained model, the
    state dict given on the command line; the teacher is used as given (epochs 0)."""
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.store.results import load_results

    module = _user_module(tmp_path, monkeypatch, "usermodel_weights")
    outside_accuracy = _train_outside(module)
    weights = tmp_path / "elsewhere.pt"
    module.WEIGHTS.rename(weights)
    monkeypatch.setattr(module, "pretrained", module.Net)  # the factory: untrained
    text = (tmp_path / "usermodel_weights.py").read_text()
    (tmp_path / "usermodel_weights.py").write_text(
        text.replace("teacher=pretrained", "teacher=Net")
    )
    sys.modules.pop("usermodel_weights", None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(WEIGHTS_SPACE.format(module="usermodel_weights"))
    storage = tmp_path / "runs"
    # a file that does not fit the teacher fails before Ray, naming the flag
    bad = tmp_path / "bad.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, bad)
    result = CliRunner().invoke(
        app, ["sweep", str(space_file), "--storage", str(storage), "--teacher-weights", str(bad)]
    )
    assert result.exit_code == 2, result.output
    assert "--teacher-weights" in result.output and "does not fit" in result.output
    assert not storage.exists()
    # `squeezeray validate` runs the same check (and loads the good file), no Ray, no storage
    result = CliRunner().invoke(app, ["validate", str(space_file), "--teacher-weights", str(bad)])
    assert result.exit_code == 2 and "does not fit" in result.output, result.output
    result = CliRunner().invoke(
        app, ["validate", str(space_file), "--teacher-weights", str(weights)]
    )
    assert result.exit_code == 0 and "teacher.epochs" in result.output, result.output
    result = CliRunner().invoke(
        app,
        ["sweep", str(space_file), "--storage", str(storage), "--teacher-weights", str(weights)],
    )
    assert result.exit_code == 0, result.output
    # the sweep started: the line that says how to continue it, once (refused ones have none)
    assert result.stderr.count("if interrupted, continue with: squeezeray sweep --resume") == 1
    # stderr is no terminal here: the trial's own plain line, with its validation metrics
    assert re.search(r"trial \S+ ok \(1/1 done\): val accuracy [01]\.\d{4}, size ", result.stderr)
    rows = load_results(storage, sweep="all").to_pylist()
    baseline = next(r for r in rows if r["is_baseline"])
    assert baseline["test_accuracy"] == pytest.approx(outside_accuracy, abs=1e-12)
    knobs = json.loads(next(r for r in rows if not r["is_baseline"])["params"])
    assert knobs["teacher.epochs"] == 0 and knobs["teacher.weights"] == str(weights)
    assert len(knobs["teacher.weights_sha256"]) == 64
    # other weights at the same path: another sha256, so other stage keys
    first = prepare_sweep(load_space(space_file), storage=storage, teacher_weights=weights)
    state = torch.load(weights, weights_only=True)
    state["head.bias"] += 1.0
    torch.save(state, weights)
    second = prepare_sweep(load_space(space_file), storage=storage, teacher_weights=weights)
    assert (
        first.space.fixed()["teacher.weights_sha256"]
        != second.space.fixed()["teacher.weights_sha256"]
    )


PT2E_HF_SPACE = """
task: tests.hf_zoo:bert
pipeline: [teacher, quantize, export]
params:
  teacher.epochs: 1
  quantize.mode: static_int8
  quantize.calibration_batches: 1
search: {algorithm: grid, trials: 1}
latency: {warmup: 1, repeats: 2}
"""


def test_static_int8_hugging_face_row_exports_through_the_cli(tmp_path: Path) -> None:
    """The new user's F3 through a real sweep: `squeezeray export` of a static_int8 row of a
    named-input BERT exits 0 (was: exit 1, a TorchScript RuntimeError traceback), writes
    model.pt2 and says why there is no model.pt and how to load model.pt2; the row's model
    (load_model) runs at a sequence length other than the calibration one (F5). model.pt2
    takes any batch and sequence length and loads in a fresh Python by the card's `load` line
    (which names the import that registers the int8 ops), to the row's logits (was: a
    TorchScript trace of the int8 graph at batch 2 failed the re-check at the row's batch size
    with a traceback). qat rows take the same path (`orchestrator.query.card.is_pt2e`). (This
    test's sweep-less twin in test_hf_export.py, a distilled student's static_int8 row, is
    merged here.)"""
    import subprocess

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from tests import hf_zoo

    space_file = tmp_path / "space.yaml"
    space_file.write_text(PT2E_HF_SPACE)
    storage = tmp_path / "runs"
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=storage))
    (row,) = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    assert row["status"] == "ok", row["error"]
    out = tmp_path / "export"
    args = ["export", row["trial_id"], "--storage", str(storage), "--output", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no model.pt: quantize.mode='static_int8'" in result.output
    text = " ".join(result.output.split())
    assert f"load model.pt2 (in {out}): import torch; import torchao.quantization.pt2e" in text
    assert (out / "model.pt2").is_file() and not (out / "model.pt").exists()
    card = json.loads((out / "model.json").read_text())
    assert card["recheck"]["ok"] and card["artifact"] == "model.pt2"
    assert card["recheck"]["pt2_accuracy"] == card["recheck"]["expected"]
    assert "model.pt" in card["not_written"]
    assert "(torch.export, dynamic batch and sequence axes)" in card["not_written"]["model.pt"]
    hf = card["huggingface"]  # was null: the int8 graph is no PreTrainedModel (new user F6)
    assert set(hf) == {"class", "skipped"} and "quantize.mode='static_int8'" in hf["skipped"]
    assert (out / "vocab.txt").is_file()  # beside model.pt2 (new user F5)
    assert [i["shape"] for i in card["input"]] == [["batch", "sequence"]] * 3
    program = torch.export.load(str(out / "model.pt2"))
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    assert user == [i["name"] for i in card["input"]]  # the program's inputs: the card's names
    x = {k: v[:, : hf_zoo.SEQ_LEN - 4] for k, v in hf_zoo.example_batch("bert", 3).items()}
    with torch.no_grad():
        expected = load_model(storage, row["trial_id"])(**x)
    assert expected.shape == (3, hf_zoo.NUM_CLASSES)
    torch.save(tuple(x.values()), tmp_path / "inputs.pt")
    script = (
        f"{card['load']}\n"  # the documented line, then only plain torch
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(model(*inputs), {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=out, check=True, capture_output=True)
    # int8 rounding of float noise (thread count, op order) moves a logit by ~1e-4
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=2e-3)
