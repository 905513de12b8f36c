"""`squeezeray schedule`: run `squeezeray nightly` on a cron schedule.

Three ways, one cron expression:
  - print a crontab line (absolute executable, `cd` to the directory it was made in, output
    appended to a log) and a KubeRay snippet (a RayJob, and a CronJob that creates it nightly);
  - install the line into the user's crontab, idempotently: the entry carries a marker comment
    keyed by the storage, so installing again (a new time, new flags) replaces it;
  - run a scheduler loop in this process (croniter), each run a `squeezeray nightly` child
    process, logging every run and going on after a failed one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from stages.errors import SqueezerayError

MARKER = "# squeezeray-nightly"
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
DEFAULT_LOG = "squeezeray-nightly.log"
DEFAULT_IMAGE = "your-registry/squeezeray:latest"
MAX_SLEEP_S = 60.0  # the loop re-reads the clock at least this often (suspend, clock changes)


def check_cron(expr: str) -> str:
    """A normalised five-field cron expression (or @daily-style macro); SqueezerayError if not."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    accepted = (
        "accepted: five fields 'minute hour day-of-month month day-of-week', e.g. "
        f"'0 2 * * *' (02:00 every day), or one of {', '.join(MACROS)}"
    )
    if text in MACROS:
        return text
    if len(text.split(" ")) != 5:
        raise SqueezerayError(
            f"--cron={expr!r} has {len(text.split())} field(s), not 5; {accepted}"
        )
    try:
        croniter(text)
    except (ValueError, KeyError) as exc:  # croniter's errors are ValueErrors
        raise SqueezerayError(
            f"--cron={expr!r} is not a valid cron expression ({exc}); {accepted}"
        ) from exc
    return text


def squeezeray_executable() -> str:
    """The absolute path of the `squeezeray` script cron should run (the one of this Python)."""
    beside = Path(sys.executable).parent / "squeezeray"
    if beside.is_file():
        return str(beside.absolute())
    found = shutil.which("squeezeray")
    if found:
        return str(Path(found).absolute())
    raise SqueezerayError(
        f"no `squeezeray` executable beside {sys.executable} or on PATH; install the package "
        "(pip install -c constraints/cpu.txt -e .) so cron can run it"
    )


@dataclass(frozen=True)
class NightlyCommand:
    """`squeezeray nightly ARGS`, run from `cwd`, output appended to `log`."""

    executable: str
    args: tuple[str, ...]
    cwd: Path
    log: Path
    storage: str  # the --storage value, for the marker key

    def argv(self) -> list[str]:
        return [self.executable, "nightly", *self.args]

    def key(self) -> str:
        """Identifies the entry: one scheduled nightly per storage."""
        storage = self.storage
        if "://" not in storage or storage.startswith("file://"):
            storage = str((self.cwd / storage.removeprefix("file://")).resolve())
        return hashlib.sha256(storage.encode()).hexdigest()[:12]


def nightly_command(
    args: Sequence[str],
    *,
    storage: str,
    cwd: Path | None = None,
    log: Path | None = None,
    executable: str | None = None,
) -> NightlyCommand:
    base = (cwd or Path.cwd()).absolute()
    log_path = log if log is not None else Path(DEFAULT_LOG)
    return NightlyCommand(
        executable=executable or squeezeray_executable(),
        args=tuple(args),
        cwd=base,
        log=log_path if log_path.is_absolute() else base / log_path,
        storage=storage,
    )


def crontab_entry(cron: str, command: NightlyCommand) -> list[str]:
    """The marker comment and the crontab line (`%` escaped: cron turns it into a newline)."""
    shell = (
        f"cd {shlex.quote(str(command.cwd))} && {shlex.join(command.argv())} "
        f">> {shlex.quote(str(command.log))} 2>&1"
    )
    return [
        f"{MARKER} [{command.key()}] storage {command.storage} "
        "(added by `squeezeray schedule --install`; delete both lines to unschedule)",
        f"{check_cron(cron)} {shell.replace('%', chr(92) + '%')}",
    ]


_MARKER_RE = re.compile(re.escape(MARKER) + r" \[([0-9a-f]+)\]")


