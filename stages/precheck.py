"""Refuse, before any work starts, a pipeline stage that cannot change the user's model.

`check_stages_apply` reads layer types only (no training, no Ray): the orchestrator calls it
when a sweep's search space is validated, so a stage that could never apply is one clear
error up front instead of one failed row per trial. It asks each stage module what that stage
acts on (`stages.lora.lora_targets`, `stages.prune.prunable_share`,
`stages.lowrank.target_rank`, `stages.attention.LinearAttention.supports`), so it sits above
them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from stages.attention import LinearAttention
from stages.batches import forward_logits
from stages.casting import cast_model
from stages.distill import STUDENT_RATIO_FIX, DistillParams
from stages.errors import SqueezerayError, SqueezerayWarning
from stages.hfheads import UNSTRUCTURED_FIX, pretrained_models
from stages.layers import is_linear, weight_layer_summary
from stages.lora import lora_targets
from stages.lowrank import LowRankParams, target_rank
from stages.lowrank import reduces_params as shrinks
from stages.names import CAST_MODES
from stages.prune import (
    MIN_PRUNABLE_SHARE,
    WALK_FIX,
    PruneParams,
    check_pruned_forward,
    prunable_share,
    prune_module,
    pruned_forward_problem,
    tensor_shapes,
    untouched_summary,
)
from stages.surgery import GraphNotBuilt, GroupWalkTooLong, bounded_walks
from stages.tasks import Task


def check_stages_apply(
    task: Task, pipeline: Sequence[str], values: Mapping[str, Sequence[Any]]
) -> None:
    """Refuse, before any work starts, a stage that cannot change the model at all.

    `values` maps "stage.param" to the values a sweep can give it (its choices, the ends of
    its range, or its fixed value); a param not listed takes its stage default. Checked on the
    model the stage would receive (the task's student when `distill` is in the pipeline, else
    the teacher), by layer type only; what depends on values (lowrank's min_features, FX tracing)
    is the stage's own error. Raises SqueezerayError listing every refusal, one per line, each
    naming the stage, the value and the fix:

    - lora with a reachable rank > 0 on a model with no nn.Linear / nn.MultiheadAttention;
    - lowrank with a reachable rank_ratio < 1 on a model with no plain nn.Linear, or with no
      Linear that the smallest reachable rank_ratio and min_features would factorise (when
      structured pruning or a made student resizes layers upstream, which only shrinks them:
      with no Linear of min(out, in) >= the smallest min_features);
    - prune with a reachable unstructured method and ratio > 0 on a model whose Linear/Conv
      weights hold under `stages.prune.MIN_PRUNABLE_SHARE` of its parameters (RNN models):
      the model the prune stage receives, a student made from the teacher at each reachable
      distill.student_ratio < 1 included (`_unstructured_problems`);
    - quantize.mode dynamic_int8 reachable on a model with no nn.Linear or (supported)
      nn.MultiheadAttention;
    - a quantize.mode / export.runtime pair that cannot deploy (`check_runtimes_apply`);
    - a reachable float16/bfloat16 cast the model cannot run in (`check_casts_run`).
    """
    # A student made from the teacher (student=None) has the teacher's layer types.
    arch = "student" if "distill" in pipeline and task.student is not None else "teacher"
    model = task.build(arch)
    problems: list[str] = []  # every refusal, reported together
    layers = weight_layer_summary(model)

    def reachable(key: str, default: Any) -> list[Any]:
        return list(values.get(key, [default]))

    if "lora" in pipeline:
        ranks = [r for r in reachable("lora.rank", 0) if r]
        if ranks and not lora_targets(model):
            problems.append(
                f"lora.rank={max(ranks)!r} cannot apply to the {arch} model of task "
                f"{task.name!r}: LoRA adapts nn.Linear and nn.MultiheadAttention weights and "
                f"the model has none ({layers}); set lora.rank: 0 or drop lora from the pipeline"
            )
    problems.extend(_pruning_problems(task, pipeline, values, model=model, arch=arch))
    has_linear = any(is_linear(m, replaceable=True) for m in model.modules())
    if "lowrank" in pipeline:
        ratios = [r for r in reachable("lowrank.rank_ratio", 1.0) if r < 1.0]
        if ratios and not has_linear:
            problems.append(
                f"lowrank.rank_ratio={min(ratios)!r} cannot apply to the {arch} model of task "
                f"{task.name!r}: lowrank factorises plain nn.Linear layers and the model has none "
                f"({layers}); set lowrank.rank_ratio: 1.0 or drop lowrank from the pipeline"
            )
        # Shapes as built are the shapes lowrank sees unless something upstream resizes them
        # (structured pruning, a student made from the teacher). Then the most permissive
        # reachable values (smallest ratio, smallest min_features) decide: a layer too small
        # or not shrinking for those is so for every value the sweep can draw.
        resized = (
            "prune" in pipeline and "structured" in reachable("prune.method", "l1_unstructured")
        ) or ("distill" in pipeline and task.student is None)
        # Resizing upstream only shrinks layers, so min_features alone still decides: a layer
        # below it as built stays below it (whether the rank shrinks it depends on the new shape).
        if ratios and has_linear:
            ratio = min(ratios)
            min_features = min(reachable("lowrank.min_features", LowRankParams().min_features))
            sizes = [
                (m.out_features, m.in_features)
                for m in model.modules()
                if is_linear(m, replaceable=True)
            ]
            if not any(
                min(o, i) >= min_features and (resized or shrinks(o, i, target_rank(o, i, ratio)))
                for o, i in sizes
            ):
                problems.append(
                    f"lowrank.rank_ratio={ratio!r} with lowrank.min_features={min_features!r} "
                    f"cannot factorise any nn.Linear of the {arch} model of task {task.name!r} "
                    f"(its (out, in) sizes: {sorted(set(sizes))}): a layer needs min(out, in) "
                    ">= min_features and rank r = rank_ratio * min(out, in) below "
                    "out*in/(out+in); lower lowrank.min_features or lowrank.rank_ratio, or drop "
                    "lowrank from the pipeline"
                )
    try:
        check_runtimes_apply(task, pipeline, values)
    except SqueezerayError as exc:
        problems.extend(str(exc).splitlines())
    dynamic = "quantize" in pipeline and "dynamic_int8" in reachable("quantize.mode", "none")
    attention = any(LinearAttention.supports(m) for m in model.modules())
    if dynamic and not (has_linear or attention):
        problems.append(
            f"quantize.mode='dynamic_int8' cannot apply to the {arch} model of task "
            f"{task.name!r}: it quantizes nn.Linear and nn.MultiheadAttention layers and the "
            "model has none "
            f"({layers}); use static_int8, qat or onnx_int8"
        )
    try:  # last: it casts `model` itself
        check_casts_run(task, pipeline, values, model=model, arch=arch)
    except SqueezerayError as exc:
        problems.extend(str(exc).splitlines())
    if problems:
        raise SqueezerayError("\n".join(problems))


def _pruning_problems(
    task: Task,
    pipeline: Sequence[str],
    values: Mapping[str, Sequence[Any]],
    *,
    model: nn.Module,
    arch: str,
) -> list[str]:
    """The refusals of `check_pruned_widths` and of `_unstructured_problems`, which judges
    the students the former made (freed on return: a student of a big model is big)."""
    problems: list[str] = []
    students: dict[float, nn.Module] = {}
    try:
        students = check_pruned_widths(task, pipeline, values)
    except SqueezerayError as exc:
        problems.extend(str(exc).splitlines())
    if "prune" in pipeline:
        problems += _unstructured_problems(
            task, pipeline, values, model=model, arch=arch, made=students
        )
    return problems


def _unstructured_problems(
    task: Task,
    pipeline: Sequence[str],
    values: Mapping[str, Sequence[Any]],
    *,
    model: nn.Module,
    arch: str,
    made: Mapping[float, nn.Module],
) -> list[str]:
    """The refusals of an unstructured prune.method with a ratio > 0 the space can reach, on
    the model the prune stage would receive, whose Linear/Conv weights hold under
    `MIN_PRUNABLE_SHARE` of its parameters (every such trial would be an error row).

    That model is `model` (the `arch` model as built), or, for a student made from the
    teacher, the teacher structurally pruned to each reachable distill.student_ratio < 1:
    that pruning can narrow only the Linear/Conv layers of an RNN model, so its student holds
    a smaller share than its teacher. `made`: the students `check_pruned_widths` already made
    (at the smallest reachable ratio). When those and `model` pass, the ratios between are
    taken to pass; when one fails, every reachable ratio is checked, so the refusal names
    each failing value (as every refusal here: a choice holding one failing value is refused,
    naming the value and what is accepted). A line per failing student_ratio.
    """
    methods = [m for m in values.get("prune.method", ["l1_unstructured"]) if m != "structured"]
    if not methods or not any(r > 0 for r in values.get("prune.ratio", [PruneParams().ratio])):
        return []
    teacher = prunable_share(model)
    if not ("distill" in pipeline and task.student is None):
        if teacher >= MIN_PRUNABLE_SHARE:
            return []
        return [_unstructured_refusal(task, methods, arch, model)]
    kept = sorted(set(values.get("distill.student_ratio", [DistillParams().student_ratio])))
    models = {r: model for r in kept if r >= 1.0}  # a copy of the teacher
    models.update({r: made[r] for r in kept if r in made})
    if not models:  # no student could be made (the distill stage's error): judge the teacher
        models = dict.fromkeys(kept, model)
    if all(prunable_share(m) >= MIN_PRUNABLE_SHARE for m in models.values()):
        return []  # the ends pass: the ratios between are taken to pass
    for r in kept:
        if r not in models:
            student = _made_student(task, r)
            models[r] = model if student is None else student
    passing = [r for r in kept if prunable_share(models[r]) >= MIN_PRUNABLE_SHARE]
    lines = [
        _unstructured_refusal(task, methods, "teacher", model)
        if models[r] is model
        else _student_refusal(task, methods, r, models[r], teacher=teacher, passing=passing)
        for r in kept
        if r not in passing
    ]
    return list(dict.fromkeys(lines))


def _unstructured_refusal(task: Task, methods: list[str], arch: str, model: nn.Module) -> str:
    return (
        f"prune.method={methods[0]!r} cannot apply to the {arch} model of task "
        f"{task.name!r}: the unstructured methods zero Linear/Conv weights, which hold "
        f"{prunable_share(model):.1%} of its parameters (below {MIN_PRUNABLE_SHARE:.0%}); not "
        f"touched: {untouched_summary(model)}; set prune.ratio: 0 or drop prune from the "
        "pipeline (prune.method: structured shrinks Linear/Conv/Embedding widths but "
        "leaves LSTM/GRU/RNN layers alone too)"
    )


def _student_refusal(
    task: Task,
    methods: list[str],
    ratio: float,
    student: nn.Module,
    *,
    teacher: float,
    passing: list[float],
) -> str:
    share = prunable_share(student)
    named = ", ".join(methods)
    if passing:
        other = f"keep only distill.student_ratio {', '.join(f'{r:g}' for r in passing)}"
    elif teacher >= MIN_PRUNABLE_SHARE:
        other = "set distill.student_ratio: 1 (a copy of the teacher)"
    else:
        other = ""
    return (
        f"prune.method={methods[0]!r} cannot apply to the student made from the teacher at "
        f"distill.student_ratio={ratio:g} (task {task.name!r}): the unstructured methods "
        f"zero Linear/Conv weights, which hold {share:.1%} of that student's parameters "
        f"(below {MIN_PRUNABLE_SHARE:.0%}; the teacher's: {teacher:.1%}, but structured "
        "pruning made the student by narrowing its Linear/Conv layers only); not touched: "
        f"{untouched_summary(student)}; every trial with distill.student_ratio={ratio:g} and "
        f"prune.method {named} would be an error row; accepted with that student: "
        "prune.method: structured or prune.ratio: 0; "
        + (f"or {other}; " if other else "")
        + f"or remove {named} from prune.method (or {ratio:g} from distill.student_ratio), "
        "or give the task its own student (Task(student=...))"
    )


def _made_student(task: Task, ratio: float) -> nn.Module | None:
    """The teacher (a fresh one) structurally pruned as the distill stage makes its student
    at distill.student_ratio `ratio`, without its shortfall warning (that of the smallest
    ratio is given once, by `check_pruned_widths`); None when torch-pruning cannot prune it
    (the distill stage's error row says so)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = task.build("teacher")
    params = PruneParams(ratio=1.0 - ratio, method="structured")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SqueezerayWarning)
            prune_module(model, task, params, device=torch.device("cpu"), seed=0)
    except SqueezerayError:
        return None
    return model


# Working runtimes per mode, for the refusals' "use ..." part (docs/quantization.md).
_TORCHSCRIPT_MODES = ("none", "dynamic_int8", "int8_weight_only", "float16", "bfloat16")


def check_runtimes_apply(
    task: Task, pipeline: Sequence[str], values: Mapping[str, Sequence[Any]]
) -> None:
    """Refuse, before any work starts, a quantize.mode and export.runtime pair the space can
    reach that cannot deploy this task's model (every trial drawing it would be an error row):

    - `torchao_dynamic_int8` with `torchscript`: torch.jit.trace cannot trace torchao's
      quantized tensor subclass (any model);
    - `static_int8` / `qat` with `torchscript` on a model taking named inputs (dict samples,
      a Hugging Face model): the traced PT2E graph fails in the TorchScript interpreter when
      it runs (seen on BertForSequenceClassification, torch 2.13).

    Raises SqueezerayError naming both values, why, and the runtimes and modes that work: a
    line for each mode refused.
    """
    if "quantize" not in pipeline or "export" not in pipeline:
        return
    modes = set(values.get("quantize.mode", ["none"]))
    if "torchscript" not in values.get("export.runtime", ["eager"]):
        return
    named = isinstance(task.example_input(1), Mapping)
    bad = [m for m in ("torchao_dynamic_int8", "static_int8", "qat") if m in modes]
    if not named:
        bad = [m for m in bad if m == "torchao_dynamic_int8"]
    if not bad:
        return
    named_why = (
        f"task {task.name!r} takes named inputs (dict samples) and the TorchScript trace of its "
        "PT2E-quantized graph fails when it runs"
    )
    raise SqueezerayError(
        "\n".join(
            f"quantize.mode={mode!r} cannot deploy with export.runtime='torchscript': "
            + (
                "torch.jit.trace cannot trace torchao's quantized tensors"
                if mode == "torchao_dynamic_int8"
                else named_why
            )
            + f"; accepted: export.runtime eager or compiled for {mode}, or with torchscript "
            f"quantize.mode one of {', '.join(_TORCHSCRIPT_MODES)}; remove torchscript from "
            f"export.runtime or {mode} from quantize.mode"
            for mode in bad
        )
    )


CAST_FIX = (
    "make forward dtype-agnostic: a tensor it makes takes the dtype of the activations "
    "(e.g. `mask.unsqueeze(-1).to(hidden.dtype)` instead of `.float()`, "
    "`torch.zeros(..., dtype=x.dtype)`), or remove {mode} from quantize.mode"
)


def check_casts_run(
    task: Task,
    pipeline: Sequence[str],
    values: Mapping[str, Sequence[Any]],
    *,
    model: nn.Module | None = None,
    arch: str | None = None,
) -> None:
    """Refuse, before any work starts, a float16/bfloat16 `quantize.mode` the space can reach
    whose cast model cannot run: the model the quantize stage would receive, cast as the stage
    casts it (`stages.casting.cast_model`), runs one test sample on the CPU, where the stage
    evaluates it. A forward that makes a float32 tensor (`mask.float()` in masked mean pooling)
    fails there with `mat1 and mat2 must have the same dtype`, which would otherwise be an
    error row per trial after its earlier stages ran.

    `model`: a fresh float model of `arch` to use (cast in place for the last mode checked),
    else one is built. Costs a cast and one batch-1 forward per mode. Raises SqueezerayError
    with a line per failing mode naming the mode, the error and the fix.
    """
    if "quantize" not in pipeline:
        return
    modes = [m for m in CAST_MODES if m in values.get("quantize.mode", ["none"])]
    if not modes:
        return
    if arch is None:
        arch = "student" if "distill" in pipeline and task.student is not None else "teacher"
    if model is None:
        model = task.build(arch)
    example = task.example_input(1)
    problems = []
    for i, mode in enumerate(modes):
        cast = cast_model(model, mode, copy_first=i < len(modes) - 1)
        try:
            with torch.no_grad():
                forward_logits(cast, example)
        except Exception as exc:  # any failure: the quantize stage runs the same forward
            problems.append(
                f"quantize.mode={mode!r} cannot run the {arch} model of task {task.name!r}: "
                f"cast to {mode} as the quantize stage casts it (every floating weight, float "
                f"inputs on entry), its forward on one test sample fails "
                f"({type(exc).__name__}: {_first_line(exc)}); " + CAST_FIX.format(mode=mode)
            )
    if problems:
        raise SqueezerayError("\n".join(problems))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def check_pruned_widths(
    task: Task, pipeline: Sequence[str], values: Mapping[str, Sequence[Any]]
) -> dict[float, nn.Module]:
    """Refuse, before any work starts, a model that structured pruning leaves unable to run.

    Structured pruning runs in `prune` (prune.method: structured) and in `distill` for a task
    without a student (the student is the teacher pruned to distill.student_ratio). When the
    space can reach either, the model that stage receives is built and pruned once here, on
    the CPU, at the largest reachable ratio (`stages.prune.prune_module`), and must still run:
    a parameter or buffer left at its old width (a per-channel buffer, `h * self.scale`) is
    named, with the stage and the fix (`stages.prune.check_pruned_forward`). On a Hugging Face
    model any failure is refused here (heads or a config that cannot follow the pruning,
    `stages.hfheads`); on other models torch-pruning's own failures stay the stage's error,
    except those that stop every trial whatever its ratio, refused here within seconds: a
    group walk that does not end (`stages.surgery.GroupWalkTooLong`) and a dependency graph
    torch-pruning cannot build (`GraphNotBuilt`: a GRU's outputs into torch.cat). A prune
    that removes far less than its ratio asked is a `SqueezerayWarning` (`stages.shortfall`).

    Returns the student made from the teacher that it pruned, by its distill.student_ratio
    (none when torch-pruning could not prune it), for the unstructured-prune rule.
    """
    made: nn.Module | None = None  # the student made from the teacher, pruned here
    kept = min(values.get("distill.student_ratio", [DistillParams().student_ratio]))
    runs: list[tuple[str, str, float, str]] = []
    if "distill" in pipeline and task.student is None and kept < 1.0:
        runs.append(("distill", "teacher", 1.0 - kept, STUDENT_RATIO_FIX))
    if "prune" in pipeline and "structured" in values.get("prune.method", ["l1_unstructured"]):
        ratio = max(values.get("prune.ratio", [PruneParams().ratio]))
        arch = "student" if "distill" in pipeline and task.student is not None else "teacher"
        if ratio > 0.0:
            runs.append(("prune", arch, ratio, UNSTRUCTURED_FIX))
    for stage, arch, ratio, fix in runs:
        what = (
            f"distill.student_ratio={1.0 - ratio:g} (the student made from the teacher)"
            if stage == "distill"
            else f"prune.method='structured' prune.ratio={ratio:g}"
        )
        params = PruneParams(ratio=ratio, method="structured")
        if stage == "distill":
            made = _check_pruned(task, arch, params, what, fix)
        elif made is not None:  # prune receives the student made from the teacher: a copy
            _check_pruned(task, "student", params, what, fix, model=copy.deepcopy(made))
        else:
            _check_pruned(task, arch, params, what, fix)
    return {} if made is None else {kept: made}


def _check_pruned(
    task: Task,
    arch: str,
    params: PruneParams,
    what: str,
    fix: str,
    *,
    model: nn.Module | None = None,
) -> nn.Module | None:
    """Prune a fresh `arch` model (or `model`, the student made from the teacher) as the
    stage would; refuse it when it no longer runs because
    a parameter or buffer kept a pruned width (or, for a Hugging Face model, for any reason).
    `fix`: the advice for the knob that asked for structured pruning (`what`).
    Another model that fails for another reason is left to the stage, whose error row says so
    per trial (`check_pruned_forward`). Returns the pruned model, or None when torch-pruning
    could not prune it."""
    cpu = torch.device("cpu")
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = task.build(arch)
    example = task.example_input(2)
    with torch.no_grad():
        before = tensor_shapes(model), tuple(forward_logits(model.eval(), example).shape)
    try:
        with bounded_walks(what=what, fix=fix + WALK_FIX):  # its what, not the stage's default
            prune_module(  # `what`: a shortfall warning names the knob (`stages.shortfall`)
                model, task, params, device=cpu, seed=0, what=what, fix=fix, check_forward=False
            )
    except (GroupWalkTooLong, GraphNotBuilt) as exc:  # every trial, whatever its ratio
        raise SqueezerayError(f"task {task.name!r}: {exc}") from exc
    except SqueezerayError as exc:
        if pretrained_models(model):  # a Hugging Face model it cannot keep loadable: refuse
            text = str(exc) if str(exc).startswith(what) else f"{what}: {exc}"
            raise SqueezerayError(f"task {task.name!r}: {text}") from exc
        return None  # torch-pruning cannot prune this model: the stage reports it per trial
    problem = pruned_forward_problem(model, example, before)
    if problem is not None and (problem[1] or pretrained_models(model)):
        try:
            check_pruned_forward(model, example, before, what=f"{what} on the {arch} model")
        except SqueezerayError as exc:
            raise SqueezerayError(f"task {task.name!r}: {exc}; or {fix}") from exc
    return model


__all__ = ["check_casts_run", "check_pruned_widths", "check_runtimes_apply", "check_stages_apply"]
