"""Which failures are the infrastructure's (a trial `lost`, re-run by `--resume`) and which
are the trial's own (`error`, final).

A trial is `lost` when Ray's machinery failed under it: an actor died (the stage cache actor,
after its restarts), the owner of an object it needed died, an object was lost, a node or its
raylet died, a placement group went away. Nothing about its model is known then, so
`--resume` runs it again. A stage that raised, ran out of memory, or crashed its worker on
every one of its retries (`WorkerCrashedError`: Ray retried it `max_retries` times in fresh
workers, each died: native code, `os._exit` or the out-of-memory killer) is the trial's
`error`: running it again would fail again.
"""

from __future__ import annotations

from typing import Any

# Ray exception classes (ray.exceptions, by name, subclasses included) that mean the
# infrastructure failed, not the trial.
INFRASTRUCTURE_ERRORS = (
    "RayActorError",  # ActorDiedError, ActorUnavailableError
    "ObjectLostError",  # OwnerDiedError, ObjectReconstructionFailedError, ObjectFetchTimedOut...
    "NodeDiedError",
    "LocalRayletDiedError",
    "RaySystemError",
    "ActorPlacementGroupRemoved",
    "TaskPlacementGroupRemoved",
    "RpcError",
)
# Their subclasses' names, for errors known only as text (Tune's error file of a trial).
_NAMES_IN_TEXT = (
    *INFRASTRUCTURE_ERRORS,
    "ActorDiedError",
    "ActorUnavailableError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectFetchTimedOutError",
    "ObjectFreedError",
)


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when `exc` (or the error a Ray task error wraps, or its `__cause__`) is one of
    INFRASTRUCTURE_ERRORS."""
    seen: set[int] = set()
    current: Any = exc
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in INFRASTRUCTURE_ERRORS for cls in type(current).__mro__):
            return True
        wrapped = getattr(current, "cause", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


def names_infrastructure_error(text: str) -> bool:
    """True when an error known only as text (the last line of Tune's error file: its
    exception type) names an infrastructure error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    head = last.split(":", 1)[0].rsplit(".", 1)[-1]
    return head in _NAMES_IN_TEXT


def lost_message(where: str, cause: str) -> str:
    """A `lost` row's error: what failed, and that `--resume` runs the trial again."""
    return (
        f"{where}: lost to an infrastructure failure ({cause}); its model did not fail. "
        "`squeezeray sweep --resume` runs it again"
    )
