"""Native handlers: call C and C++ shared libraries through ctypes.

    LIB = NativeLibrary("examples/native/build/libchecksum.so", env_var="CHECKSUM_LIB")
    crc32 = LIB.function("tf_crc32", ["buffer+len"], "uint32")
    crc32(b"hello")                      # loads the library in this process on the first call

* A :class:`NativeLibrary` is a recipe, not a handle: nothing is loaded at import or at
  construction. The first call in a process loads the library (again in a forked child, whose
  pid differs), and a library pickles as its path, so worker definitions travel to worker
  processes and each child opens its own handle.
* Functions are declared once with names from :data:`ARG_TYPES` and :data:`RETURN_TYPES`
  (plain ctypes scalar types are accepted too). ``"buffer+len"`` and ``"out+len"`` take one
  Python argument and pass two C arguments: the pointer and its length in bytes.
* Buffers are passed without copying: ``bytes`` as a const pointer to their own storage, and any
  writable buffer (``bytearray``, a ``memoryview`` of one, ``array.array``, a NumPy array) by
  borrowing its memory. Read-only buffers other than ``bytes`` are copied once, since ctypes can
  only borrow writable memory.
* Libraries are opened with :class:`ctypes.CDLL`, which releases the GIL during every call, so
  ``threads=N`` runs native code in parallel inside one worker process.
* A function declared with ``"status"`` returns ``int``: 0 is success, anything else raises
  :class:`NativeCallError` (a :class:`~taskfleet._errors.TaskError`, so the task fails with a reason
  naming the function, the code and the library's message). With ``error_buffer=N`` the call
  appends a ``char *err, size_t errlen`` pair that the library fills with its message.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import inspect
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from ._errors import NonRetryableError, TaskError, TaskfleetError
from ._worker import Worker, worker_task

__all__ = [
    "ARG_TYPES",
    "RETURN_TYPES",
    "NativeCallError",
    "NativeFunction",
    "NativeLibrary",
    "NativeLibraryError",
    "TerminalNativeCallError",
    "native_worker",
    "output_buffer",
]

#: Scalar type names shared by arguments and return values.
_SCALARS: dict[str, Any] = {
    "int": ctypes.c_int,
    "int32": ctypes.c_int32,
    "int64": ctypes.c_int64,
    "uint32": ctypes.c_uint32,
    "uint64": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "ssize_t": ctypes.c_ssize_t,
    "double": ctypes.c_double,
    "float": ctypes.c_float,
    "bool": ctypes.c_bool,
}

#: Argument type names: the scalars, plus
#: ``str`` (``const char *``, str encoded as UTF-8, bytes as they are, None as NULL),
#: ``buffer`` (``const void *`` to any buffer), ``buffer+len`` (pointer and ``size_t`` length),
#: ``out`` (``void *`` to a writable buffer) and ``out+len`` (pointer and ``size_t`` length).
ARG_TYPES = frozenset([*_SCALARS, "str", "buffer", "buffer+len", "out", "out+len"])

#: Return type names: the scalars, plus ``void``, ``str`` / ``bytes`` (a NUL-terminated
#: ``const char *`` owned by the library, copied), and ``status`` (int, 0 = success).
RETURN_TYPES = frozenset([*_SCALARS, "void", "str", "bytes", "status"])

ArgType: TypeAlias = str | type
ErrCheck = Callable[[Any, "NativeFunction", tuple[Any, ...]], Any]

#: One lock per process: a lock inherited through fork may be held by a thread that does not
#: exist in the child, so each pid gets a fresh one (setdefault is atomic under the GIL).
_LOAD_LOCKS: dict[int, threading.Lock] = {}


class NativeLibraryError(TaskfleetError, OSError):
    """A shared library could not be loaded or lacks a declared function.

    The message names the path tried (and the env var it came from) and the loader's own words
    (``dlerror``), e.g. ``cannot open shared object file: No such file or directory``.
    """


class NativeCallError(TaskError):
    """A ``"status"`` function returned a non-zero code. Fails the task (retryable).

    Attributes:
        function: the C function's name.
        code: the status code it returned.
        detail: the message it wrote into the error buffer ("" without one).
    """

    def __init__(self, function: str, code: int, detail: str, *, non_retryable: bool = False):
        reason = f"{function} failed with code {code}" + (f": {detail}" if detail else "")
        TaskError.__init__(self, reason, non_retryable=non_retryable)
        self.function = function
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.function, self.code, self.detail))


class TerminalNativeCallError(NativeCallError, NonRetryableError):
    """A non-zero code that retrying cannot fix (declared ``non_retryable`` or in ``terminal``)."""

    def __init__(self, function: str, code: int, detail: str) -> None:
        NativeCallError.__init__(self, function, code, detail, non_retryable=True)


def output_buffer(size: int) -> bytearray:
    """A zero-filled writable buffer of ``size`` bytes to pass as an ``out`` argument."""
    if size < 0:
        raise ValueError(f"output buffer size must be >= 0, got {size}")
    return bytearray(size)


class NativeLibrary:
    """A shared library, loaded lazily in each process that calls into it.

    Args:
        path_or_name: a path (``str`` or ``Path``; relative paths are made absolute now, so a
            child started elsewhere finds the same file), or a bare name such as ``"m"``,
            looked up like the system linker does (``ctypes.util.find_library``).
        env_var: an environment variable that, when set at load time, overrides the path.
            Lets deployments put the ``.so`` anywhere without changing code.
    """

    def __init__(self, path_or_name: str | os.PathLike[str], *, env_var: str | None = None):
        spec = os.fspath(path_or_name)
        if not spec:
            raise ValueError("NativeLibrary needs a path or a library name")
        self.spec = str(Path(spec).absolute()) if os.sep in spec else spec
        self.env_var = env_var
        self._loaded: tuple[int, ctypes.CDLL] | None = None

    def __repr__(self) -> str:
        env = f", env_var={self.env_var!r}" if self.env_var else ""
        return f"NativeLibrary({self.spec!r}{env})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The handle is per process: a pickled library is its recipe, reopened where it lands.
        return (_rebuild_library, (self.spec, self.env_var))

    @property
    def path(self) -> str:
        """What will be (or was) opened in this process: the env var's value, if set, else the
        path or the name as resolved by the system's library search."""
        if self.env_var and os.environ.get(self.env_var):
            return os.environ[self.env_var]
        if os.sep in self.spec or ".so" in self.spec:
            return self.spec
        return ctypes.util.find_library(self.spec) or f"lib{self.spec}.so"

    @property
    def loaded(self) -> bool:
        """Whether this process has opened the library."""
        return self._loaded is not None and self._loaded[0] == os.getpid()

    def handle(self) -> ctypes.CDLL:
        """The library's handle in this process, opening it on first use.

        Raises:
            NativeLibraryError: naming the path and the loader's error.
        """
        pid = os.getpid()
        loaded = self._loaded
        if loaded is not None and loaded[0] == pid:
            return loaded[1]
        with _LOAD_LOCKS.setdefault(pid, threading.Lock()):
            loaded = self._loaded
            if loaded is not None and loaded[0] == pid:
                return loaded[1]
            from_env = bool(self.env_var and os.environ.get(self.env_var))
            path = self.path
            try:
                cdll = ctypes.CDLL(path)
            except OSError as exc:  # exc carries dlerror(): what the loader found wrong
                origin = f" (from ${self.env_var})" if from_env else ""
                raise NativeLibraryError(
                    f"cannot load native library {path!r}{origin}: {exc}"
                ) from None
            self._loaded = (pid, cdll)
            return cdll

    def function(
        self,
        name: str,
        argtypes: Sequence[ArgType] = (),
        restype: ArgType | None = "void",
        *,
        error_buffer: int = 0,
        non_retryable: bool = False,
        terminal: Collection[int] = (),
        errcheck: ErrCheck | None = None,
    ) -> NativeFunction:
        """Declare the C function ``name``; see :class:`NativeFunction`."""
        return NativeFunction(
            self,
            name,
            argtypes,
            restype,
            error_buffer=error_buffer,
            non_retryable=non_retryable,
            terminal=terminal,
            errcheck=errcheck,
        )


