"""The ``taskfleet`` command: run, try, feed and inspect worker pools from the shell.

Sub-commands (``taskfleet <command> --help`` for each)::

    run MODULE...           run the workers of a module in a supervised pool
    local MODULE --tasks F  run a JSON file of tasks through the workers in-process, no server
    submit TYPE --input J   submit tasks over NATS (``--wait`` for their results)
    results TYPE            print the results of a task type (``--follow`` for new ones)
    nats-server             run the embedded NATS server in the foreground
    status [URL]            a running pool's ``/workers`` as a table
    pause|resume TYPE       stop or restart a task type's polling in a running pool
    scale TYPE --processes  set a task type's processes in a running pool
    config                  every setting and its effective value (secrets redacted)

Exit codes (also in ``docs/cli.md``) are the ``EXIT_*`` constants below. Every expected error
prints one line to stderr, ``taskfleet: <what went wrong>``; the only traceback ever printed is
the one of a user module that raised while being imported, because that is the user's bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import IO, Any, NoReturn

from . import _parsers as parsers
from ._config import Configuration, redact_url
from ._errors import (
    AddressInUseError,
    ConfigurationError,
    SourceError,
    TaskfleetError,
    user_frame,
)
from ._local import LocalTask
from ._task import TaskStatus
from ._worker import Worker, WorkerInterface, as_worker

__all__ = [
    "EXIT_ADDRESS_IN_USE",
    "EXIT_IMPORT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TASKS_FAILED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

#: Everything went as asked.
EXIT_OK = 0
#: At least one task failed (``local``, ``submit --wait``), or no result came within ``--timeout``.
EXIT_TASKS_FAILED = 1
#: Bad usage: unknown option, module or attribute not found, invalid JSON, invalid setting.
EXIT_USAGE = 2
#: A user module raised while being imported (its traceback is printed).
EXIT_IMPORT_FAILED = 3
#: A server is unreachable or a task source failed (NATS, Conductor, the pool's HTTP endpoint).
EXIT_UNAVAILABLE = 4
#: An address the pool must listen on is taken (``TASKFLEET_METRICS_ADDRESS``).
EXIT_ADDRESS_IN_USE = 5
#: Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

PROG = "taskfleet"


class CliError(Exception):
    """An expected failure: ``main`` prints ``message`` as one line and exits with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _usage(message: str) -> CliError:
    return CliError(EXIT_USAGE, message)


# ------------------------------------------------------------------------------------------
# Loading workers from a module
# ------------------------------------------------------------------------------------------


def _module_name_for_path(spec: str) -> str:
    """``examples/quickstart/workers.py`` → an importable dotted name (adjusting ``sys.path``).

    A file under the current directory is imported by its dotted path from there, so worker
    processes find it by the same name; a file elsewhere by its stem, with its folder on the path.
    """
    path = Path(spec).resolve()
    if not path.is_file():
        raise _usage(f"no such file: {spec}")
    try:
        parts = path.with_suffix("").relative_to(Path.cwd().resolve()).parts
    except ValueError:
        parts = ()
    if parts and all(p.isidentifier() for p in parts):
        return ".".join(parts)
    sys.path.insert(0, str(path.parent))
    return path.stem


def _is_missing(exc: ModuleNotFoundError, name: str) -> bool:
    """True when the module asked for (or a parent package of it) does not exist, as opposed
    to the module existing and failing on an import of its own."""
    missing = exc.name or ""
    return name == missing or name.startswith(missing + ".")