def merge_crontab(current: str, entry: list[str], key: str) -> tuple[str, str]:
    """(new crontab text, "added" | "replaced" | "unchanged"): our entry for `key` replaced."""
    lines = current.splitlines()
    kept: list[str] = []
    old: list[str] = []
    i = 0
    while i < len(lines):
        match = _MARKER_RE.match(lines[i])
        if match and match.group(1) == key:
            old += lines[i : i + 2]
            i += 2
            continue
        kept.append(lines[i])
        i += 1
    text = "\n".join([*kept, *entry]) + "\n"
    if old == entry:
        return current if current.endswith("\n") else current + "\n", "unchanged"
    return text, "replaced" if old else "added"


def install_crontab(entry: list[str], key: str, *, crontab: str = "crontab") -> str:
    """Put `entry` into the user's crontab (via `crontab -l` / `crontab FILE`); say what changed."""
    try:
        listed = subprocess.run([crontab, "-l"], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SqueezerayError(
            f"cannot run `{crontab} -l` ({exc}); install cron, or use --print and add the line "
            "yourself, or run `squeezeray schedule --foreground`"
        ) from exc
    if listed.returncode == 0:
        current = listed.stdout
    elif "no crontab" in listed.stderr.lower():
        current = ""
    else:
        raise SqueezerayError(
            f"`{crontab} -l` failed: {listed.stderr.strip() or listed.returncode}"
        )
    text, change = merge_crontab(current, entry, key)
    if change == "unchanged":
        return change
    with tempfile.NamedTemporaryFile("w", suffix=".crontab", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        written = subprocess.run([crontab, path], capture_output=True, text=True, check=False)
    finally:
        Path(path).unlink(missing_ok=True)
    if written.returncode != 0:
        raise SqueezerayError(f"`{crontab} FILE` refused the new crontab: {written.stderr.strip()}")
    return change


# -- Kubernetes (KubeRay) -------------------------------------------------------------------


_KUBE_NAME = "squeezeray-nightly"
_RAYJOB_HEADER = (
    "# KubeRay: tonight's sweep as a RayJob, which starts its own Ray cluster (every pod\n"
    "# offers one squeezeray_latency slot) and removes it afterwards. The image needs\n"
    "# squeezeray installed (e.g. FROM rayproject/ray, then pip install -c\n"
    "# constraints/cpu.txt . ; GPU images drop the -c). --storage must be shared by every\n"
    "# pod: an s3:// or gs:// URI, or a ReadWriteMany volume mounted at the same path.\n"
    "# Run it once: kubectl create -f rayjob.yaml (create, not apply: generateName).\n"
)
_CRON_HEADER = (
    "# Nightly: a CronJob creates that RayJob from a ConfigMap; its ServiceAccount may only\n"
    "# create rayjobs. (KubeRay >= 1.6 can instead wrap the RayJob spec in a RayCronJob.)\n"
)


def kuberay_manifests(cron: str, args: Sequence[str], *, image: str = DEFAULT_IMAGE) -> str:
    """YAML: a RayJob that runs tonight's sweep, and the objects that create it on `cron`."""
    rayjob_text = _dump(_rayjob(args, image=image))
    body = "---\n".join(_dump(doc) for doc in _cron_objects(cron, rayjob_text))
    return f"{_RAYJOB_HEADER}{rayjob_text}---\n{_CRON_HEADER}{body}"


def _rayjob(args: Sequence[str], *, image: str) -> dict[str, Any]:
    """A RayJob running `squeezeray nightly ARGS` on a cluster of its own (joined with
    `--address auto` unless ARGS give one), every pod offering one latency slot."""
    entry_args = list(args)
    if not any(a == "--address" or a.startswith("--address=") for a in entry_args):
        entry_args += ["--address", "auto"]  # inside a RayJob: join the job's cluster
    latency = {"resources": '"{\\"squeezeray_latency\\": 1}"'}  # KubeRay's quoting
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"generateName": f"{_KUBE_NAME}-"},
        "spec": {
            "entrypoint": shlex.join(["squeezeray", "nightly", *entry_args]),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": {
                "rayVersion": _ray_version(),
                "headGroupSpec": {
                    "rayStartParams": dict(latency),
                    "template": _pod("ray-head", image, cpu="2", memory="4Gi"),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": 2,
                        "minReplicas": 0,
                        "maxReplicas": 4,
                        "rayStartParams": dict(latency),
                        "template": _pod("ray-worker", image, cpu="4", memory="8Gi"),
                    }
                ],
            },
        },
    }