def _rebuild_library(spec: str, env_var: str | None) -> NativeLibrary:
    return NativeLibrary(spec, env_var=env_var)


# --------------------------------------------------------------------------------------------
# Argument conversion
# --------------------------------------------------------------------------------------------


def _readable(value: Any) -> tuple[Any, int]:
    """A pointer-compatible object for a read-only buffer argument, and its size in bytes."""
    if isinstance(value, bytes):
        # ctypes passes a bytes object as a pointer to its own storage: no copy.
        return value, len(value)
    view = _contiguous(value)
    if view.readonly:
        # ctypes can only borrow writable memory; a read-only buffer is copied once.
        return (ctypes.c_char * view.nbytes).from_buffer_copy(view), view.nbytes
    return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes


def _writable(value: Any) -> tuple[Any, int]:
    """A pointer into a writable buffer (borrowed, never copied) and its size in bytes."""
    view = _contiguous(value)
    if view.readonly:
        raise TypeError(
            f"an output buffer must be writable (bytearray, memoryview of one, array, "
            f"NumPy array), got read-only {type(value).__name__}"
        )
    return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes


def _contiguous(value: Any) -> memoryview:
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            f"expected bytes or an object with the buffer protocol, got {type(value).__name__}"
        ) from None
    if not view.c_contiguous:
        raise TypeError("buffers must be C-contiguous")
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _as_str(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        if "\0" in value:
            raise TypeError("a string passed to C cannot contain NUL characters")
        return value.encode("utf-8")
    raise TypeError(f"expected str, bytes or None, got {type(value).__name__}")


#: For each argument type name: (C argument types, converter to a list of C values).
def _arg_plan(argtype: ArgType) -> tuple[list[Any], Callable[[Any], list[Any]]]:
    if isinstance(argtype, type):  # a ctypes type, passed through
        return [argtype], lambda v: [v]
    if argtype in _SCALARS:
        return [_SCALARS[argtype]], lambda v: [v]
    if argtype == "str":
        return [ctypes.c_char_p], lambda v: [_as_str(v)]
    if argtype in ("buffer", "out"):
        convert = _readable if argtype == "buffer" else _writable
        return [ctypes.c_void_p], lambda v: [convert(v)[0]]
    if argtype in ("buffer+len", "out+len"):
        convert = _readable if argtype == "buffer+len" else _writable
        return [ctypes.c_void_p, ctypes.c_size_t], lambda v: list(convert(v))
    raise ValueError(f"unknown argument type {argtype!r}; expected one of {sorted(ARG_TYPES)}")


def _restype(restype: ArgType | None) -> Any:
    if restype is None or restype == "void":
        return None
    if isinstance(restype, type):
        return restype
    if restype in _SCALARS:
        return _SCALARS[restype]
    if restype in ("str", "bytes"):
        return ctypes.c_char_p
    if restype == "status":
        return ctypes.c_int
    raise ValueError(f"unknown return type {restype!r}; expected one of {sorted(RETURN_TYPES)}")


class NativeFunction:
    """A declared C function of a :class:`NativeLibrary`; call it with Python values.

    Args:
        library: the library holding it.
        name: the exported symbol (``extern "C"`` for C++).
        argtypes: one entry per Python argument, from :data:`ARG_TYPES` or ctypes scalar types.
        restype: from :data:`RETURN_TYPES`, a ctypes scalar type, or None for ``void``.
        error_buffer: with ``"status"``, the size of a ``char *err, size_t errlen`` pair
            appended to every call, into which the library writes its message (0: none).
        non_retryable: every non-zero status fails the task terminally.
        terminal: status codes that fail the task terminally (others are retryable).
        errcheck: called as ``errcheck(result, function, args)`` after the built-in handling;
            its return value is the call's result, and it may raise.

    Calling raises :class:`NativeLibraryError` when the library or the symbol is missing,
    :class:`NativeCallError` for a non-zero status, and :class:`TypeError` for an argument that
    does not fit its declared type.
    """

    def __init__(
        self,
        library: NativeLibrary,
        name: str,
        argtypes: Sequence[ArgType] = (),
        restype: ArgType | None = "void",
        *,
        error_buffer: int = 0,
        non_retryable: bool = False,
        terminal: Collection[int] = (),
        errcheck: ErrCheck | None = None,
    ) -> None:
        if error_buffer and restype != "status":
            raise ValueError(f"{name}: error_buffer needs restype 'status'")
        self.library = library
        self.name = name
        self.argtypes = tuple(argtypes)
        self.restype = restype
        self.error_buffer = error_buffer
        self.non_retryable = non_retryable
        self.terminal = frozenset(terminal)
        self.errcheck = errcheck
        # Resolved now, so a typo in a declaration fails at import rather than in a task.
        plans = [_arg_plan(t) for t in self.argtypes]
        self._converters = [convert for _, convert in plans]
        self._c_argtypes = [c for ctypes_list, _ in plans for c in ctypes_list]
        if error_buffer:
            self._c_argtypes += [ctypes.c_char_p, ctypes.c_size_t]
        self._c_restype = _restype(restype)
        self._bound: tuple[int, Any] | None = None

    def __repr__(self) -> str:
        return f"<native {self.name} of {self.library.spec}>"

    def __reduce__(self) -> tuple[Any, ...]:
        options = {
            "error_buffer": self.error_buffer,
            "non_retryable": self.non_retryable,
            "terminal": tuple(self.terminal),
            "errcheck": self.errcheck,
        }
        return (_rebuild_function, (self.library, self.name, self.argtypes, self.restype, options))

    def _cfunc(self) -> Any:
        pid = os.getpid()
        bound = self._bound
        if bound is not None and bound[0] == pid:
            return bound[1]
        cdll = self.library.handle()
        try:
            # Item access returns a fresh function object: declarations of the same symbol
            # elsewhere cannot overwrite this one's argtypes (attribute access would share one).
            cfunc = cdll[self.name]
        except AttributeError as exc:
            raise NativeLibraryError(
                f"native library {self.library.path!r} has no function {self.name!r}: {exc}"
            ) from None
        cfunc.argtypes = self._c_argtypes
        cfunc.restype = self._c_restype
        self._bound = (pid, cfunc)
        return cfunc

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self._converters):
            raise TypeError(f"{self.name} takes {len(self._converters)} arguments, got {len(args)}")
        c_args: list[Any] = []
        for position, (convert, value) in enumerate(zip(self._converters, args, strict=True)):
            try:
                c_args += convert(value)
            except TypeError as exc:
                raise TypeError(f"{self.name} argument {position + 1}: {exc}") from None
        err = None
        if self.error_buffer:
            err = ctypes.create_string_buffer(self.error_buffer)
            c_args += [err, self.error_buffer]
        cfunc = self._cfunc()
        try:
            result = cfunc(*c_args)  # CDLL: the GIL is released for the duration of the call
        except ctypes.ArgumentError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        if self.restype == "status":
            if result != 0:
                detail = err.value.decode("utf-8", "replace") if err is not None else ""
                terminal = self.non_retryable or result in self.terminal
                cls = TerminalNativeCallError if terminal else NativeCallError
                raise cls(self.name, result, detail)
            result = None
        elif self.restype == "str" and result is not None:
            result = result.decode("utf-8", "replace")
        if self.errcheck is not None:
            result = self.errcheck(result, self, args)
        return result


