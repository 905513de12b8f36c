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
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from stages.errors import SqueezerayError


def fail(source: str, key: str, message: str) -> NoReturn:
    raise SqueezerayError(f"{source}: {key}: {message}")


def check_keys(source: str, prefix: str, raw: Mapping[Any, Any], known: Sequence[str]) -> None:
    for key in raw:
        if key not in known:
            fail(
                source,
                f"{prefix}{key}",
                f"{str(key)!r} is not a known key"
                f"{did_you_mean(str(key), known, prefix=prefix)}; accepted: "
                + ", ".join(f"{prefix}{k}" for k in known),
            )


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
    hint = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {prefix}{hint[0]}?)" if hint else ""


def fmt_list(values: Sequence[Any]) -> str:
    """[a, b] as reprs (quoted strings), so rich never reads it as a markup tag."""
    return "[" + ", ".join(repr(v) for v in values) + "]"


def short(value: Any, limit: int = 80) -> str:
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