def import_user_module(name: str) -> ModuleType:
    """Import ``name`` as ``python -m`` would (the current directory first on ``sys.path``).

    Raises:
        CliError: ``EXIT_USAGE`` when the module does not exist; ``EXIT_IMPORT_FAILED`` (after
            printing the traceback) when its own code raised.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _is_missing(exc, name):
            raise _usage(f"no module named {name!r} (searched from {os.getcwd()})") from None
        return _import_failed(name)
    except ConfigurationError as exc:
        # A worker declared with an invalid option: ours to explain in one line, at the user's
        # line (the innermost frame outside taskfleet), not with the import machinery's frames.
        raise _usage(f"{user_frame(exc.__traceback__)}{exc}") from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _import_failed(name)


def _import_failed(name: str) -> NoReturn:
    traceback.print_exc()
    raise CliError(EXIT_IMPORT_FAILED, f"importing {name!r} failed (traceback above)")


def _workers_in(value: Any, where: str) -> list[Worker]:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return [as_worker(item) for item in items]
    except ConfigurationError:
        raise _usage(f"{where} is not a worker or a list of workers") from None


def load_workers(spec: str) -> list[Worker]:
    """The workers named by ``pkg.module[:attr]`` or ``path/file.py[:attr]``.

    Without ``attr``: every :class:`Worker` (``@worker_task``) and ``WorkerInterface`` instance
    defined at the module's top level, in definition order.

    Raises:
        CliError: the module or attribute does not exist, or holds no workers.
    """
    target, _, attr = spec.partition(":")
    is_path = target.endswith(".py") or os.sep in target
    name = _module_name_for_path(target) if is_path else target
    module = import_user_module(name)
    if attr:
        try:
            value: Any = module
            for part in attr.split("."):
                value = getattr(value, part)
        except AttributeError:
            raise _usage(f"module {name!r} has no attribute {attr!r}") from None
        return _workers_in(value, f"{name}:{attr}")
    found = [
        as_worker(v) for v in vars(module).values() if isinstance(v, (Worker, WorkerInterface))
    ]
    if not found:
        raise _usage(f"module {name!r} defines no workers (@worker_task functions)")
    return found


def load_all_workers(specs: Sequence[str]) -> list[Worker]:
    """The workers of every spec, each task type once.

    Raises:
        CliError: as :func:`load_workers`, or when two modules define the same task type.
    """
    workers: dict[str, Worker] = {}
    for spec in specs:
        for worker in load_workers(spec):
            known = workers.get(worker.task_type)
            if known is not None and known.handler is not worker.handler:
                raise _usage(f"task type {worker.task_type!r} is defined twice")
            workers[worker.task_type] = worker
    return list(workers.values())


# ------------------------------------------------------------------------------------------
# Configuration from the environment and flags
# ------------------------------------------------------------------------------------------

#: Environment variable of each Configuration field.
_ENV_VARS = {f.name: f.metadata["env"] for f in dataclasses.fields(Configuration)}

#: Command-line flags that set a Configuration field: (flag, field, help). Their values are
#: text, parsed and validated exactly like the environment variable they stand for.
CONFIG_FLAGS: list[tuple[str, str, str]] = [
    ("--conductor-url", "conductor_server_url", "Conductor API URL (CONDUCTOR_SERVER_URL)"),
    ("--nats-url", "nats_url", "NATS server URL(s) (NATS_URL); default: embedded server"),
    ("--metrics-address", "metrics_address", "host:port or off (TASKFLEET_METRICS_ADDRESS)"),
    ("--drain-timeout", "drain_timeout", "seconds to drain on SIGTERM (TASKFLEET_DRAIN_TIMEOUT)"),
    ("--state-dir", "state_dir", "spool and embedded server store (TASKFLEET_STATE_DIR)"),
    ("--log-level", "log_level", "debug | info | warning | error (TASKFLEET_LOG_LEVEL)"),
    ("--log-format", "log_format", "text | json (TASKFLEET_LOG_FORMAT)"),
]


def _add_config_flags(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    wanted = set(only) if only is not None else None
    for flag, name, help_text in CONFIG_FLAGS:
        if wanted is None or name in wanted:
            parser.add_argument(flag, dest=f"cfg_{name}", metavar="VALUE", help=help_text)


def _flag_env(args: argparse.Namespace) -> dict[str, str]:
    """The given flags as environment variables, so they are parsed exactly like the env."""
    out = {
        _ENV_VARS[name]: getattr(args, f"cfg_{name}")
        for _, name, _ in CONFIG_FLAGS
        if getattr(args, f"cfg_{name}", None) is not None
    }
    # A flag naming a server picks that source, even when the environment names the other one.
    nats, conductor = "NATS_URL" in out, "CONDUCTOR_SERVER_URL" in out
    if nats != conductor:
        out["TASKFLEET_SOURCE"] = "nats" if nats else "conductor"
    return out


def build_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Configuration:
    """The environment (default ``os.environ``) with the command-line flags on top, validated.

    Raises:
        CliError: ``EXIT_USAGE`` with one line naming the setting (and the flag that set it)
            when a value is invalid.
    """
    given = _flag_env(args)
    try:
        return Configuration.from_env({**(os.environ if env is None else env), **given})
    except ConfigurationError as exc:
        flags = {_ENV_VARS[name]: flag for flag, name, _ in CONFIG_FLAGS}
        named = exc.setting
        if exc.setting in given and exc.setting in flags:
            named += f" (from {flags[exc.setting]})"
        detail = str(exc).removeprefix(f"{exc.setting}: ")
        raise _usage(f"invalid setting {named}: {detail}") from None


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def result_line(
    task_id: str, task_type: str, status: TaskStatus, output: Any, reason: str | None
) -> str:
    """One line per result: id, type, status, then the output JSON or the failure's reason."""
    detail = reason or "" if status.is_failure else _json_text(output)
    return f"{task_id}  {task_type}  {status.value}  {detail}".rstrip()