def _rebuild_function(
    library: NativeLibrary,
    name: str,
    argtypes: Sequence[ArgType],
    restype: ArgType | None,
    options: dict[str, Any],
) -> NativeFunction:
    return NativeFunction(library, name, argtypes, restype, **options)


# --------------------------------------------------------------------------------------------
# Workers made of one native function
# --------------------------------------------------------------------------------------------

#: The Python type a task input is converted to for each argument type (worker.py's binder
#: decodes ``bytes`` from base64 strings, as JSON carries no bytes).
_INPUT_TYPES: dict[str, type] = {
    **dict.fromkeys(["int", "int32", "int64", "uint32", "uint64", "size_t", "ssize_t"], int),
    "double": float,
    "float": float,
    "bool": bool,
    "str": str,
    "buffer": bytes,
    "buffer+len": bytes,
}


class NativeHandler:
    """The handler of a :func:`native_worker`: task input in, one native call, output out.

    Its signature (one keyword parameter per input, annotated with the Python type) is what
    taskfleet's binder reads, so inputs are checked and converted like any handler's.
    """

    def __init__(
        self, function: NativeFunction, inputs: Sequence[tuple[str, type]], output: str | None
    ) -> None:
        self.function = function
        self.inputs = tuple(inputs)
        self.output = output
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=t) for n, t in inputs]
        )
        self.__annotations__ = dict(inputs)

    def __call__(self, **kwargs: Any) -> dict[str, Any]:
        value = self.function(*(kwargs[name] for name, _ in self.inputs))
        if self.output is None or value is None:
            return {}
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        return {self.output: value}

    def __repr__(self) -> str:
        return f"NativeHandler({self.function!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (NativeHandler, (self.function, self.inputs, self.output))


