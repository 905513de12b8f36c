"""The import graph of `stages/` and `orchestrator/`, read from the source with `ast`.

Every import counts, module-level or inside a function (a lazy import is still a dependency:
hiding a cycle in a function body keeps the cycle). `from pkg import name` is an edge to
`pkg.name` when that is a module of ours, else to `pkg`; relative imports are resolved
against the importing module's package; subpackages are found recursively.

Asserted: no strongly connected component with more than one module (the failure names the
cycle and one import path around it), and `stages/` never imports ray or orchestrator
(`stages` is pure PyTorch; the orchestrator owns Ray, Tune and storage).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "orchestrator")


@dataclass(frozen=True)
class Import:
    """One imported name: `target` (dotted), the importing file and line."""

    target: str
    path: Path
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """`stages/quantize.py` -> `stages.quantize`; `orchestrator/store/__init__.py` ->
    `orchestrator.store`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of PACKAGES, subpackages included."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports(path: Path, module: str, known: dict[str, Path]) -> Iterator[Import]:
    """Every import in a file (function bodies included), one per imported name, as the
    dotted name it refers to: `import a.b` -> `a.b`; `from a import b` -> `a.b` when that is
    one of our modules (a submodule), else `a`; relative imports resolved first."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(sub if sub in known else base, path, node.lineno)


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The module of ours that `target` names: itself, else its longest known prefix."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in known:
            return name
        parts.pop()
    return None


def import_graph(known: dict[str, Path]) -> dict[str, dict[str, Import]]:
    """{module: {module of ours it imports: the first such import}}."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in known}
    for name, path in known.items():
        for imp in imports(path, name, known):
            dep = resolve(imp.target, known)
            if dep is not None and dep != name:
                graph[name].setdefault(dep, imp)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def cycle_path(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """One import path around a cycle inside `component` (a breadth-first search back to its
    first module), for the failure message."""
    start = component[0]
    members = set(component)
    previous: dict[str, tuple[str, Import]] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for dep, imp in sorted(graph[node].items()):
                if dep not in members:
                    continue
                if dep == start:
                    path = [imp]
                    while node != start:
                        node, step = previous[node]
                        path.append(step)
                    return path[::-1]
                if dep not in previous:
                    previous[dep] = (node, imp)
                    nxt.append(dep)
        frontier = nxt
    return []


def describe(graph: dict[str, dict[str, Import]], component: list[str], root: Path = ROOT) -> str:
    steps = [
        f"  {module_name(imp.path, root)} imports {imp.target} "
        f"({imp.path.relative_to(root)}:{imp.line})"
        for imp in cycle_path(graph, component)
    ]
    return f"import cycle among {', '.join(component)}:\n" + "\n".join(steps)


def test_no_import_cycles() -> None:
    graph = import_graph(modules())
    found = cycles(graph)
    assert not found, "\n\n".join(describe(graph, c) for c in found)


def test_stages_import_neither_ray_nor_orchestrator() -> None:
    known = modules()
    bad = sorted(
        {
            f"{imp.path.relative_to(ROOT)}:{imp.line} imports {imp.target}"
            for name, path in known.items()
            if name.split(".")[0] == "stages"
            for imp in imports(path, name, known)
            if imp.target.split(".")[0] in ("ray", "orchestrator")
        }
    )
    assert not bad, "stages/ must stay pure PyTorch:\n" + "\n".join(bad)


# stages/ bottom to top: a module imports only modules of its own layer or below.
STAGES_LAYERS: tuple[tuple[str, ...], ...] = (
    # leaves: errors, log filters, mode names, batch forms, demo models, layer kinds, device,
    # strict tracing, freed heap pages back to the OS, stage progress; batch normalisation
    # (modules and exported graph ops)
    (
        *("errors", "quiet", "names", "batches", "models", "attention", "device", "layers"),
        *("tracing", "heap", "progress"),
    ),
    ("batchnorm",),
    ("conv1d", "hfheads"),  # transformers' Conv1D as Linear; Hugging Face heads and config
    ("shortfall",),  # a structured prune far below its ratio, warned (any model)
    # the Task contract; Tasks from Hugging Face checkpoint directories; user weight files
    ("tasks", "hf", "weightfiles"),
    # data format, pruning history, ONNX, task fingerprint, whole-split data checks, batches
    ("checkpoint", "surgery", "onnxio", "fingerprint", "datacheck", "loading"),
    # the stage contract types; quantized structures: torch.ao (the only importer of
    # torch.ao.quantization), torchao quantize_, PT2E, half-float casts
    ("base", "torch_ao", "torchao_quant", "pt2e", "casting"),
    ("rebuild",),  # checkpoint -> model
    ("masks", "runtime"),  # keep-zeros; a checkpoint in its deployment runtime
    # latency: time-boxed single-thread timing (metrics calls it); hfexport: a model in
    # save_pretrained form; activations: a training step's memory; selfcheck: the checkpoint
    # round trip and the logits tolerance of a model's arithmetic (export checks with it too)
    ("training", "latency", "metrics", "hfexport", "activations", "selfcheck"),
    ("teacher", "distill", "prune", "finetune", "lowrank", "lora", "quantize", "export"),
    ("precheck",),  # applicability of stage settings, checked up front
    ("runner", "__init__"),  # the stage runner; the package's lazy public names
)


def test_stages_modules_import_only_their_layer_or_below() -> None:
    known = modules()
    layer_of = {
        ("stages" if name == "__init__" else f"stages.{name}"): level
        for level, names in enumerate(STAGES_LAYERS)
        for name in names
    }
    ours = {name for name in known if name.split(".")[0] == "stages"}
    assert ours <= set(layer_of), f"put {sorted(ours - set(layer_of))} in a layer of STAGES_LAYERS"
    graph = import_graph(known)
    upward = [
        f"{name} (layer {layer_of[name]}) imports {dep} (layer {layer_of[dep]}) at "
        f"{imp.path.relative_to(ROOT)}:{imp.line}"
        for name in sorted(ours)
        for dep, imp in graph[name].items()
        if dep in layer_of and layer_of[dep] > layer_of[name]
    ]
    assert not upward, "stages/ imports against its layering:\n" + "\n".join(upward)


def test_the_graph_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The builder itself, on a throwaway package: a cycle made only of a function-level
    import, a relative import and a `from pkg import submodule` is found and named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")  # submodule: edge to pkg.sub.b
    (pkg / "sub" / "b.py").write_text("from . import c\n")  # relative: edge to pkg.sub.c
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # into the cycle, not part of it
    known = {module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    graph = import_graph(known)
    assert set(graph["pkg.a"]) == {"pkg.sub.b"}
    assert set(graph["pkg.sub.b"]) == {"pkg.sub.c"}
    assert set(graph["pkg.sub.c"]) == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]
    message = describe(graph, cycles(graph)[0], tmp_path)
    assert "pkg.sub.c imports pkg.a (pkg/sub/c.py:2)" in message
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    assert cycles(import_graph(known)) == []
