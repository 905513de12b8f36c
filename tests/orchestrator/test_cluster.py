"""cluster.yaml passes Ray's own launcher validation (and so does its commented AWS block), and
a sweep runs with --address against a real two-node Ray cluster on this machine."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it launches anything."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _aws_block(text: str) -> dict[str, Any]:
    """The commented `# >>> aws` ... `# <<< aws` block, uncommented."""
    match = re.search(r"^# >>> aws\n(.*?)^# <<< aws", text, re.S | re.M)
    assert match, "cluster.yaml lost its commented AWS alternative"
    lines = [
        line[2:] if line.startswith("# ") else line.lstrip("#") for line in match[1].splitlines()
    ]
    return yaml.safe_load("\n".join(lines))


def test_cluster_yaml_validates_with_rays_schema() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert config["provider"]["type"] == "local"
    prepared = _validate(config)
    # Every node declares the latency slot and installs squeezeray.
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all('"squeezeray_latency": 1' in c for c in ray_starts)
    setup = " ".join(prepared["worker_setup_commands"])
    assert "-c ~/squeezeray/constraints/cpu.txt" in setup and "-e ~/squeezeray" in setup
    assert prepared["file_mounts"] == {"~/squeezeray": "."}
    # The launcher checks the constraints file exists where `ray up` runs (the repo root).
    assert (ROOT / "constraints" / "cpu.txt").is_file()


def test_commented_aws_alternative_validates_too() -> None:
    text = CLUSTER_YAML.read_text()
    base = yaml.safe_load(text)
    aws = _aws_block(text)
    config = {k: v for k, v in base.items() if k not in ("provider", "auth")} | aws
    prepared = _validate(config)
    types = prepared["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert all(t["resources"]["squeezeray_latency"] == 1 for t in types.values())
    assert types["gpu_worker"]["resources"]["GPU"] == 1
    gpu_setup = " ".join(types["gpu_worker"]["worker_setup_commands"])
    assert "constraints/cpu.txt" not in gpu_setup and "-e ~/squeezeray" in gpu_setup


def test_validation_catches_a_broken_config() -> None:
    """The check is real: a misspelled key fails Ray's schema."""
    import jsonschema

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["head_start_ray_comands"] = config.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        _validate(config)


# -- a real two-node cluster ----------------------------------------------------------------

# Runs in its own process: ray.cluster_utils.Cluster must not share a process with the
# session's embedded Ray. RAY_TMPDIR (set by the test) keeps the cluster's address file away
# from /tmp/ray, so other Ray drivers on this machine never join it by accident.
CLUSTER_SCRIPT = """
import json, subprocess, sys
from ray.cluster_utils import Cluster

exe, storage, out = sys.argv[1], sys.argv[2], sys.argv[3]
latency = {"squeezeray_latency": 1}
cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "resources": latency, "include_dashboard": False},
)
try:
    cluster.add_node(num_cpus=1, resources=latency)
    cluster.wait_for_nodes()
    rc = subprocess.call(
        [exe, "sweep", "tiny", "--trials", "2", "--address", cluster.address, "--storage", storage]
    )
    import ray
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    info = {
        "rc": rc,
        "address": cluster.address,
        "nodes": len(nodes),
        "latency_slots": sum(n["Resources"].get("squeezeray_latency", 0) for n in nodes),
        "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
    }
    ray.shutdown()
    with open(out, "w") as f:
        json.dump(info, f)
finally:
    cluster.shutdown()
"""


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster(tmp_path: Path) -> None:
    from orchestrator.store.results import load_results, load_stages

    exe = Path(sys.executable).parent / "squeezeray"
    if not exe.is_file():
        pytest.skip("the squeezeray console script is not installed in this environment")
    storage = tmp_path / "shared-storage"
    out = tmp_path / "cluster.json"
    # Short: Ray's unix socket paths must stay under ~100 characters.
    ray_tmp = tempfile.mkdtemp(prefix="sqr-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(CLUSTER_SCRIPT),
                str(exe),
                str(storage),
                str(out),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads(out.read_text())
    assert info["rc"] == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert info["nodes"] == 2 and info["latency_slots"] == 2 and info["cpus"] == 2

    rows = load_results(storage, sweep="all").to_pylist()
    trials = [r for r in rows if not r["is_baseline"]]
    assert len(trials) == 2 and all(r["status"] == "ok" for r in trials), rows
    assert [r["is_baseline"] for r in rows].count(True) == 1
    assert all(r["latency_ms_sweep"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in trials)
    stages = load_stages(storage, sweep="all").to_pylist()
    assert [s["stage"] for s in stages].count("teacher") == 1  # shared across the cluster
    assert any((storage / "cache").glob("*.ckpt")) and (storage / "tune").is_dir()