def native_worker(
    task_type: str,
    function: NativeFunction,
    *,
    inputs: Sequence[str] | Mapping[str, type],
    output: str | None = "result",
    **options: Any,
) -> Worker:
    """A worker whose handler is one native call.

    Args:
        task_type: the task type it serves.
        function: a declared :class:`NativeFunction`; ``out`` arguments are not supported here
            (their size is the handler's decision: write a Python handler for those).
        inputs: the task input names, in the order of the function's arguments. A mapping
            gives each one's Python type; a sequence infers it from the declared argument type
            (buffers are ``bytes``, sent base64-encoded in JSON input).
        output: the output key for the return value (``bytes`` results are base64-encoded);
            None for no output.
        options: worker options, as for :func:`~taskfleet.worker_task` (``threads``,
            ``processes``, ``time_limit``...).

    The worker pickles by value (library path, declaration, input names), so it can be defined
    anywhere and still reach worker processes.

    Raises:
        ValueError: when the inputs do not match the function's arguments.
    """
    names = list(inputs)
    if len(names) != len(function.argtypes):
        raise ValueError(
            f"{task_type}: {function.name} takes {len(function.argtypes)} arguments, "
            f"got inputs {names}"
        )
    typed: list[tuple[str, type]] = []
    for name, argtype in zip(names, function.argtypes, strict=True):
        if isinstance(inputs, Mapping):
            typed.append((name, inputs[name]))
        elif isinstance(argtype, str) and argtype in _INPUT_TYPES:
            typed.append((name, _INPUT_TYPES[argtype]))
        else:
            raise ValueError(
                f"{task_type}: input {name!r} has argument type {argtype!r}, which a native "
                "worker cannot fill from task input; write a Python handler instead"
            )
    # A native call releases the GIL: its slot threads run such calls in parallel, which a
    # call on the event loop would not (docs/workers.md, "Plain def handlers").
    options.setdefault("cheap_on_loop", False)
    return worker_task(task_type, **options)(NativeHandler(function, typed, output))
