"""`export_trial` and `load_model` on stored rows, without Ray: every runtime and int8 mode.

The storage is written the way a sweep writes it (a checkpoint + sha256 manifest under
cache/, a results row with the measured metrics), so each case takes a second, not a sweep.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.query.checkpoints import load_model
from orchestrator.query.choose import select_row
from orchestrator.query.export import export_trial
from orchestrator.store.results import append_results, load_results
from orchestrator.store.rows import trial_row
from orchestrator.store.storage import open_storage
from stages.base import StageInput
from stages.errors import SqueezerayError
from stages.export import ExportParams, export
from stages.metrics import evaluate
from stages.quantize import QuantizeParams, quantize
from stages.tasks import Task, load_task
from tests.stages.conftest import train_checkpoint


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits")


@pytest.fixture(scope="module")
def student(digits: Task) -> Any:
    torch.set_num_threads(1)
    return train_checkpoint(digits, "student", epochs=4, lr=3e-3)


def _store(
    storage: Path,
    digits: Task,
    ckpt: Any,
    trial_id: str,
    mode: str,
    *,
    sweep_id: str = "s1",
    task_name: str = "digits",
) -> dict[str, Any]:
    """Write `ckpt` as a sweep would (cache file + manifest, results row); return the row."""
    store = open_storage(storage, create=True)
    data = ckpt.to_bytes()
    key = hashlib.sha256(f"{trial_id}{mode}".encode()).hexdigest()[:24]
    store.write_atomic(data, "cache", f"{key}.ckpt")
    manifest = {"key": key, "sha256": hashlib.sha256(data).hexdigest()}
    store.write_atomic(json.dumps(manifest).encode(), "cache", f"{key}.json")
    m = evaluate(digits, ckpt, warmup=1, repeats=2)
    result = {
        "status": "ok",
        "stage_keys": [key],
        "effective_params": {"quantize.mode": mode, "export.runtime": ckpt.runtime},
        "test_accuracy": m.accuracy,
        "val_accuracy": m.val_accuracy,
        "size_bytes": m.size_bytes,
        "params_total": m.params_total,
        "params_nonzero": m.params_nonzero,
        "latency_ms_sweep": m.latency_ms,
        "runtime": m.runtime,
        "eval_batch_size": digits.eval_batch_size,
    }
    from datetime import datetime, timezone

    row = trial_row(
        sweep_id=sweep_id,
        sweep_name=sweep_id,
        trial_id=trial_id,
        task=task_name,
        started_at=datetime.now(timezone.utc),
        result=result,
        code_version="test",
        feasible=None,
        is_baseline=trial_id == "baseline",
    )
    append_results(str(storage), [row])
    return row


@pytest.mark.parametrize(
    ("mode", "runtime"),
    [
        ("dynamic_int8", "eager"),
        ("static_int8", "torchscript"),
        ("onnx_int8", "onnxruntime"),
        ("none", "torchscript"),
    ],
)
def test_export_every_runtime_and_int8_mode(
    tmp_path: Path, digits: Task, student: Any, mode: str, runtime: str
) -> None:
    inp = StageInput(task=digits, parent=student, seed=0)
    ckpt = quantize(inp, QuantizeParams(mode=mode)).checkpoint
    if mode != "onnx_int8":
        ckpt = export(StageInput(task=digits, parent=ckpt), ExportParams(runtime=runtime))
        ckpt = ckpt.checkpoint
    assert ckpt.runtime == runtime
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    row = _store(storage, digits, ckpt, "t1", mode)
    out = tmp_path / "out"
    result = export_trial(storage, "t1", output=out)
    card = result.card
    assert card["recheck"]["ok"] and card["runtime"] == runtime
    assert card["recheck"]["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-12)
    assert card["ratios"]["size_x"] == pytest.approx(
        card["baseline"]["size_bytes"] / row["size_bytes"]
    )
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"))
        run: Any = lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])  # noqa: E731
    else:
        run = torch.jit.load(str(out / "model.pt"))
    assert _accuracy(run, digits) == pytest.approx(row["test_accuracy"], abs=1e-12)
    # an eager row's model.pt is a TorchScript trace of what was measured: the card says how
    # to load it and that its latency was the eager module's
    if runtime == "eager":
        assert card["load"] == "import torch; model = torch.jit.load('model.pt')"
        assert "eager module" in card["measured_on"] and "torchscript" in card["measured_on"]
    else:
        assert "measured_on" not in card
    assert _accuracy(load_model(storage, "t1", sweep="s1"), digits) == pytest.approx(
        row["test_accuracy"], abs=1e-12
    )


def _accuracy(model: Any, task: Task) -> float:
    """Test accuracy in batches of 256, as rows are measured: dynamic int8 quantizes each
    batch's activations with that batch's range, so its outputs depend on the batching."""
    x, y = task.test.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 256].float()) for i in range(0, len(y), 256)])
    return int((logits.argmax(1) == y).sum()) / len(y)


def test_choosing_the_row_and_its_errors(tmp_path: Path, digits: Task, student: Any) -> None:
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    _store(storage, digits, student, "a", "none")
    dyn = quantize(StageInput(task=digits, parent=student), QuantizeParams(mode="dynamic_int8"))
    _store(storage, digits, dyn.checkpoint, "b", "dynamic_int8")
    table = load_results(storage, sweep="all")
    assert select_row(table, pick="size_bytes")["trial_id"] == "b"
    assert select_row(table, where='quantize.mode == "none"')["trial_id"] == "a"
    with pytest.raises(SqueezerayError, match=r"2 trials match; give a TRIAL_ID, or --pick"):
        select_row(table)
    with pytest.raises(SqueezerayError, match=r"'zz' is not in .*there: baseline, a, b"):
        select_row(table, "zz")
    with pytest.raises(SqueezerayError, match="either a TRIAL_ID or --where/--pick"):
        select_row(table, "a", pick="size_bytes")
    with pytest.raises(
        SqueezerayError, match=r"--pick 'speed' is not accepted.*COLUMN\[:min\|max\]"
    ):
        select_row(table, pick="speed")
    with pytest.raises(SqueezerayError, match="no ok trial matches"):
        select_row(table, where="val_accuracy > 2")
    # a deleted checkpoint: the error names the trial, the file and --recompute
    row = next(r for r in table.to_pylist() if r["trial_id"] == "a")
    (storage / "cache" / f"{row['stage_keys'][0]}.ckpt").unlink()
    with pytest.raises(SqueezerayError, match=r"trial 'a' .* is missing\. .*--recompute"):
        export_trial(storage, "a", output=tmp_path / "out")


def test_export_refuses_a_folder_with_other_files_and_overwrite_replaces_an_export(
    tmp_path: Path, digits: Task, student: Any
) -> None:
    """An export into a folder holding another export would leave that model's files beside
    the new one: refused, and `--overwrite` removes only the files an export writes."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    eager = export(StageInput(task=digits, parent=student), ExportParams(runtime="eager"))
    _store(storage, digits, eager.checkpoint, "eager1", "none")
    onnx = export(StageInput(task=digits, parent=student), ExportParams(runtime="onnxruntime"))
    _store(storage, digits, onnx.checkpoint, "onnx1", "none")
    out = tmp_path / "best"
    first = export_trial(storage, "eager1", output=out)
    assert {"model.pt", "state_dict.pt", "recipe.json", "checkpoint.pt"} <= set(first.files)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SqueezerayError, match=r"'.*best' is not empty.*overwrite=True"):
        export_trial(storage, "onnx1", output=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    runner = CliRunner()
    result = runner.invoke(
        app, ["export", "onnx1", "--storage", str(storage), "--output", str(out)]
    )
    assert result.exit_code == 2 and "--overwrite" in result.output, result.output
    result = runner.invoke(
        app, ["export", "onnx1", "--storage", str(storage), "--output", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    # only the new export's files: no model.pt of the eager trial left to load by mistake
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert json.loads((out / "model.json").read_text())["trial_id"] == "onnx1"
    # a file squeezeray did not write is never removed, with or without overwrite
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SqueezerayError, match=r"does not write \(notes.txt\).*new or empty"):
        export_trial(storage, "eager1", output=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "notes.txt"]
    # a new folder and an empty one are fine without overwrite
    (tmp_path / "empty").mkdir()
    assert export_trial(storage, "onnx1", output=tmp_path / "empty").card["trial_id"] == "onnx1"


def test_a_trial_of_another_sweep_is_named_with_its_sweep(
    tmp_path: Path, digits: Task, student: Any
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    storage = tmp_path / "runs"
    _store(storage, digits, student, "old1", "none", sweep_id="sweep-a")
    _store(storage, digits, student, "new1", "none", sweep_id="sweep-b")  # the latest
    with pytest.raises(
        SqueezerayError,
        match=r"'old1' is not in the latest sweep sweep-b but in sweep sweep-a; "
        r"choose it with sweep='sweep-a'",
    ) as err:
        load_model(storage, "old1")
    assert "--sweep" not in str(err.value)  # the Python API names its own keyword
    with pytest.raises(SqueezerayError, match=r"sweep-a; choose it with sweep='sweep-a'"):
        export_trial(storage, "old1", output=tmp_path / "out")
    result = CliRunner().invoke(
        app, ["export", "old1", "--storage", str(storage), "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "--sweep sweep-a" in result.output, result.output
    assert "sweep=" not in result.output
    assert (
        export_trial(storage, "old1", output=tmp_path / "out", sweep="sweep-a").card["sweep_id"]
        == "sweep-a"
    )
    with pytest.raises(SqueezerayError, match=r"^sweep='sweep-z' is not in storage.*sweep-a"):
        load_model(storage, "old1", sweep="sweep-z")
    # unknown everywhere: the ok trials of the chosen sweep, and how to choose one
    with pytest.raises(SqueezerayError, match=r"'zz' is not in .*there: new1 .*sweep=ID"):
        load_model(storage, "zz")


@pytest.fixture(scope="module")
def two_inputs() -> Task:
    return load_task("tests.zoo:two_inputs")


@pytest.fixture(scope="module")
def two_input_student(two_inputs: Task) -> Any:
    torch.set_num_threads(1)
    return train_checkpoint(two_inputs, "student", epochs=2, lr=3e-3)


@pytest.mark.parametrize("runtime", ["eager", "torchscript", "onnxruntime"])
def test_two_input_model_card_names_and_predictor_call_agree_across_runtimes(
    tmp_path: Path, two_inputs: Task, two_input_student: Any, runtime: str
) -> None:
    """A model `forward(x_chem, x_color) -> (logits, features)`: every runtime's card names
    the forward's parameters, and every `load_model` predictor is called like the model,
    p(chem, color) or p((chem, color)), and returns the logits tensor."""
    trained = two_input_student
    ckpt = export(StageInput(task=two_inputs, parent=trained), ExportParams(runtime=runtime))
    storage = tmp_path / "runs"
    _store(storage, two_inputs, ckpt.checkpoint, "t2", "none", task_name="tests.zoo:two_inputs")
    card = export_trial(storage, "t2", output=tmp_path / "out").card
    assert [i["name"] for i in card["input"]] == ["x_chem", "x_color"]
    assert [i["shape"] for i in card["input"]] == [["batch", 8], ["batch", 5]]
    chem, color = two_inputs.test.a, two_inputs.test.b  # type: ignore[attr-defined]
    from stages.rebuild import build_model

    with torch.no_grad():
        expected = build_model(two_inputs, trained)(chem, color)[0]
        predictor = load_model(storage, "t2")
        separate, as_tuple = predictor(chem, color), predictor((chem, color))
    assert isinstance(separate, torch.Tensor) and separate.shape == (len(chem), 3)
    assert torch.equal(separate, as_tuple)
    torch.testing.assert_close(separate, expected, atol=1e-4, rtol=1e-4)


def _guide_snippet() -> str:
    """The "use it without squeezeray" code block of docs/guide.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "guide.md").read_text()
    after = text.split("<!-- snippet: without-squeezeray -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_guides_plain_onnxruntime_snippet_reproduces_the_cards_accuracy(
    tmp_path: Path, digits: Task, student: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnx_int8 quantizes activations per batch: run in the card's eval_batch_size, with
    onnxruntime alone, the exported model scores exactly the card's test accuracy."""
    ckpt = quantize(StageInput(task=digits, parent=student, seed=0), QuantizeParams("onnx_int8"))
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    row = _store(storage, digits, ckpt.checkpoint, "t1", "onnx_int8")
    assert row["eval_batch_size"] == digits.eval_batch_size == 256
    card = export_trial(storage, "t1", output=tmp_path / "best").card
    assert card["eval_batch_size"] == 256 and card["recheck"]["batch_size"] == 256
    # the accuracies say the batch they were computed at, next to them (latency is batch 1;
    # onnx_int8 scores otherwise at batch 1: newuser7 F-F), for the row and the baseline
    for metrics in (card["metrics"], card["baseline"]):
        assert list(metrics)[:3] == ["val_accuracy", "test_accuracy", "eval_batch_size"]
        assert metrics["eval_batch_size"] == 256
    x, y = digits.test.tensors  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"X_test": x.numpy(), "y_test": y.numpy()}
    exec(compile(_guide_snippet(), "docs/guide.md", "exec"), namespace)
    assert namespace["accuracy"] == card["metrics"]["test_accuracy"] == row["test_accuracy"]


@pytest.mark.parametrize(("runtime", "artifact"), [("torchscript", "model.pt")])  # eager: hf test
def test_static_int8_artifact_loads_in_a_fresh_python_by_the_card_line(
    tmp_path: Path, digits: Task, student: Any, runtime: str, artifact: str
) -> None:
    """A static_int8 model.pt/model.pt2 calls the quantized_decomposed ops, which plain
    `torch.jit.load` does not know (`Unknown builtin op`): the card's `load` line names the
    import that registers them, and run alone in a new process it loads the file, which then
    gives the rebuilt model's logits at another batch size (7; the export traced at 2)."""
    import subprocess
    import sys

    inp = StageInput(task=digits, parent=student, seed=0)
    ckpt = quantize(inp, QuantizeParams(mode="static_int8")).checkpoint
    ckpt = export(StageInput(task=digits, parent=ckpt), ExportParams(runtime=runtime)).checkpoint
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    _store(storage, digits, ckpt, "t1", "static_int8")
    out = tmp_path / "out"
    card = export_trial(storage, "t1", output=out).card
    assert card["artifact"] == artifact and (out / artifact).is_file()
    assert "import torchao.quantization.pt2e" in card["load"]
    x, _ = digits.test.tensors  # type: ignore[attr-defined]
    torch.save(x[:7], tmp_path / "x.pt")
    script = (
        f"{card['load']}\n"
        f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), "
        f"{str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=out, check=True, capture_output=True)
    expected = load_model(storage, "t1", sweep="s1")(x[:7])
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-4)


def test_a_pt2e_row_whose_graph_does_not_export_again_says_why_and_what_to_use(
    tmp_path: Path, digits: Task, student: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When model.pt2 cannot be written (torch.export fails on the int8 graph), the export
    still succeeds with the rebuild files, and the card names the missing files, why, and
    what to deploy instead (never a traceback)."""
    import stages.pt2e

    def refuse(*_: Any) -> bytes:
        raise SqueezerayError("model.pt2: torch.export could not capture the int8 graph again")

    monkeypatch.setattr(stages.pt2e, "program_bytes", refuse)
    ckpt = quantize(StageInput(task=digits, parent=student), QuantizeParams("static_int8"))
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    _store(storage, digits, ckpt.checkpoint, "t1", "static_int8")
    out = tmp_path / "out"
    card = export_trial(storage, "t1", output=out).card
    assert card["recheck"]["ok"] and card["artifact"] == "checkpoint.pt"
    assert set(card["not_written"]) == {"model.pt", "model.pt2"}
    assert "checkpoint.pt" in card["not_written"]["model.pt2"] and "build_model" in card["load"]
    assert not (out / "model.pt").exists() and not (out / "model.pt2").exists()
    assert (out / "checkpoint.pt").is_file()


def test_cli_export_names_each_rechecked_file_and_where_to_load_it_without_torch_warnings(
    tmp_path: Path, digits: Task, student: Any
) -> None:
    """An eager dynamic-int8 row through `squeezeray export`: each written model is re-checked
    on its own line (the eager rebuild's number was printed as model.pt's), the load line
    names the folder its relative paths are in, and torch's deprecation warnings for its own
    int8 tensors are not shown (as errors they made the checkpoint unloadable)."""
    import warnings

    from typer.testing import CliRunner

    from orchestrator.cli import app

    quantized = quantize(
        StageInput(task=digits, parent=student), QuantizeParams(mode="dynamic_int8")
    ).checkpoint
    assert quantized.quantize == "dynamic_int8"
    storage, out = tmp_path / "runs", tmp_path / "best"
    _store(storage, digits, quantized, "baseline", "none")
    _store(storage, digits, quantized, "q1", "dynamic_int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = CliRunner().invoke(
            app, ["export", "q1", "--storage", str(storage), "--output", str(out)]
        )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "re-checked checkpoint.pt, rebuilt: test accuracy" in text
    assert "re-checked model.pt: test accuracy" in text
    assert f"load model.pt (in {out}): import torch" in text


def test_an_eager_row_that_does_not_trace_names_its_rebuild_files_as_the_artifact(
    tmp_path: Path, digits: Task, student: Any
) -> None:
    """torchao's int8 tensors do not trace to TorchScript, so an eager torchao_dynamic_int8
    row gets no model.pt: its card named model.pt as the artifact anyway, with no load line
    (new user F2). Now the artifact is checkpoint.pt, the card says why model.pt is missing
    and how to load the rebuild files, and that load gives the row's model."""
    from stages.checkpoint import ModelCheckpoint
    from stages.rebuild import build_model

    quantized = quantize(
        StageInput(task=digits, parent=student), QuantizeParams(mode="torchao_dynamic_int8")
    ).checkpoint
    _store(tmp_path / "runs", digits, student, "baseline", "none")
    _store(tmp_path / "runs", digits, quantized, "ao1", "torchao_dynamic_int8")
    out = tmp_path / "best"
    card = export_trial(tmp_path / "runs", "ao1", output=out).card
    assert not (out / "model.pt").exists()
    assert card["artifact"] == "checkpoint.pt"
    assert "does not trace to TorchScript" in card["not_written"]["model.pt"]
    assert "build_model" in card["load"] and "checkpoint.pt" in card["load"]
    loaded = ModelCheckpoint.from_bytes((out / "checkpoint.pt").read_bytes())
    x = digits.example_input(8)
    with torch.no_grad():
        assert torch.equal(build_model(digits, loaded)(x), build_model(digits, quantized)(x))


def test_a_compiled_rows_card_loads_the_rebuild_and_compiles_it(
    tmp_path: Path, student: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled row's card had `load: null` (new user F11): its line rebuilds checkpoint.pt
    and wraps it in torch.compile, as the sweep measured it; the line runs as written."""
    from orchestrator.query.card import load_card

    ckpt = student.with_recipe(runtime="compiled")
    card = load_card(ckpt, ["checkpoint.pt", "state_dict.pt", "recipe.json"])
    line = card["load"]
    assert "build_model" in line and "torch.compile(model)" in line
    (tmp_path / "checkpoint.pt").write_bytes(ckpt.to_bytes())
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {"TASK": "digits"}
    exec(line, scope)  # the card's own line, as a user runs it
    assert isinstance(scope["model"], torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize(
    ("task_name", "shape"),
    [
        ("tests.stages.user_text_task:make_task", ["batch", "sequence"]),  # no position table
        ("tests.zoo:transformer", ["batch", 12]),  # learned positions added whole: fixed length
    ],
)
@pytest.mark.parametrize("runtime", ["eager", "torchscript"])
def test_a_torchscript_cards_input_shape_is_what_the_trace_accepts(
    tmp_path: Path, task_name: str, shape: list[Any], runtime: str
) -> None:
    """The card of a model.pt stated the example's sequence length (`["batch", 32]` for a
    RoBERTa whose trace gives its logits at lengths 10 and 48 too: new user F10). Now the
    trace is run at another length beside the rebuilt model: where it gives the same logits
    the axis is "sequence", as in an ONNX card; a trace that froze the length keeps it."""
    from stages.checkpoint import from_model

    task = load_task(task_name)
    torch.manual_seed(0)
    model = task.build("student").eval()
    ckpt = from_model(task, model, {"arch": "student"})
    ckpt = export(StageInput(task=task, parent=ckpt), ExportParams(runtime=runtime)).checkpoint
    _store(tmp_path / "runs", task, ckpt, "t1", "none", task_name=task_name)
    out = tmp_path / "out"
    card = export_trial(tmp_path / "runs", "t1", output=out).card
    assert card["input"]["shape"] == shape
    traced = torch.jit.load(str(out / "model.pt"))
    ids = task.example_input(3)
    assert isinstance(ids, torch.Tensor)
    ids = ids[:, :-2]  # 2 tokens shorter than traced
    if shape[1] == "sequence":  # the card's claim, checked: another length gives the logits
        with torch.no_grad():
            torch.testing.assert_close(traced(ids), model(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("mode", "runtime"), [("none", "eager"), ("none", "torchscript")])
def test_a_loaded_model_is_in_eval_mode_and_runs_without_autograd_in_inference_mode(
    tmp_path: Path, digits: Task, student: Any, mode: str, runtime: str
) -> None:
    """As `from_pretrained` gives it: eval mode throughout (dropout off), parameters still
    trainable, so a plain call records autograd (new user F10 saw `grad_fn=` in its output);
    the documented call, under `torch.inference_mode()`, gives the same logits without."""
    ckpt = export(StageInput(task=digits, parent=student), ExportParams(runtime=runtime))
    _store(tmp_path / "runs", digits, ckpt.checkpoint, "t1", mode)
    predictor = load_model(tmp_path / "runs", "t1")
    assert not any(m.training for m in predictor.modules())
    x = digits.example_input(4)
    with torch.inference_mode():
        logits = predictor(x)
    assert logits.shape == (4, 10) and logits.grad_fn is None and not logits.requires_grad
    torch.testing.assert_close(logits, predictor(x).detach())