class Progress:
    """A ``\\r`` counter on stderr when it is a terminal (nothing otherwise): no dependencies."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = total > 1 and self.stream.isatty()
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and (done >= self.total or now - self._last > 0.1):
            self._last = now
            self.stream.write(f"\r{self.label} {done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------
# taskfleet run
# ------------------------------------------------------------------------------------------


def _env_without_worker_overrides(options: Mapping[str, Any]) -> dict[str, str]:
    """``os.environ`` minus the per-worker variables that flags replace: flags win."""
    props = {"threads": "_THREAD_COUNT", "processes": "_PROCESSES"}
    suffixes = tuple(props[name] for name in options)
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("CONDUCTOR_WORKER_") and k.endswith(suffixes))
    }


def cmd_run(args: argparse.Namespace) -> int:
    """Run the modules' workers under a TaskHandler until SIGTERM/SIGINT and a clean drain."""
    from ._supervisor import TaskHandler

    workers = load_all_workers(args.modules)
    options = {k: v for k, v in (("processes", args.processes), ("threads", args.threads)) if v}
    if options:
        workers = [w.with_options(**options) for w in workers]
    config = build_config(args)
    try:
        handler = TaskHandler(workers, config, env=_env_without_worker_overrides(options))
    except ConfigurationError as exc:
        raise _usage(f"invalid setting {exc}") from None
    with handler:
        try:
            handler.start_processes()
        except AddressInUseError as exc:
            raise CliError(EXIT_ADDRESS_IN_USE, str(exc)) from None
        except ConfigurationError as exc:
            raise _usage(f"invalid setting {exc}") from None
        types = ", ".join(w.task_type for w in workers)
        where = f"; status at {handler.metrics_url}/workers" if handler.metrics_url else ""
        _err(f"running {types} ({config.resolved_source}){where}; Ctrl-C drains and stops")
        handler.join_processes()
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# taskfleet local
# ------------------------------------------------------------------------------------------


