"""JSON encoding shared by the runner and the sources, so they agree on what is serialisable."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

from ._errors import OutputError

__all__ = ["TooDeep", "dumps", "loads", "loads_array_items", "to_output_error"]

_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=None
)


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, PurePath)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(type(obj).__name__)


_encoder.default = _default  # type: ignore[method-assign,assignment]


def dumps(obj: Any) -> bytes:
    """Encode as compact UTF-8 JSON; dataclasses, enums, dates, UUIDs, paths and sets included.

    Raises:
        OutputError: naming the first offending value's location and type.
    """
    if type(obj) is dict and not obj:
        return b"{}"  # the output of every handler that returns nothing
    try:
        return _encoder.encode(obj).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise to_output_error(obj, exc) from None


def loads(data: bytes | str) -> Any:
    return json.loads(data)


def to_output_error(obj: Any, exc: BaseException) -> OutputError:
    """Explain why ``obj`` is not JSON, pointing at the value to blame."""
    if isinstance(exc, RecursionError):
        return OutputError("output is not JSON-serialisable: nested too deeply or circular")
    where = _find_bad(obj, "output", set())
    if where is not None:
        path, what = where
        return OutputError(f"output is not JSON-serialisable: {path} is {what}")
    return OutputError(f"output is not JSON-serialisable: {exc}")


def _find_bad(obj: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if obj is None or isinstance(obj, (str, bool, int)):
        return None
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return path, f"the float {obj!r} (JSON has no NaN or infinity)"
        return None
    if id(obj) in seen:
        return path, "a circular reference"
    seen.add(id(obj))
    try:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return path, f"a dict with a key of type {type(key).__name__}"
                found = _find_bad(value, f"{path}.{key}", seen)
                if found:
                    return found
            return None
        if isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                found = _find_bad(value, f"{path}[{i}]", seen)
                if found:
                    return found
            return None
        try:
            converted = _default(obj)
        except TypeError:
            return path, f"of type {type(obj).__name__}"
        return _find_bad(converted, path, seen)
    finally:
        seen.discard(id(obj))


@dataclasses.dataclass(frozen=True)
class TooDeep:
    """An array item nested too deeply to decode; ``fields`` are its top-level members with
    every nested object or array replaced by None (enough to name and settle a task)."""

    fields: dict[str, Any]


def loads_array_items(data: bytes | str) -> list[Any]:
    """Decode a JSON array item by item, so one item nested deeper than the parser's stack
    allows (a ``RecursionError`` for the whole array) costs that item only: it comes back as a
    :class:`TooDeep`.

    Raises:
        ValueError: the text is not a JSON array.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    items: list[Any] = []
    for start, end in _array_spans(text):
        chunk = text[start:end]
        try:
            items.append(json.loads(chunk))
        except RecursionError:
            shallow = json.loads(_flatten(chunk))
            items.append(TooDeep(shallow if isinstance(shallow, dict) else {}))
    return items


def _chars(text: str) -> Iterator[tuple[int, str, bool]]:
    """Every character of JSON ``text`` with whether it is inside a string (quotes included)."""
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                yield i, ch, True
                continue
            yield i, ch, True
        elif ch == '"':
            in_string = True
            yield i, ch, True
        else:
            yield i, ch, False


def _array_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each top-level item of the JSON array ``text`` (no recursion)."""
    if not text.strip().startswith("["):
        raise ValueError("not a JSON array")
    spans: list[tuple[int, int]] = []
    depth, start = 0, -1
    for i, ch, quoted in _chars(text):
        if depth == 1 and start < 0 and not ch.isspace() and ch not in ",]":
            start = i
        if quoted:
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                if start >= 0:
                    spans.append((start, i))
                return spans
        elif ch == "," and depth == 1:
            spans.append((start, i))
            start = -1
    raise ValueError("unterminated JSON array")


def _flatten(text: str) -> str:
    """``text`` (one JSON value) with every container below the top level replaced by null."""
    out: list[str] = []
    depth = 0
    for _, ch, quoted in _chars(text):
        if not quoted and ch in "[{":
            depth += 1
            if depth == 2:
                out.append("null")
        elif not quoted and ch in "]}":
            depth -= 1
            if depth == 0:
                out.append(ch)
            continue
        if depth <= 1:
            out.append(ch)
    return "".join(out)
