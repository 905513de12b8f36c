"""End-to-end sweeps through a real local Ray (the session fixture): rows, shared prefixes,
cache reuse across sweeps, failing trials, and a user task given as `pkg.mod:callable`."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.config import load_space
from orchestrator.store.results import load_results, load_stages
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.latency import MIN_REPEATS

REQUIRED = [
    "sweep_id",
    "trial_id",
    "started_at",
    "task",
    "status",
    "error",
    "is_baseline",
    "distill.temperature",
    "distill.alpha",
    "prune.ratio",
    "prune.method",
    "lora.rank",
    "quantize.mode",
    "test_accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "latency_ms_sweep",
    "latency_ms_sweep_p90",
    "latency_ms_final",
    "wall_s",
    "stage_keys",
    "code_version",
    "runtime",
    "eval_batch_size",
]

pytestmark = pytest.mark.usefixtures("ray_session")


def _stage_counts(storage: Path, sweep_id: str) -> dict[str, int]:
    stages = load_stages(str(storage), sweep=sweep_id).to_pylist()
    counts: dict[str, int] = {}
    for row in stages:
        counts[row["stage"]] = counts.get(row["stage"], 0) + 1
    return counts


def test_tiny_sweep_rows_shared_prefix_and_reuse(tmp_path: Path) -> None:
    storage = tmp_path / "results"
    # The sweep addresses its storage as a file:// URI, the second one below as the plain path:
    # the same storage either way (what test_remote_storage once ran a sweep of its own for).
    uri = f"file://{storage}"
    outcome = execute_sweep(prepare_sweep("tiny", storage=uri))
    table = outcome.table
    for column in REQUIRED:
        assert column in table.column_names, column
    assert table.schema.equals(RESULTS_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    trials = [r for r in rows if not r["is_baseline"]]
    baseline = [r for r in rows if r["is_baseline"]]
    assert len(trials) == 4 and len(baseline) == 1
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert baseline[0]["runtime"] == "eager" and baseline[0]["size_bytes"] > 0
    # Both splits on every row: validation selects, test is reported.
    assert all(0.5 <= r["val_accuracy"] <= 1.0 for r in rows)
    assert all(0.5 <= r["test_accuracy"] <= 1.0 for r in rows)
    for r in trials:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["size_bytes"] > 0 and r["latency_ms_sweep"] > 0
        assert r["latency_ms_sweep"] <= r["latency_ms_sweep_p90"]
        assert r["params_nonzero"] <= r["params_total"]
        assert len(r["stage_keys"]) == 5
    # The student is smaller than the teacher it was distilled from.
    assert max(r["params_total"] for r in trials) < baseline[0]["params_total"]

    # The final latency phase re-measured the front and the baseline apart, in interleaved
    # rounds, into latency_ms_final; every row keeps its in-sweep figure in latency_ms_sweep
    # (what the front was chosen on); the others have no final figure.
    import warnings

    from orchestrator.query.pareto import pareto_front

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        front = set(pareto_front(table).column("trial_id").to_pylist())
    assert front and outcome.summary.latency_final_models == len(front)
    assert all(r["latency_ms_sweep"] > 0 for r in rows)
    # time-boxed latency: every row says how many calls were timed (digits-size models are
    # fast, so the repeats cap binds in the sweep; the final phase sums its rounds' calls)
    assert all(r["latency_repeats_sweep"] >= 5 for r in rows)
    # and how precisely its median is known: the 95% CI half-width / median, which stops the
    # timing at latency.precision (+-2%) unless the time cap or the repeats cap came first
    assert all(0 <= r["latency_ci_sweep"] < 1 for r in rows)
    precise = [r for r in rows if r["latency_ci_sweep"] <= 0.02]
    assert all(r["latency_repeats_sweep"] < 300 for r in precise)
    assert all(r["eval_batch_size"] == 256 for r in rows)  # Task's default, on every row
    for r in rows:
        final = r["is_baseline"] or r["trial_id"] in front
        assert (r["latency_rounds"] == 7) is final, r
        if final:
            assert r["latency_cv"] >= 0 and r["speedup"] > 0 and r["latency_ms_final"] > 0
            # the final phase spreads about the calls the sweep needed over its 7 rounds (at
            # least MIN_REPEATS a round)
            per_round = max(MIN_REPEATS, -(-r["latency_repeats_sweep"] // 7))
            assert r["latency_repeats_final"] <= 7 * per_round, r
        else:
            assert r["latency_cv"] is None and r["speedup"] is None
            assert r["latency_ms_final"] is None
    assert baseline[0]["speedup"] == 1.0

    # Teacher and KD settings are fixed in tiny.yaml: each runs once for all 4 trials.
    counts = _stage_counts(storage, outcome.summary.sweep_id)
    assert counts["teacher"] == 1
    assert counts["distill"] == 1
    assert counts["prune"] == 2  # two prune ratios
    assert outcome.summary.stage_requests == 4 * 5
    assert outcome.summary.stages_executed == sum(counts.values())

    # Results, stage rows, checkpoints, the manifest and the Tune experiment: all under the
    # URI's path, and the URI and the plain path read the same rows.
    sweep_id = outcome.summary.sweep_id
    assert outcome.summary.storage == uri
    assert (storage / "results" / f"sweep_id={sweep_id}").is_dir()
    assert (storage / "stages" / f"sweep_id={sweep_id}").is_dir()
    assert len(list((storage / "cache").glob("*.ckpt"))) == outcome.summary.stages_executed
    assert (storage / "sweeps" / f"{sweep_id}.json").is_file()
    assert (storage / "tune" / sweep_id).is_dir()
    by_uri = load_results(uri, sweep="all").sort_by("trial_id")
    by_path = load_results(str(storage), sweep="all").sort_by("trial_id")
    assert by_uri.equals(by_path) and by_uri.num_rows == 5

    # A second sweep on the same storage (as a plain path) re-executes nothing it already has
    # (its first 2 trials draw what the first sweep's did: 2 Tune trial actors, not 3).
    again = execute_sweep(prepare_sweep("tiny", storage=storage, trials=2))
    assert _stage_counts(storage, again.summary.sweep_id) == {}
    assert again.summary.stages_executed == 0
    assert again.summary.stages_loaded >= 1
    ok = pc.equal(again.table.column("status"), "ok")
    assert pc.all(ok).as_py()


USER_TASK = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset
from stages.tasks import Task


class Branchy(nn.Module):
    """Data-dependent control flow: FX cannot trace it, so static int8 fails on it."""

    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 16, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.head(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(180, 1, 8, 8, generator=g)
    y = torch.arange(180) % 3
    x[:, 0, 0, 0] += y.float() * 3  # make the classes learnable
    ds = TensorDataset(x, y)
    return Task(name="user-conv", teacher=lambda: Branchy(8), student=lambda: Branchy(4),
                train=ds, val=ds, test=ds, num_classes=3)
'''

USER_SPACE = """
task: usertask_mod:make
pipeline: [teacher, distill, quantize]
params:
  teacher.epochs: 2
  distill.epochs: 2
  quantize.mode: {choice: [none, static_int8]}
