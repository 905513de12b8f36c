"""The CLI's manners (issue 25, item 7): --version, -q/-v, --dashboard, flags as
--flag/--no-flag without a `<bool>` type, storage given as --storage in every command (the old
positional spelling still works, with a deprecation note)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.engine.runtime import RayDisplay, ray_display, set_ray_display

runner = CliRunner()
COMMANDS = ("sweep", "validate", "pareto", "sweeps", "compact", "gc", "export", "nightly")


def _click_app() -> typer.core.TyperGroup:
    return typer.main.get_command(app)  # type: ignore[return-value]


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"squeezeray {version('squeezeray')}"


@pytest.mark.parametrize("command", [None, *COMMANDS, "schedule"])
def test_flags_are_flag_no_flag_and_show_no_bool_type(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    group = _click_app()
    cmd = group if command is None else group.commands[command]
    for param in cmd.params:
        if getattr(param, "is_flag", False) and param.name != "version":
            assert param.secondary_opts, f"{command} {param.opts} has no --no- form"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_storage_as_an_option(command: str) -> None:
    if command == "validate":  # checks a space; it reads no storage
        return
    cmd = _click_app().commands[command]
    opts = [o for p in cmd.params for o in getattr(p, "opts", ())]
    assert "--storage" in opts


def test_old_positional_storage_still_works_with_a_note(tmp_path: Path) -> None:
    new = runner.invoke(app, ["gc", "--storage", str(tmp_path), "--dry-run"])
    old = runner.invoke(app, ["gc", str(tmp_path), "--dry-run"])
    assert new.exit_code == old.exit_code == 0
    assert new.stdout == old.stdout
    assert "deprecated" not in new.stderr
    assert f"squeezeray gc --storage {tmp_path}" in " ".join(old.stderr.split())
    clash = runner.invoke(app, ["gc", str(tmp_path), "--storage", str(tmp_path / "other")])
    assert clash.exit_code == 2 and "--storage only" in clash.stderr


def test_quiet_hides_notes_but_not_results_or_errors(tmp_path: Path) -> None:
    quiet = runner.invoke(app, ["-q", "gc", str(tmp_path), "--dry-run"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "would remove 0 checkpoint(s)" in quiet.stdout
    failed = runner.invoke(app, ["-q", "gc", "--storage", str(tmp_path), "--older-than", "soon"])
    assert failed.exit_code == 2 and "error:" in failed.stderr


def test_verbose_and_dashboard_reach_ray_init(tmp_path: Path) -> None:
    try:
        result = runner.invoke(app, ["-v", "--dashboard", "gc", "--storage", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert ray_display() == RayDisplay(verbose=True, dashboard=True)
        runner.invoke(app, ["gc", "--storage", str(tmp_path)])
        assert ray_display() == RayDisplay()  # each command starts from the defaults
        both = runner.invoke(app, ["-q", "-v", "gc", "--storage", str(tmp_path)])
        assert both.exit_code == 2 and "exclude each other" in both.stderr
    finally:
        set_ray_display(RayDisplay())


def test_init_ray_takes_worker_logs_and_dashboard_from_the_display(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from orchestrator.engine import runtime

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime, "cluster_info", lambda **kw: None)
    try:
        runtime.init_ray(address=None)
        set_ray_display(RayDisplay(verbose=True, dashboard=True))
        runtime.init_ray(address=None)
    finally:
        set_ray_display(RayDisplay())
    assert [(c["log_to_driver"], c["include_dashboard"]) for c in calls] == [
        (False, False),
        (True, True),
    ]


def test_the_resume_hint_is_printed_once_the_sweep_has_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hint goes out on the `ready` event (Ray up, checks passed, the manifest written),
    before the display hears of it; no other event prints it."""
    from rich.console import Console

    from orchestrator import cli

    recording = Console(record=True, width=300)
    monkeypatch.setattr(cli, "console", recording)
    heard: list[str] = []
    hint = "if interrupted, continue with: squeezeray sweep --resume --sweep-id s"
    for event in ("step", "ready", "start"):
        cli._hint_once_started(lambda e, _d: heard.append(e), hint, event, {})
        if event == "step":
            assert "if interrupted" not in recording.export_text(clear=False)
    assert heard == ["step", "ready", "start"]
    assert recording.export_text().count("if interrupted") == 1


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_refused_before_it_starts_has_no_resume_hint_and_lists_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep refused by a check once Ray is up (here the memory check: `engine.memory`)
    never started: no `--resume` hint, exit 2, and `squeezeray sweeps` says there are none."""
    from orchestrator.engine import memory
    from stages.errors import SqueezerayError

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise SqueezerayError("the task's model needs 9 GiB per stage task; no node has it")

    monkeypatch.setattr(memory, "check_fits", refuse)
    storage = tmp_path / "runs_fit"
    result = runner.invoke(app, ["sweep", "tiny", "--storage", str(storage)])
    assert result.exit_code == 2 and "no node has it" in result.output, result.output
    assert "if interrupted" not in result.output and "--resume" not in result.output
    listed = runner.invoke(app, ["sweeps", "--storage", str(storage)])
    assert listed.exit_code == 0, listed.output
    assert "no sweeps in" in listed.stdout


_ENTRY = """
import atexit, sys
heavy = ("torch", "torchao", "ray", "transformers")
atexit.register(lambda: print("HEAVY", [m for m in heavy if m in sys.modules], file=sys.stderr))
import @FIRST@  # the `squeezeray` script imports orchestrator.cli; the API, orchestrator
if sys.argv[1] == "--help":
    from orchestrator.cli import main
    sys.argv = ["squeezeray", "--help"]
    main()
