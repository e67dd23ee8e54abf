"""The forms a setting or option value may take, shared by pool settings, worker options and the
command line.

A :class:`Form` reads a value from text (an environment variable, a flag), recognises a Python
value given in code, and names itself in the one-line error that bad configuration produces
(``TASKFLEET_DRAIN_TIMEOUT: expected a number >= 0, got 'soon'``; docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "BOOLEAN",
    "LEASE",
    "MILLISECONDS",
    "SECONDS_OR_NONE",
    "Form",
    "choice",
    "integer",
    "number",
    "optional_text",
]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Form:
    """One kind of value.

    Attributes:
        expected: how error messages name it (``an integer >= 1``).
        parse: text to value; raises ValueError when the text is not of this form.
        accepts: whether a value given in code is of this form.
        choices: the allowed words, for forms that are a choice among words.
    """

    expected: str
    parse: Callable[[str], Any]
    accepts: Callable[[Any], bool]
    choices: tuple[str, ...] = ()

    def error(self, setting: str, value: Any) -> ConfigurationError:
        return ConfigurationError(setting, f"expected {self.expected}, got {value!r}")

    def read(self, setting: str, text: str) -> Any:
        """``text`` parsed; ConfigurationError naming ``setting`` when it does not parse."""
        try:
            return self.parse(text)
        except (ValueError, TypeError):
            raise self.error(setting, text) from None

    def check(self, setting: str, value: Any) -> Any:
        """``value`` itself; ConfigurationError naming ``setting`` when it is not of this form."""
        if not self.accepts(value):
            raise self.error(setting, value)
        return value

    def argument(self, text: str) -> Any:
        """``text`` parsed, for ``argparse`` (``type=form.argument``)."""
        import argparse

        try:
            return self.parse(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(minimum: int, expected: str = "") -> Form:
    """Whole numbers from ``minimum`` up."""

    def parse(text: str) -> int:
        value = int(text.strip())
        if value < minimum:
            raise ValueError
        return value

    return Form(
        expected or f"an integer >= {minimum}",
        parse,
        lambda value: _is_int(value) and value >= minimum,
    )


def number(minimum: float, *, inclusive: bool) -> Form:
    """Numbers above ``minimum`` (or from it, ``inclusive``)."""

    def fits(value: float) -> bool:
        return value >= minimum if inclusive else value > minimum

    def parse(text: str) -> float:
        value = float(text.strip())
        if not fits(value):
            raise ValueError
        return value

    return Form(
        f"a number {'>=' if inclusive else '>'} {minimum:g}",
        parse,
        lambda value: _is_number(value) and fits(value),
    )


def choice(*words: str) -> Form:
    """One of ``words``, in any case."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in words:
            raise ValueError
        return value

    return Form(" | ".join(words), parse, lambda value: value in words, choices=words)


def optional_text(expected: str) -> Form:
    """Any text; blank is None."""
    return Form(
        expected,
        lambda text: text.strip() or None,
        lambda value: value is None or isinstance(value, str),
    )


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError


def _parse_ms(text: str) -> int:
    value = int(float(text.strip()))
    if value < 0:
        raise ValueError
    return value


def _parse_seconds_or_none(text: str) -> float | None:
    stripped = text.strip().lower()
    if stripped in ("", "none", "0"):
        return None
    value = float(stripped)
    if not value > 0:
        raise ValueError
    return value


def _parse_lease(text: str) -> bool | float:
    try:
        return _parse_bool(text)
    except ValueError:
        value = float(text)
        if not value > 0:
            raise ValueError from None
        return value


#: true/false, 1/0, yes/no, on/off in text; a bool in code.
BOOLEAN = Form("true/false", _parse_bool, lambda value: isinstance(value, bool))
#: Whole milliseconds in text (a fraction is cut off); any number >= 0 in code.
MILLISECONDS = Form("milliseconds >= 0", _parse_ms, lambda value: _is_number(value) and value >= 0)
#: Seconds > 0; ``none``, ``0`` or blank in text, None in code: no limit.
SECONDS_OR_NONE = Form(
    "seconds > 0, or none",
    _parse_seconds_or_none,
    lambda value: value is None or (_is_number(value) and value > 0),
)
#: true/false, or seconds > 0 between lease extensions.
LEASE = Form(
    "true/false or seconds > 0",
    _parse_lease,
    lambda value: isinstance(value, bool) or (_is_number(value) and value > 0),
)


def _parse_processes(text: str) -> int | tuple[int, int]:
    low, sep, high = text.strip().replace("..", "-").partition("-")
    value: int | tuple[int, int] = (int(low), int(high)) if sep else int(low)
    if not _processes_ok(value):
        raise ValueError
    return value


def _processes_ok(value: Any) -> bool:
    if isinstance(value, tuple) and len(value) == 2:
        return all(_is_int(v) for v in value) and 1 <= value[0] <= value[1]
    return _is_int(value) and value >= 1


#: A number of processes >= 1, or a range ``MIN-MAX`` (``(min, max)`` in code) to autoscale in.
PROCESSES = Form(
    "an integer >= 1, or a range MIN-MAX with 1 <= MIN <= MAX", _parse_processes, _processes_ok
)