search: {algorithm: grid}
latency: {warmup: 2, repeats: 10}
"""


@pytest.mark.slow
def test_user_conv_task_and_failing_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usertask_mod.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usertask_mod", None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(USER_SPACE)
    space = load_space(space_file)
    outcome = execute_sweep(prepare_sweep(space, storage=tmp_path / "results"))
    rows = {r["quantize.mode"]: r for r in outcome.table.to_pylist() if not r["is_baseline"]}
    assert set(rows) == {"none", "static_int8"}
    assert rows["none"]["status"] == "ok"
    assert rows["none"]["task"] == "usertask_mod:make"
    assert rows["static_int8"]["status"] == "error"
    assert rows["static_int8"]["error"]
    assert rows["static_int8"]["test_accuracy"] is None


UNSEEDED_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from stages.tasks import Task


def make():
    x = torch.randn(90, 4)  # a new draw in every process: no generator, no seed
    y = torch.arange(90) % 3
    return Task(name="unseeded", teacher=lambda: nn.Linear(4, 3), student=lambda: nn.Linear(4, 3),
                train=TensorDataset(x[:60], y[:60]), val=TensorDataset(x[60:75], y[60:75]),
                test=TensorDataset(x[75:], y[75:]), num_classes=3)
"""


def test_a_worker_whose_task_differs_from_the_drivers_refuses_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage keys name the driver's task fingerprint; a worker whose copy of the task differs
    (here: data drawn without a seed, so every process has other data) would store another
    model under that key. The teacher stage refuses, naming the part that differs."""
    (tmp_path / "unseeded_mod.py").write_text(textwrap.dedent(UNSEEDED_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("unseeded_mod", None)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "task: unseeded_mod:make\npipeline: [teacher, distill]\n"
        "params: {teacher.epochs: 1, distill.epochs: 1, distill.alpha: {choice: [0.5]}}\n"
        "search: {algorithm: grid}\nlatency: {warmup: 1, repeats: 2, rounds: 0}\n"
    )
    outcome = execute_sweep(prepare_sweep(str(space_file), storage=tmp_path / "results"))
    rows = outcome.table.to_pylist()
    assert rows and all(r["status"] == "error" for r in rows), rows
    trial = next(r for r in rows if not r["is_baseline"])
    assert "its data on this worker" in trial["error"], trial["error"]
    assert "differ from the driver's" in trial["error"]
