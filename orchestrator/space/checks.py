"""Generic checks shared by the search-space parsers: every failure is a SqueezerayError
"FILE: KEY: VALUE ...; accepted: ...", with a did-you-mean for near misses.

Nothing here knows about stages, metrics or distributions (see `params`, `metrics`, `parse`);
it is the shape/type/range/unknown-key layer. Kept by hand rather than with pydantic: the
prototype for the sections it fits (search, latency, top-level keys) was longer than these
helpers once its errors were translated to this message form (issue 16, item 4).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from stages.errors import SqueezerayError

T = TypeVar("T")


def fail(source: str, key: str, message: str) -> NoReturn:
    raise SqueezerayError(f"{source}: {key}: {message}")


class SpaceErrors(SqueezerayError):
    """Every problem found in one search space, in file order: `errors` holds one
    "FILE: KEY: VALUE ...; accepted: ..." message per problem, and the exception's message
    shows them one a line (a single problem reads as it always did)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        if len(self.errors) == 1:
            text = self.errors[0]
        else:
            text = f"{len(self.errors)} problems:\n" + "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(text)


class Collector:
    """Runs independent checks and keeps every SqueezerayError they raise, so a file with
    three typos reports three problems in one run (`squeezeray validate`) instead of one a run.
    A check that fails stands in with its `fallback` so the later, independent checks go on."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attempt(self, check: Callable[..., T], *args: Any, fallback: T, **kwargs: Any) -> T:
        try:
            return check(*args, **kwargs)
        except SpaceErrors as exc:
            self.errors.extend(e for e in exc.errors if e not in self.errors)
        except SqueezerayError as exc:
            if str(exc) not in self.errors:
                self.errors.append(str(exc))
        return fallback

    def raise_if_any(self) -> None:
        """SpaceErrors listing everything collected so far; nothing when all passed."""
        if self.errors:
            raise SpaceErrors(self.errors)


def check_keys(source: str, prefix: str, raw: Mapping[Any, Any], known: Sequence[str]) -> None:
    """Every key of `raw` is in `known`; SpaceErrors lists each unknown one."""
    errors = Collector()
    for key in raw:
        if key not in known:
            errors.attempt(
                fail,
                source,
                f"{prefix}{key}",
                f"{str(key)!r} is not a known key"
                f"{did_you_mean(str(key), known, prefix=prefix)}; accepted: "
                + ", ".join(f"{prefix}{k}" for k in known),
                fallback=None,
            )
    errors.raise_if_any()


def check_section(source: str, name: str, raw: Any, keys: Sequence[str]) -> None:
    """A top-level section must be a mapping whose keys are all known."""
    if not isinstance(raw, Mapping):
        fail(
            source,
            name,
            f"{short(raw)} is not accepted; accepted: a mapping with keys " + ", ".join(keys),
        )
    check_keys(source, f"{name}.", raw, keys)


def check_int(source: str, key: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(source, key, f"{short(value)} is not an integer; accepted: an integer >= {low}")
    if value < low:
        fail(source, key, f"{value!r} is out of range; accepted: an integer >= {low}")
    return value


def check_share(source: str, key: str, value: Any) -> float:
    """A number in [0, 1) (`latency.precision`)."""
    accepted = "accepted: a number in [0, 1), e.g. 0.02"
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(source, key, f"{short(value)} is not a number; {accepted}")
    if not 0 <= value < 1:
        fail(source, key, f"{value!r} is out of range; {accepted}")
    return float(value)


def check_choice(source: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        fail(
            source,
            key,
            f"{short(value)} is not accepted"
            f"{did_you_mean(str(value), choices)}; accepted: {', '.join(choices)}",
        )
    return str(value)


def did_you_mean(word: str, options: Sequence[str], *, prefix: str = "") -> str:
    """ " (did you mean X?)" for the option closest to `word`, or "" when none is close.

    The one suggestion of every option that takes a name (a space's keys and metrics,
    `--where`, `--pick`, `--objectives`). Close is difflib's (a typo: `val_acuracy`), else an
    option that starts with `word` and a separator (a shortened name: `size` -> `size_bytes`).
    """
    word = str(word)
    hint = difflib.get_close_matches(word, list(options), n=1)
    if not hint and len(word) >= 3:
        hint = [
            o for o in options if o.lower().startswith((word.lower() + "_", word.lower() + "."))
        ]
    return f" (did you mean {prefix}{hint[0]}?)" if hint else ""


def fmt_list(values: Sequence[Any]) -> str:
    """[a, b] as reprs (quoted strings), so rich never reads it as a markup tag."""
    return "[" + ", ".join(repr(v) for v in values) + "]"


def short(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it; YAML's empty value (`key:`) reads as null, the
    word the user wrote (or left out), not Python's None."""
    if value is None:
        return "null (an empty value)"
    text = fmt_list(value) if isinstance(value, list | tuple) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_duration(source: str, key: str, value: Any) -> float:
    """`parse_duration` whose error names the file and the key (or flag)."""
    try:
        return parse_duration(value)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{source}: {key}: {exc}") from exc


def parse_duration(text: str | float) -> float:
    """ "30m", "90s", "2h", "1h30m", "1.5h", "1d" or a plain number of seconds -> seconds (> 0)."""
    accepted = "a duration > 0 such as 90s, 30m, 2h, 1h30m (or a number of seconds)"
    if isinstance(text, bool):
        raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        cleaned = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", cleaned):
            seconds = float(cleaned)
        elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", cleaned):
            units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
            parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", cleaned)
            if len({unit for _, unit in parts}) != len(parts):
                raise SqueezerayError(f"{text!r} repeats a unit; accepted: {accepted}")
            seconds = sum(float(n) * units[u] for n, u in parts)
        else:
            raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    else:
        raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise SqueezerayError(f"{text!r} is out of range; accepted: {accepted}")
    return seconds