def _load_json_file(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _usage(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _usage(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def _local_task(path: str, index: int, entry: Any, workers: Mapping[str, Worker]) -> LocalTask:
    where = f"{path}: task {index + 1}"
    if not isinstance(entry, dict):
        raise _usage(f"{where}: expected an object with task_type and input")
    task_type = entry.get("task_type")
    if task_type is None and len(workers) == 1:
        task_type = next(iter(workers))
    if task_type not in workers:
        known = ", ".join(sorted(workers))
        what = "has no task_type" if task_type is None else f"unknown task type {task_type!r}"
        raise _usage(f"{where}: {what} (workers: {known})")
    unknown = sorted(set(entry) - {"task_type", "input", "task_id"})
    if unknown:
        _err(
            f"warning: {where}: unknown key(s) {', '.join(map(repr, unknown))} ignored"
            " (the keys are task_type, input, task_id)"
        )
    data = entry.get("input", {})
    if not isinstance(data, dict):
        raise _usage(f"{where}: input must be a JSON object")
    task_id = entry.get("task_id") or f"task-{index + 1}"
    return LocalTask(str(task_id), str(task_type), data)


def read_tasks(path: str, workers: Sequence[Worker]) -> list[LocalTask]:
    """Parse a tasks file: a JSON list of ``{"task_type", "input", "task_id"?}``.

    Raises:
        CliError: ``EXIT_USAGE`` naming the file (and line:column for bad JSON, the entry for a
            bad task or an unknown task type).
    """
    data = _load_json_file(path)
    if not isinstance(data, list):
        raise _usage(f"{path}: expected a JSON list of tasks")
    by_type = {w.task_type: w for w in workers}
    return [_local_task(path, i, entry, by_type) for i, entry in enumerate(data)]


def cmd_local(args: argparse.Namespace) -> int:
    """Run a tasks file through the workers, no server; exit 1 when any task failed.

    Each outcome is printed as it is final. A handler that crashes its process (a segfault in
    native code) fails the tasks it was running, naming the signal; the others go on.
    """
    from ._local import LocalOutcome, run_local
    from ._logs import configure_logging

    configure_logging(args.log_level, "text")
    workers = load_all_workers([args.module])
    tasks = read_tasks(args.tasks, workers)

    def show(outcome: LocalOutcome) -> None:
        line = result_line(
            outcome.task_id, outcome.task_type, outcome.status, outcome.output, outcome.reason
        )
        print(line, flush=True)

    outcomes = run_local(workers, tasks, max_attempts=args.max_attempts, on_outcome=show)
    failed = sum(o.status.is_failure for o in outcomes.values())
    print(f"{len(tasks)} task(s): {len(tasks) - failed} completed, {failed} failed")
    return EXIT_TASKS_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------------
# taskfleet submit / results
# ------------------------------------------------------------------------------------------


def _json_object_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _usage(f"{flag}: invalid JSON at column {exc.colno}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise _usage(f"{flag}: expected a JSON object like '{{\"x\": 1}}'")
    return value


def _open_client(config: Configuration) -> Any:
    """A TaskClient; its connection warnings stay quiet unless TASKFLEET_LOG_LEVEL asks for
    them, because a failure to connect is reported once, as the command's error line."""
    from ._client import TaskClient
    from ._logs import configure_logging, secrets_of

    if config.resolved_source == "conductor":
        raise _usage(
            "submit and results speak NATS only, and CONDUCTOR_SERVER_URL is set"
            " (Conductor tasks come from workflows started on the Conductor server);"
            " unset it or set TASKFLEET_SOURCE=nats to use a NATS pool"
        )
    level = config.log_level if os.environ.get("TASKFLEET_LOG_LEVEL") else "error"
    configure_logging(level, config.log_format, secrets=secrets_of(config))
    client = TaskClient(config)
    if client.started_server:
        _err(
            f"note: no pool's embedded server was running (state dir {config.state_path}):"
            f" started one at {client.started_server}; tasks wait there until a pool runs"
            " with that state directory"
        )
    return client


def _submit(client: Any, task_type: str, data: dict[str, Any], count: int) -> list[str]:
    progress = Progress("submitted", count)
    ids: list[str] = []
    chunk = 100
    while len(ids) < count:
        n = min(chunk, count - len(ids))
        ids += client.submit_many(task_type, [data] * n)
        progress.update(len(ids))
    progress.finish()
    return ids


def _wait(client: Any, ids: Sequence[str], timeout: float) -> tuple[int, int, str]:
    """Print each result as it comes (in submission order); return (failed, missing, why the
    missing ones are missing)."""
    from ._client import ResultTimeout

    deadline = time.monotonic() + timeout
    progress = Progress("results", len(ids))
    failed = missing = 0
    why = ""
    for done, task_id in enumerate(ids, 1):
        try:
            outcome = client.result(task_id, timeout=max(0.0, deadline - time.monotonic()))
        except ResultTimeout as exc:
            missing = len(ids) - done + 1
            why = exc.why
            break
        failed += not outcome.ok
        print(
            result_line(
                outcome.task_id, outcome.task_type, outcome.status, outcome.output, outcome.reason
            ),
            flush=True,
        )
        progress.update(done)
    progress.finish()
    return failed, missing, why


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit ``--count`` copies of a task; with ``--wait`` print results, exit 1 on failures."""
    data = _json_object_arg(args.input, "--input")
    if args.count < 1:
        raise _usage("--count: expected an integer >= 1")
    config = build_config(args)
    with _open_client(config) as client:
        ids = _submit(client, args.task_type, data, args.count)
        if not args.wait:
            for task_id in ids:
                print(task_id)
            return EXIT_OK
        failed, missing, why = _wait(client, ids, args.timeout)
    if missing:
        _err(f"no result for {missing} task(s) within {args.timeout:g} s: {why}")
    if failed:
        _err(f"{failed} of {len(ids)} task(s) failed")
    return EXIT_TASKS_FAILED if failed or missing else EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    """Print the results of a task type kept in the results stream (``--follow``: new ones)."""
    config = build_config(args)
    idle = None if args.follow else args.idle
    with _open_client(config) as client:
        for outcome in client.results(args.task_type, idle_timeout=idle):
            print(
                result_line(
                    outcome.task_id,
                    outcome.task_type,
                    outcome.status,
                    outcome.output,
                    outcome.reason,
                ),
                flush=True,
            )
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# taskfleet nats-server
# ------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the foreground wait."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _serve_until_stopped(url: str, note: str, alive: Callable[[], bool]) -> None:
    """Print the URL, then wait until Ctrl-C, SIGTERM or the server's death: a clean stop."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        print(url, flush=True)
        _err(note)
        while alive():
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_nats_server(args: argparse.Namespace) -> int:
    """Run a NATS server with JetStream in the foreground until Ctrl-C or SIGTERM.

    Without ``--port`` it is the machine's shared embedded server (the discovery file under the
    state dir), so ``taskfleet run``/``submit`` without ``NATS_URL`` use it; with ``--port`` a
    standalone server on that port, for ``NATS_URL=nats://127.0.0.1:PORT``.
    """
    from ._nats.embedded import servers_for
    from ._nats.server import NatsServer

    config = build_config(args)
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise _usage(f"--port: expected 1-65535, got {args.port}")
        server = NatsServer(config.state_path / f"nats-{args.port}", port=args.port)
        with server.start():
            note = f"nats-server running (store {server.store_dir}); Ctrl-C stops it"
            _serve_until_stopped(server.url, note, lambda: server.running)
        return EXIT_OK
    (url,), lease = servers_for(config.replace(nats_url=""))
    assert lease is not None
    try:
        note = (
            f"embedded nats-server running (state {lease.dir}; clients need the credentials in"
            f" {lease.dir / 'credentials.json'}); Ctrl-C stops it"
        )
        _serve_until_stopped(redact_url(url), note, lambda: True)
    finally:
        lease.release()
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# taskfleet status
# ------------------------------------------------------------------------------------------


def fetch_workers(url: str, token: str = "", timeout: float = 5.0) -> list[dict[str, Any]]:
    """The worker processes of a running pool (``<url>/workers``); see :func:`fetch_pool`."""
    workers: list[dict[str, Any]] = fetch_pool(url, token, timeout)["workers"]
    return workers


def fetch_pool(url: str, token: str = "", timeout: float = 5.0) -> dict[str, Any]:
    """GET ``<url>/workers`` of a running pool: its processes and its result spool.

    Raises:
        CliError: ``EXIT_USAGE`` for a malformed URL, ``EXIT_UNAVAILABLE`` when the pool does not
            answer, refuses the token, or answers with something that is not its JSON.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _usage(f"invalid URL {url!r}: expected http://host:port")
    target = url.rstrip("/") + "/workers"
    request = urllib.request.Request(target, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = " (set TASKFLEET_METRICS_TOKEN or pass --token-file)" if exc.code == 401 else ""
        raise CliError(EXIT_UNAVAILABLE, f"{target}: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(EXIT_UNAVAILABLE, f"cannot reach {target}: {reason}") from None
    except ValueError:
        raise CliError(EXIT_UNAVAILABLE, f"{target}: not a taskfleet pool (no JSON)") from None
    workers = body.get("workers") if isinstance(body, dict) else None
    if not isinstance(workers, list):
        raise CliError(EXIT_UNAVAILABLE, f"{target}: not a taskfleet pool (no workers list)")
    return dict(body)


STATUS_COLUMNS = [
    ("NAME", "name"),
    ("PID", "pid"),
    ("STATE", "state"),
    ("IN-FLIGHT", "in_flight"),
    ("COMPLETED", "completed"),
    ("RESTARTS", "restarts"),
    ("LAST EXIT/ERROR", "last"),
]


def status_table(workers: Sequence[Mapping[str, Any]]) -> str:
    """The workers as an aligned text table, one row per process slot."""
    rows = []
    for w in workers:
        row = {key: "" if w.get(key) is None else str(w.get(key)) for _, key in STATUS_COLUMNS}
        row["last"] = " / ".join(str(w[k]) for k in ("last_exit", "last_error") if w.get(k))
        if w.get("paused"):
            row["state"] += " (paused)"
        rows.append([row[key] for _, key in STATUS_COLUMNS])
    header = [title for title, _ in STATUS_COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def _status_token(args: argparse.Namespace) -> str:
    """The bearer token from ``--token-file`` or ``TASKFLEET_METRICS_TOKEN``, never from argv."""
    if args.token is not None:
        raise _usage(
            "--token is not accepted (other users see command lines):"
            " set TASKFLEET_METRICS_TOKEN or pass --token-file FILE"
        )
    if args.token_file:
        try:
            return Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise _usage(f"--token-file: cannot read {args.token_file}: {exc.strerror}") from None
    return os.environ.get("TASKFLEET_METRICS_TOKEN", "")


def status_url(config: Configuration) -> str:
    """The endpoint a pool with these settings serves (``TASKFLEET_METRICS_ADDRESS``).

    Raises:
        CliError: ``EXIT_USAGE`` when the setting turns the endpoint off.
    """
    bind = config.metrics_bind
    if bind is None:
        raise _usage(
            "TASKFLEET_METRICS_ADDRESS is off, so the pool serves no /workers: pass its URL"
        )
    host, port = bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a pool listening everywhere answers on loopback too
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def queue_lines(queues: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per task type: what waits for it (when the source told) and its processes."""
    lines = []
    for task_type, q in sorted(queues.items()):
        if "depth" in q:
            held = f" (+{q['held']} held by workers)" if q.get("held") else ""
            backlog = f"{q['waiting']} waiting{held}"
        else:
            backlog = "backlog unknown"
        processes = f"{q.get('processes', '?')} process(es)"
        if q.get("min") != q.get("max"):
            processes += f", autoscaling {q.get('min')}-{q.get('max')}"
        paused = "; paused" if q.get("paused") else ""
        lines.append(f"queue {task_type}: {backlog}; {processes}{paused}")
    return lines


def spool_lines(spool: Mapping[str, Any]) -> list[str]:
    """The result spool of a pool: rows waiting, rows given up (with the latest reasons)."""
    if not spool:
        return []
    if "error" in spool:
        return [f"spool: unreadable ({spool['error']})"]
    dead = spool.get("dead") or {}
    given_up = sum(int(n) for n in dead.values())
    lines = [f"spool: {spool.get('waiting', 0)} result(s) waiting, {given_up} given up"]
    if given_up:
        lines[0] += " (" + ", ".join(f"{t}: {n}" for t, n in sorted(dead.items())) + ")"
    for row in spool.get("recent_dead") or []:
        lines.append(
            f"  {row.get('task_id', '?')}  {row.get('task_type', '?')}  {row.get('reason', '')}"
        )
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """Print a running pool's worker processes as a table, then its result spool."""
    url = args.url or status_url(Configuration.from_env())
    pool = fetch_pool(url, _status_token(args), args.timeout)
    print(status_table(pool["workers"]))
    for line in queue_lines(pool.get("queues") or {}) + spool_lines(pool.get("spool") or {}):
        print(line)
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# taskfleet config
# ------------------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    """Print every setting's effective value (secrets redacted) and where it came from."""
    config = build_config(args)
    values = config.describe()
    given = {**os.environ, **_flag_env(args)}
    if args.json:
        print(json.dumps(values, indent=1, default=str))
        return EXIT_OK
    fields = dataclasses.fields(Configuration)
    width = max(len(f.metadata["env"]) for f in fields)
    for f in fields:
        env = f.metadata["env"]
        origin = "set" if given.get(env) else "default"
        print(f"{env.ljust(width)}  {_json_text(values[f.name])}  ({origin})")
    print(f"\nsource: {config.resolved_source}" + (" (embedded)" if config.embedded_nats else ""))
    print(f"state dir: {config.state_path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# The parser and main
# ------------------------------------------------------------------------------------------

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    ok
  {EXIT_TASKS_FAILED}    task(s) failed, or no result in time (local, submit --wait)
  {EXIT_USAGE}    usage error: bad option, unknown module, invalid JSON, invalid setting,
       unknown task type (pause, resume, scale)
  {EXIT_IMPORT_FAILED}    a user module raised while being imported (traceback printed)
  {EXIT_UNAVAILABLE}    server unreachable or task source error; a pool that does not answer,
       refuses the token, or is not running (status, pause, resume, scale)
  {EXIT_ADDRESS_IN_USE}    the metrics address is in use (another pool?)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""


def _subparser(
    subs: Any, name: str, handler: Callable[[argparse.Namespace], int], summary: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subs.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{handler.__doc__ or ''}".strip(),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


_positive_int = parsers.integer(1).argument


def _add_run(subs: Any) -> None:
    p = _subparser(subs, "run", cmd_run, "run the workers of modules in a supervised pool")
    p.add_argument(
        "modules",
        nargs="+",
        metavar="MODULE[:ATTR]",
        help="pkg.module or path/file.py; :attr names a worker or a list of workers",
    )
    p.add_argument(
        "--processes",
        type=parsers.PROCESSES.argument,
        metavar="N|MIN-MAX",
        help="processes per worker; a range autoscales on the backlog",
    )
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads per process")
    _add_config_flags(p)


def _add_local(subs: Any) -> None:
    p = _subparser(subs, "local", cmd_local, "run a JSON file of tasks in-process, no server")
    p.add_argument("module", metavar="MODULE[:ATTR]", help="pkg.module or path/file.py")
    p.add_argument(
        "--tasks",
        required=True,
        metavar="FILE",
        help='JSON list of {"task_type": ..., "input": {...}} (task_type optional for one worker)',
    )
    p.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=1,
        metavar="N",
        help="attempts per task before it counts as failed (default 1)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of taskfleet's own logs (default warning)",
    )


def _add_submit(subs: Any) -> None:
    p = _subparser(subs, "submit", cmd_submit, "submit tasks to a NATS pool")
    p.add_argument("task_type", metavar="TASK_TYPE")
    p.add_argument("--input", default="{}", metavar="JSON", help="the task input (a JSON object)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="submit N copies")
    p.add_argument("--wait", action="store_true", help="wait for the results and print them")
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="--wait: seconds (default 60)"
    )
    _add_config_flags(p, ["nats_url", "state_dir"])


def _add_results(subs: Any) -> None:
    p = _subparser(subs, "results", cmd_results, "print the results of a task type (NATS)")
    p.add_argument("task_type", metavar="TASK_TYPE")
    p.add_argument("--follow", action="store_true", help="keep printing new results until Ctrl-C")
    p.add_argument(
        "--idle",
        type=float,
        default=2.0,
        metavar="S",
        help="without --follow: stop after S seconds without a new result (default 2)",
    )
    _add_config_flags(p, ["nats_url", "state_dir"])


def _add_nats_server(subs: Any) -> None:
    p = _subparser(subs, "nats-server", cmd_nats_server, "run a NATS server in the foreground")
    p.add_argument("--port", type=int, metavar="PORT", help="standalone server on this port")
    _add_config_flags(p, ["state_dir"])


def _add_status(subs: Any) -> None:
    p = _subparser(subs, "status", cmd_status, "show a running pool's worker processes")
    p.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="the pool's HTTP endpoint (default: from TASKFLEET_METRICS_ADDRESS,"
        " http://127.0.0.1:9464 when unset)",
    )
    add_token_flags(p, timeout=5.0)


def add_token_flags(p: argparse.ArgumentParser, timeout: float) -> None:
    """``--token-file`` (``--token`` refused) and ``--timeout``: for commands that call a pool."""
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token (default: TASKFLEET_METRICS_TOKEN)",
    )
    p.add_argument("--token", help=argparse.SUPPRESS)  # refused: argv is visible in ps
    p.add_argument(
        "--timeout", type=float, default=timeout, metavar="S", help=f"seconds (default {timeout:g})"
    )


def _add_config(subs: Any) -> None:
    p = _subparser(subs, "config", cmd_config, "print every setting and its effective value")
    p.add_argument("--json", action="store_true", help="print the settings as one JSON object")
    _add_config_flags(p)


class _Version(argparse.Action):
    """``--version``: the version is read from package metadata only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import taskfleet

        print(f"{PROG} {taskfleet.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``taskfleet`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Conductor-style worker pools: run, try and feed workers from the shell.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_run, _add_local, _add_submit, _add_results, _add_nats_server):
        add(subs)
    _add_status(subs)
    from ._operate import add_commands

    add_commands(subs, _subparser)
    _add_config(subs)
    return parser


def _exit_code_for(exc: TaskfleetError) -> int:
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    return EXIT_UNAVAILABLE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskfleet`` command; returns the exit code.

    Expected errors become one line on stderr and their ``EXIT_*`` code; only a user module that
    raised while being imported gets a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as exc:
        _err(exc.message)
        return exc.code
    except AddressInUseError as exc:
        _err(str(exc))
        return EXIT_ADDRESS_IN_USE
    except ConfigurationError as exc:
        _err(f"invalid setting {exc}")
        return EXIT_USAGE
    except (SourceError, TaskfleetError) as exc:
        _err(str(exc))
        return _exit_code_for(exc)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