import torchao  # noqa: F401  as a torchao quantize stage does: its import lines
"""


@pytest.mark.slow
@pytest.mark.parametrize("first", ["orchestrator.cli", "orchestrator"])
def test_commands_print_no_torchao_import_lines_and_help_imports_no_torch(first: str) -> None:
    """torchao logs, at import, `Failed to load .../_C_*.so` (its CUDA kernels, on a CPU
    machine) and torch `_pytree`'s Enum `register_constant` note: `stages.quiet` drops them in
    every process that loads squeezeray first, the CLI's and the API's (`import orchestrator`).
    `squeezeray --help` stays instant: no torch, torchao, ray or transformers."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = _ENTRY.replace("@FIRST@", first)
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    if first == "orchestrator.cli":  # `import orchestrator` then the CLI's is the same import
        helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                                text=True, cwd=root, env=env, timeout=120)  # fmt: skip
        assert helped.returncode == 0 and "HEAVY []" in helped.stderr, helped.stderr
    loaded = subprocess.run([sys.executable, "-c", code, "load"], capture_output=True,
                            text=True, cwd=root, env=env, timeout=300)  # fmt: skip
    assert loaded.returncode == 0 and "'torchao'" in loaded.stderr, loaded.stderr
    for noise in ("Failed to load", "_C_", "is an Enum subclass", "register_constant"):
        assert noise not in loaded.stderr, (noise, loaded.stderr)


def test_ctrl_c_before_the_sweep_runs_shuts_down_its_ray_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a sweep's pre-flight checks or while Ray started: the process exited 130
    with no word, and the embedded Ray's agents ran on for minutes (new user F14). Now the
    Ray this process started is shut down and the exit (2) says what is kept."""
    import sys
    import types

    import orchestrator.engine.sweep as sweep_module

    shut: list[bool] = []
    fake_ray = types.SimpleNamespace(
        is_initialized=lambda: True, shutdown=lambda: shut.append(True)
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)  # not the test session's own Ray

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "prepare_sweep", interrupted)
    result = runner.invoke(app, ["sweep", "tiny", "--storage", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "interrupted (Ctrl-C)" in result.output and "--resume" in result.output
    assert shut == [True]


def test_ctrl_c_in_a_query_says_to_run_it_again_not_to_resume_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export stopped by Ctrl-C: exit 2 and a line about the export (its files are written
    all or nothing), not the sweep's `--resume` advice."""
    import sys
    import types

    import orchestrator.query.export as export_module

    # the CLI shuts down a Ray it finds running: not the test session's own
    fake_ray = types.SimpleNamespace(is_initialized=lambda: False, shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export_trial", interrupted)
    result = runner.invoke(
        app, ["export", "--storage", str(tmp_path / "runs"), "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "interrupted (Ctrl-C): `squeezeray export` stopped" in result.output, result.output
    assert "--resume" not in result.output


def test_ctrl_c_while_the_front_prints_exits_2_saying_the_sweep_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after a sweep finished, while its front is printed: not a bare 130 (new user
    F15's sibling) but exit 2 and a line saying the sweep is finished and saved, with the
    command that prints its front again."""
    import types

    import orchestrator.cli as cli_module
    import orchestrator.engine.progress as progress_module
    import orchestrator.engine.sweep as sweep_module
    from orchestrator.store.storage import open_storage

    storage = tmp_path / "runs"
    prepared = types.SimpleNamespace(
        finished=False, sweep_id="s1", storage=open_storage(storage), space=None
    )

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "prepare_sweep", lambda *a, **k: prepared)
    monkeypatch.setattr(sweep_module, "execute_sweep", lambda *a, **k: None)
    monkeypatch.setattr(progress_module, "print_outcome", interrupted)
    monkeypatch.setattr(cli_module, "_print_sweep_start", lambda prepared: "")
    monkeypatch.setattr(progress_module.SweepProgress, "plan", lambda self, space: None)
    result = runner.invoke(app, ["sweep", "tiny", "--storage", str(storage)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "interrupted (Ctrl-C) while printing the front: sweep s1 finished" in output
    assert f"squeezeray pareto --storage {open_storage(storage).uri} --sweep s1" in output


def test_export_says_why_a_row_has_no_huggingface_dir(capsys: pytest.CaptureFixture[str]) -> None:
    """The card's skipped entry has no "dir" (new user F6); the line names the folder."""
    from orchestrator.cli import _print_pretrained

    _print_pretrained(
        {"class": "BertForSequenceClassification", "skipped": "int8 weights"}, Path("out")
    )
    assert "no huggingface/ (save_pretrained form): int8 weights" in capsys.readouterr().out


@pytest.mark.parametrize("output", ["exp_deb", "runs/exp 1", "/abs/exp"])
def test_export_says_where_to_load_huggingface_from(
    capsys: pytest.CaptureFixture[str], output: str
) -> None:
    """newuser7 F-G 3: "load it: ....from_pretrained('huggingface')" failed when pasted into
    the shell the export ran in; the line names the folder as --output was given."""
    from orchestrator.cli import _print_pretrained
    from orchestrator.query.export import HF_DIR

    load = (
        f"from transformers import BertForSequenceClassification; model = "
        f"BertForSequenceClassification.from_pretrained('{HF_DIR}'); from transformers import "
        f"AutoTokenizer; AutoTokenizer.from_pretrained('{HF_DIR}')"
    )
    recheck = {"max_abs_logit_diff": 0.0, "accuracy": 0.5}
    _print_pretrained({"dir": HF_DIR, "load": load, "recheck": recheck}, Path(output))
    printed = " ".join(capsys.readouterr().out.split())
    where = str(Path(output) / HF_DIR)
    assert printed.count(f"from_pretrained({where!r})") == 2, printed
    assert f"from_pretrained('{HF_DIR}')" not in printed, printed
    assert f"re-checked {where}/ with from_pretrained" in printed, printed