def _pod(container: str, image: str, *, cpu: str, memory: str) -> dict[str, Any]:
    """A pod template of one container whose requests equal its limits."""
    limits = {"cpu": cpu, "memory": memory}
    return {
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": image,
                    "resources": {"limits": limits, "requests": dict(limits)},
                }
            ]
        }
    }


def _cron_objects(cron: str, rayjob_text: str) -> list[dict[str, Any]]:
    """A ServiceAccount that may only create rayjobs (with its Role and RoleBinding), the
    RayJob in a ConfigMap, and the CronJob that creates it on `cron`."""
    name = _KUBE_NAME
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"rayjob.yaml": rayjob_text},
        },
        _cronjob(cron),
    ]


def _cronjob(cron: str) -> dict[str, Any]:
    """A CronJob whose pod runs `kubectl create -f` on the ConfigMap's RayJob on `cron`
    (one at a time: concurrencyPolicy Forbid)."""
    container = {
        "name": "create-rayjob",
        "image": "bitnami/kubectl:latest",
        "command": ["kubectl", "create", "-f", "/rayjob/rayjob.yaml"],
        "volumeMounts": [{"name": "rayjob", "mountPath": "/rayjob"}],
    }
    pod_spec = {
        "serviceAccountName": _KUBE_NAME,
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "rayjob", "configMap": {"name": _KUBE_NAME}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": _KUBE_NAME},
        "spec": {
            "schedule": check_cron(cron),
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"template": {"spec": pod_spec}}},
        },
    }


def _literal_block(dumper: Any, value: str) -> Any:
    """A YAML representer: multi-line strings as literal blocks, others plain."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _dump(doc: dict[str, Any]) -> str:
    """YAML with multi-line strings as literal blocks (the ConfigMap's embedded RayJob)."""
    import yaml

    dumper: type[yaml.SafeDumper] = type("LiteralDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, _literal_block)
    return yaml.dump(doc, Dumper=dumper, sort_keys=False)


def _ray_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "2.60.0"


# -- the in-process loop --------------------------------------------------------------------


def run_forever(
    cron: str,
    run: Callable[[], int],
    *,
    log: Callable[[str], None],
    now: Callable[[], datetime] = datetime.now,
    sleep: Callable[[float], None] = time.sleep,
    max_runs: int | None = None,
) -> int:
    """Run `run()` at every time `cron` names (local time); return the number of runs made.

    A run that raises or exits non-zero is logged and the loop goes on. The next time is
    computed after each run, so a run longer than the interval skips the times it overlapped
    instead of starting them late, one after another.
    """
    from croniter import croniter

    expr = check_cron(cron)
    runs = 0
    while max_runs is None or runs < max_runs:
        due = croniter(expr, now()).get_next(datetime)
        log(f"next nightly run at {due:%Y-%m-%d %H:%M}")
        while (left := (due - now()).total_seconds()) > 0:
            sleep(min(left, MAX_SLEEP_S))
        log(f"nightly run {runs + 1} starts")
        try:
            code = run()
        except Exception as exc:  # the schedule must survive any one night
            log(f"nightly run {runs + 1} failed: {exc!r}; the schedule goes on")
        else:
            what = {0: "ok", 3: "regression (exit code 3)"}.get(code, f"failed (exit code {code})")
            log(f"nightly run {runs + 1} finished: {what}")
        runs += 1
    return runs


def subprocess_runner(command: NightlyCommand) -> Callable[[], int]:
    """Run `squeezeray nightly` as a child process: each night gets a fresh Ray and memory."""
    return functools.partial(subprocess.call, command.argv(), cwd=command.cwd)
