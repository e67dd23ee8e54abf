"""Task input to handler arguments: each parameter filled from the input key of its name and
converted to its annotation (docs/workers.md#inputs).

Converters are built once per handler, when the worker is defined; binding a task runs them. A
value that does not fit raises :class:`InputError` naming the parameter and the path inside it
(``input 'size.width' expects an integer, got str 'wide'``).
"""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from ._errors import InputError
from ._task import Task

__all__ = ["Binder", "Converter", "converter_for"]

Converter = Callable[[Any, str], Any]
_NONE_TYPE = type(None)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _fail(path: str, expected: str, value: Any) -> InputError:
    parameter = path.split(".", 1)[0].split("[", 1)[0]
    return InputError(
        f"input {path!r} expects {expected}, got {_describe(value)}", parameter=parameter
    )


def _conv_any(value: Any, path: str) -> Any:
    return value


def _conv_str(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    raise _fail(path, "a string", value)


def _conv_int(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(path, "an integer", value)


def _conv_float(value: Any, path: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _fail(path, "a number", value)


def _conv_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _fail(path, "a boolean", value)


def _conv_bytes(value: Any, path: str) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise _fail(path, "base64-encoded bytes", value)


def converter_for(tp: Any) -> Converter:
    """Build a converter for an annotation (resolved once, at worker definition)."""
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return _conv_any
    simple: dict[Any, Converter] = {
        str: _conv_str,
        int: _conv_int,
        float: _conv_float,
        bool: _conv_bool,
        bytes: _conv_bytes,
    }
    if tp in simple:
        return simple[tp]
    if tp is _NONE_TYPE or tp is None:

        def conv_none(value: Any, path: str) -> None:
            if value is None:
                return
            raise _fail(path, "null", value)

        return conv_none

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return converter_for(args[0])
    if origin is Union or origin is types.UnionType:
        members = [converter_for(a) for a in args]
        allows_none = _NONE_TYPE in args
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)

        def conv_union(value: Any, path: str) -> Any:
            if value is None and allows_none:
                return None
            for member in members:
                try:
                    return member(value, path)
                except InputError:
                    continue
            raise _fail(path, names, value)

        return conv_union
    if origin is typing.Literal:
        allowed = args

        def conv_literal(value: Any, path: str) -> Any:
            if value in allowed:
                return value
            raise _fail(path, f"one of {list(allowed)!r}", value)

        return conv_literal
    # typing.Sequence[int] and collections.abc.Sequence[int] both have the abc class as origin.
    sequences = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)
    if origin in sequences or tp in (list, tuple, set):
        container = origin or tp
        if container not in (list, tuple, set, frozenset):
            container = list
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = converter_for(args[0])
        elif origin is tuple and args:
            fixed = [converter_for(a) for a in args]

            def conv_fixed_tuple(value: Any, path: str) -> tuple[Any, ...]:
                if not isinstance(value, (list, tuple)) or len(value) != len(fixed):
                    raise _fail(path, f"a list of {len(fixed)} items", value)
                return tuple(
                    c(v, f"{path}[{i}]") for i, (c, v) in enumerate(zip(fixed, value, strict=True))
                )

            return conv_fixed_tuple
        else:
            item = converter_for(args[0]) if args else _conv_any
        build: Callable[[Any], Any] = (
            container if container in (list, tuple, set, frozenset) else list
        )

        def conv_seq(value: Any, path: str) -> Any:
            if not isinstance(value, (list, tuple)):
                raise _fail(path, "a list", value)
            return build(item(v, f"{path}[{i}]") for i, v in enumerate(value))

        return conv_seq
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or tp is dict:
        key_conv = converter_for(args[0]) if args else _conv_any
        val_conv = converter_for(args[1]) if len(args) > 1 else _conv_any

        def conv_dict(value: Any, path: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise _fail(path, "an object", value)
            return {
                key_conv(k, f"{path}.{k}"): val_conv(v, f"{path}.{k}") for k, v in value.items()
            }

        return conv_dict
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp

        def conv_enum(value: Any, path: str) -> Any:
            try:
                return enum_type(value)
            except ValueError:
                pass
            if isinstance(value, str) and value in enum_type.__members__:
                return enum_type.__members__[value]
            allowed = [m.value for m in enum_type]
            raise _fail(path, f"one of {allowed!r}", value)

        return conv_enum
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    if isinstance(tp, type):
        target = tp

        def conv_instance(value: Any, path: str) -> Any:
            if isinstance(value, target):
                return value
            raise _fail(path, target.__name__, value)

        return conv_instance
    return _conv_any


def _dataclass_converter(cls: type) -> Converter:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolved forward references: accept values as they are
        hints = {}
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, converter_for(hints.get(f.name, Any)), required))

    def conv_dataclass(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _fail(path, f"an object for {cls.__name__}", value)
        kwargs = {}
        for name, conv, required in fields:
            if name in value:
                kwargs[name] = conv(value[name], f"{path}.{name}")
            elif required:
                raise InputError(
                    f"input {path!r} is missing field {name!r} of {cls.__name__}",
                    parameter=path.split(".", 1)[0],
                )
        return cls(**kwargs)

    return conv_dataclass


def admits_none(tp: Any) -> bool:
    """Whether an annotation accepts None: none at all, ``Any``, ``object``, ``None`` or an
    optional type (``X | None``, ``Optional[X]``)."""
    if tp in (Any, inspect.Parameter.empty, object, None, _NONE_TYPE):
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return admits_none(typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return any(admits_none(a) for a in typing.get_args(tp))
    return False


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "value" | "task" | "var_keyword"
    convert: Converter
    #: what an absent input key means: "default" (the parameter's), "none", or "fail"
    absent: str


class Binder:
    """Maps a task's input onto a function's parameters, converting to their annotations."""

    def __init__(self, func: Callable[..., Any]) -> None:
        signature = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception:
            hints = {}
        self.params: list[_Param] = []
        self.var_keyword = False
        for p in signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                self.var_keyword = True
                continue
            hint = hints.get(p.name, p.annotation)
            if hint is Task or (isinstance(hint, str) and hint in ("Task", "taskfleet.Task")):
                self.params.append(_Param(p.name, "task", _conv_any, "default"))
                continue
            if p.default is not inspect.Parameter.empty:
                absent = "default"
            else:
                absent = "none" if admits_none(hint) else "fail"
            self.params.append(_Param(p.name, "value", converter_for(hint), absent))
        self.names = {p.name for p in self.params}

    def bind(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        if not isinstance(data, Mapping):
            raise InputError(f"task input must be a JSON object, got {_describe(data)}")
        kwargs: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "task":
                kwargs[p.name] = task
            elif p.name in data:
                kwargs[p.name] = p.convert(data[p.name], p.name)
            elif p.absent == "none":
                kwargs[p.name] = None
            elif p.absent == "fail":
                raise InputError(
                    f"input is missing required parameter {p.name!r}", parameter=p.name
                )
        if self.var_keyword:
            for key, value in data.items():
                if key not in self.names and isinstance(key, str) and key.isidentifier():
                    kwargs[key] = value
        return kwargs
