"""Search spaces: the YAML format, parsed into frozen dataclasses and fully validated before Ray
starts (this module never imports ray).

```yaml
name: my-sweep
task: digits                      # built-in name or "package.module:callable"
pipeline: [teacher, distill, prune, finetune, lora, quantize, export]
objectives: {val_accuracy: max, size_bytes: min, latency_ms_sweep: min}
params:                           # "stage.param": a distribution or a plain (fixed) value
  distill.temperature: {choice: [2.0, 4.0, 8.0]}
  prune.ratio: {uniform: [0.0, 0.9]}
  lora.rank: {int: [0, 16], step: 4}
  distill.epochs: 60
search: {algorithm: optuna, trials: 24, seed: 0, scheduler: none, time_budget: 30m}
constraints: {val_accuracy: ">= 0.95"}
latency: {warmup: 50, repeats: 300, batch_size: 1, threads: 1}
```

This module reads files (packaged names, paths, strict YAML); the parts of a space are checked
by `parse` (sections), `params` (distributions, against each stage's own params dataclass),
`metrics` and `checks` (the shared helpers), and make the frozen `model.SearchSpace`. Every
error is a SqueezerayError naming the file, the key, the bad value and what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.space.checks import did_you_mean
from orchestrator.space.model import SearchSpace
from orchestrator.space.parse import parse_space
from stages.errors import SqueezerayError


def packaged_space_path(name: str) -> Path:
    """The installed path of a packaged space: "quick" or "quick.yaml" -> .../quick.yaml."""
    import search_spaces

    folder = Path(search_spaces.__file__).parent
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = folder / f"{stem}.yaml"
    if not path.is_file():
        known = search_spaces.names()
        raise SqueezerayError(
            f"search space {name!r} is not a packaged space{did_you_mean(stem, known)}; "
            f"accepted: {', '.join(known)}, or a path to a YAML file"
        )
    return path


def load_space(path: str | Path | None = None, *, check_task: bool = True) -> SearchSpace:
    """Read and validate a search space.

    None -> the packaged default.yaml; a bare name without a suffix or directory ("quick")
    -> the packaged search_spaces/quick.yaml; anything else is a file path.
    `check_task=False` skips importing and checking the task (it builds the data).
    """
    if path is None:
        file = packaged_space_path("default")
    elif isinstance(path, str) and _is_bare_name(path) and not Path(path).exists():
        file = packaged_space_path(path)
    else:
        file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SqueezerayError(
            f"{source}: no such file; accepted: a path to a YAML file or a packaged space name "
            f"({', '.join(_packaged_names())})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SqueezerayError(f"{source}: cannot read the file ({exc})") from exc
    return parse_space_text(text, source=source, check_task=check_task)


def parse_space_text(text: str, *, source: str, check_task: bool = True) -> SearchSpace:
    """Validate a search space given as YAML text; errors name `source` (its file)."""
    return parse_space(_load_yaml(text, source=source), source=source, check_task=check_task)


def space_text(space: SearchSpace) -> str | None:
    """The YAML text `space` was read from, or None when its file is gone or no longer reads
    as the same space (edited, or a space built in Python). A sweep manifest stores it, so
    `--resume` runs the space that was started whatever happens to the file later."""
    try:
        text = Path(space.source).read_text(encoding="utf-8")
        again = parse_space_text(text, source=space.source, check_task=False)
    except (OSError, UnicodeDecodeError, SqueezerayError):
        return None
    same = ("task", "pipeline", "objectives", "params", "search", "constraints", "latency")
    if any(getattr(again, k) != getattr(space, k) for k in same):
        return None
    return text


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last one silently) and reads
    `1e-3` as a float (YAML 1.1 wants a dot: `1.0e-3`)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (YAML would keep only the last one)",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "malformed YAML"
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = ""
        if re.search(r":\s*[<>]=?", line):
            hint = '; quote constraint values, e.g. val_accuracy: ">= 0.95"'
        snippet = f" (line: {line.strip()!r})" if line.strip() else ""
        raise SqueezerayError(f"{where}: malformed YAML: {problem}{snippet}{hint}") from exc
    except yaml.YAMLError as exc:
        raise SqueezerayError(f"{source}: malformed YAML: {exc}") from exc


def _is_bare_name(path: str) -> bool:
    return "/" not in path and "\\" not in path and not path.endswith((".yaml", ".yml"))


def _packaged_names() -> list[str]:
    import search_spaces

    return search_spaces.names()
