"""``TaskHandler``: the supervisor of a pool of worker processes.

It starts one process per worker definition (``processes=N`` for more), and keeps the design's
promises on their behalf, because it knows what each of them is doing (the in-flight ledger
each process writes, ``ledger.py``, the one record of the tasks it holds; and the control
channel's heartbeats):

- a process that dies (segfault in a ``.so``, ``os._exit``, OOM kill, kill -9) has its in-flight
  tasks reported FAILED at once, naming the signal, and is restarted with backoff;
- a task past its ``time_limit`` gets its process killed (SIGTERM, grace, SIGKILL), is reported as
  timed out (retryable ``FAILED``), and the process is replaced;
- a process whose loop stops sending heartbeats is treated as wedged: killed, reported, restarted;
- leases of long tasks are extended from here, so a handler holding the GIL cannot starve them;
- SIGTERM/SIGINT drains: children stop polling and finish within ``drain_timeout``; what is left
  is handed back (re-queued at once without using up a retry); a second signal stops at once.

Each process runs in a slot (``_slots.py``: its states, its current process's record and the
restart policy); a process's body is ``_child.py``. What is due when (time limits, lease
extensions, silent processes, the end of a drain) is decided in ``_deadlines.py``; the monitor
applies it.

The supervisor's threads: the caller's (start/join/stop), the monitor (reads every child's pipe and
sentinel, acts on deadlines), the source agent (its own event loop), and the HTTP endpoint.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import pickle
import random
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from . import _metrics as metrics
from . import _tracing
from ._agent import SourceAgent
from ._child import EXIT_START_FAILED, ChildRecipe, child_main
from ._config import Configuration, MetricsSettings
from ._control import HEARTBEAT, HELLO, LEAVING, PAUSE, RESUME, STOP, watch_process
from ._deadlines import HandBack, check_run, drain_over, lease_every, retire_over, task_deadline
from ._errors import ConfigurationError
from ._hookrun import HookRunner
from ._ledger import Ledger, ledger_dir, unpack_task
from ._operate import Requests, process_range
from ._options import options_from_env, unread_worker_variables
from ._runner import time_limit_result
from ._scaling import Autoscaler, QueueDepths
from ._scratch import ScratchDir
from ._slots import InFlight, Run, Slot, State
from ._sources import create_source
from ._sources.base import HANDED_BACK, WorkerBinding
from ._spool import Spool
from ._task import Task, TaskStatus
from ._worker import Worker, as_worker, declared_workers

__all__ = ["TaskHandler"]

log = logging.getLogger("taskfleet.supervisor")

#: How often the monitor wakes when nothing happens (deadlines, leases, restarts).
TICK = 0.1
#: Ticks in a row that may fail (each logged) before the monitor gives up and stops the pool.
MONITOR_FAILURES = 50
WORKER_PAUSED = "taskfleet_worker_paused"


def _end_of(run: Run) -> Any:
    """What becomes readable when the process of ``run`` ends: its pidfd, else its sentinel
    (under the fork server, that one also turns readable when the fork server dies)."""
    return run.watch if run.watch is not None else run.process.sentinel


def _ended(run: Run) -> bool:
    """Whether the process of ``run`` has ended."""
    if run.watch is not None:
        return bool(wait([run.watch], 0))
    return not run.process.is_alive()


def _given(worker: Worker, workers: list[Worker]) -> bool:
    """Whether ``worker`` is among ``workers`` (a script's ``__main__`` module imported again
    under its own name declares its workers twice)."""
    return any(
        w.task_type == worker.task_type
        and getattr(w, "__qualname__", None) == getattr(worker, "__qualname__", None)
        for w in workers
    )


class TaskHandler:
    """Run ``workers`` in a supervised pool of processes.

    ``with TaskHandler(workers) as handler: handler.start_processes(); handler.join_processes()``

    Args:
        workers: ``@worker_task`` functions, :class:`Worker` or ``WorkerInterface`` objects.
        configuration: settings (default: :meth:`Configuration.from_env`).
        metrics_settings: where and how often to write the metrics file (as the Conductor SDK's
            ``MetricsSettings``; else ``TASKFLEET_METRICS_TEXTFILE``).
        scan_for_annotated_workers: also run every ``@worker_task`` declared in this process.
        import_modules: modules to import first (where those workers are declared).
        hooks: objects with optional ``before_``/``after_`` poll, execute and report methods,
            sent to every worker process (they must be picklable).
        install_signal_handlers: drain on SIGTERM/SIGINT (only possible from the main thread).

    Raises:
        ConfigurationError: at construction, naming the setting, when workers or settings are invalid.
    """

    def __init__(
        self,
        workers: Iterable[Any] = (),
        configuration: Configuration | None = None,
        metrics_settings: MetricsSettings | None = None,
        scan_for_annotated_workers: bool = False,
        import_modules: Sequence[str] = (),
        *,
        hooks: Sequence[Any] = (),
        install_signal_handlers: bool = True,
        env: dict[str, str] | None = None,
        **unknown: Any,
    ) -> None:
        _refuse_arguments(unknown)
        self.config = (configuration or Configuration.from_env(env)).validate()
        if metrics_settings is not None:
            self.config = metrics_settings.apply(self.config)
        environ = os.environ if env is None else env
        self.workers = [as_worker(w) for w in workers]
        declared = declared_workers(import_modules)
        if scan_for_annotated_workers:
            self.workers += [w for w in declared if not _given(w, self.workers)]
        if not self.workers:
            raise ConfigurationError(
                "workers",
                "no workers given: pass @worker_task functions or WorkerInterface objects, or"
                " scan_for_annotated_workers=True to run every @worker_task declared",
            )
        seen: set[str] = set()
        self._children: list[Slot] = []
        for worker in self.workers:
            if worker.task_type in seen:
                raise ConfigurationError(
                    "workers", f"task type {worker.task_type!r} is defined twice"
                )
            seen.add(worker.task_type)
            options = options_from_env(worker.task_type, worker.options, environ).validate(
                worker.task_type
            )
            for index in range(options.process_range[0]):
                self._children.append(Slot(worker, options, index))
        #: logged once, at start-up
        self._unread_variables = unread_worker_variables(environ, seen)
        self.hooks = tuple(hooks)
        self._install_signals = install_signal_handlers
        self._ctx = multiprocessing.get_context(self.config.resolved_start_method)
        self._lock = threading.RLock()
        self._started = False
        self._stopping = False
        self._stop_now = False
        self._drain_deadline: float | None = None
        self._done = threading.Event()
        self._monitor: threading.Thread | None = None
        self._agent: SourceAgent | None = None
        self._spool: Spool | None = None
        self._metrics_dir: str | None = None
        self._ledger_dir: str | None = None
        #: the directories above, held (removed at stop; a later pool removes them after -9)
        self._scratch: list[ScratchDir] = []
        self._spawns = 0
        self._root_logging = True
        self._child_config = self.config
        self._http: Any = None
        self._textfile: Any = None
        if self.config.metrics_textfile:
            from ._admin import Textfile

            self._textfile = Textfile(
                self.config.metrics_textfile, self.config.metrics_textfile_interval
            )
        self._old_handlers: dict[int, Any] = {}
        self._last_tick = time.monotonic()
        self._next_flush = 0.0
        self._depths: QueueDepths | None = None
        self._autoscalers: dict[str, Autoscaler] = {}
        #: pause, resume and scale asked for on other threads (docs/workers.md, Runtime control)
        self._requests = Requests()

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> TaskHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_processes()

    # -- public API ---------------------------------------------------------------------------

    @property
    def metrics_url(self) -> str | None:
        """Base URL of the HTTP endpoint once started (None when disabled)."""
        return None if self._http is None else self._http.url

    def start_processes(self) -> None:
        """Provision the source, start every worker process, the monitor and the HTTP endpoint.

        Raises:
            ConfigurationError: a worker cannot be sent to a process, or a setting is unusable.
            SourceError: the source cannot be reached or provisioned at start-up.
        """
        with self._lock:
            if self._started:
                return
            self._started = True
        from ._logs import root_configured

        # An application that set up the root logger keeps it, in worker processes too.
        self._root_logging = not root_configured()
        if not logging.getLogger("taskfleet").handlers:
            # Leave an application's own logging set-up alone; otherwise log like the workers.
            from ._logs import configure_logging, secrets_of

            configure_logging(
                self.config.log_level, self.config.log_format, secrets=secrets_of(self.config)
            )
        for warning in self._unread_variables:
            log.warning("%s", warning)
        try:
            self._check_picklable()
            _tracing.configure(self.config)  # spans for the outcomes it reports (docs/tracing.md)
            self._scratch.append(ScratchDir("metrics"))
            self._metrics_dir = self._scratch[-1].path
            metrics.setup(self._metrics_dir)
            self._scratch.append(ScratchDir("ledger", ledger_dir()))
            self._ledger_dir = self._scratch[-1].path
            self._bind_http()  # first: an address in use fails start-up before anything runs
            self._start_source()
            self._preload()
            if self._http is not None:
                self._http.start()
            now = time.monotonic()
            for child in self._children:
                self._spawn(child, now)
        except BaseException:
            # Nothing half-started survives a failed start: stop what did start, then re-raise.
            self._kill_all("start-up failed")
            for child in self._children:
                if child.run.process is not None:
                    child.run.process.join(5)
            self._cleanup()
            self._started = False
            self._done.set()
            raise
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="taskfleet-monitor", daemon=True
        )
        self._monitor.start()
        _run_on_after_main(self)
        if self._install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        log.info(
            "started %d worker process(es) for %s on %s",
            len(self._children),
            ", ".join(sorted({c.task_type for c in self._children})),
            self._agent.source.spool_key() if self._agent else "",
        )

    def join_processes(self, timeout: float | None = None) -> bool:
        """Block until the pool has stopped (after a signal or :meth:`stop_processes`).

        Returns False when ``timeout`` passed first.
        """
        if not self._started:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # Short waits keep the main thread responsive to signals.
            self._done.wait(0.2 if remaining is None else min(0.2, remaining))
        self._restore_signals()
        return True

    def _restore_signals(self) -> None:
        """Give SIGTERM and SIGINT back to their previous handlers: only possible on the main
        thread, so it happens in the caller's join (or in the next signal), never the monitor."""
        if threading.current_thread() is not threading.main_thread():
            return
        handlers, self._old_handlers = self._old_handlers, {}
        for sig, old in handlers.items():
            signal.signal(sig, old)

    def stop_processes(self, timeout: float | None = None) -> None:
        """Drain: stop polling, let in-flight tasks finish within the drain timeout, hand back the
        rest, stop everything. Safe to call twice and before start."""
        if not self._started:
            return
        self.request_stop()
        self.join_processes(timeout)

    def request_stop(self, immediately: bool = False) -> None:
        """Begin a drain (or, with ``immediately``, end it now). Returns without waiting."""
        with self._lock:
            if self._stopping and not immediately:
                return
            first = not self._stopping
            self._stopping = True
            if immediately:
                self._stop_now = True
            if first:
                self._drain_deadline = time.monotonic() + self.config.drain_timeout
                log.info(
                    "draining: %d task(s) in flight, up to %.0fs",
                    sum(len(c.run.in_flight) for c in self._children),
                    self.config.drain_timeout,
                )

    def pause(self, task_type: str) -> dict[str, Any]:
        """Stop polling for ``task_type`` within one poll timeout; its running tasks finish and
        keep their leases, its processes stay up, its autoscaling waits (docs/workers.md,
        Runtime control). Returns the type's entry of ``/workers`` ``queues``.

        Raises:
            ValueError: an unknown task type.
            RuntimeError: the pool is not running.
        """
        return self._change(task_type, self._set_paused, True)

    def resume(self, task_type: str) -> dict[str, Any]:
        """Poll for a paused ``task_type`` again (see :meth:`pause`)."""
        return self._change(task_type, self._set_paused, False)

    def scale(self, task_type: str, processes: int | tuple[int, int]) -> dict[str, Any]:
        """Run ``processes`` processes for ``task_type`` from now on: a number fixes the count
        (autoscaling of the type stops until the next scale), a ``(min, max)`` range autoscales
        in it. Removed processes drain as on SIGTERM; new ones start as at start-up.

        Raises:
            ValueError: an unknown task type, or not a number >= 1 nor a range of them.
            RuntimeError: the pool is not running.
        """
        low, high = process_range(processes)
        return self._change(task_type, self._set_range, low, high)

    def _change(self, task_type: str, apply: Any, *args: Any) -> dict[str, Any]:
        if task_type not in {w.task_type for w in self.workers}:
            raise ValueError(f"unknown task type {task_type!r}")
        if not self._started or self._stopping:
            raise RuntimeError("the pool is not running")
        self._requests.call(lambda: apply(task_type, *args))
        return self.queues_status()[task_type]

    def workers_status(self) -> list[dict[str, Any]]:
        """What ``/workers`` shows: one entry per process slot."""
        with self._lock:
            return [c.describe() for c in self._children]

    def spool_status(self) -> dict[str, Any]:
        """What ``/workers`` shows about the result spool: rows waiting, rows given up."""
        spool = self._spool
        if spool is None:
            return {"waiting": 0, "dead": {}, "recent_dead": []}
        return {
            "waiting": spool.count(),
            "dead": spool.dead_counts(),
            "recent_dead": spool.dead(limit=10),
        }

    def queues_status(self) -> dict[str, dict[str, Any]]:
        """What ``/workers`` shows per task type: its backlog (when the source told) and its
        processes (with the range they autoscale in)."""
        depths = self._depths
        latest = depths.latest if depths is not None else {}
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for worker in self.workers:
                children = self._serving(worker.task_type)
                low, high = children[0].options.process_range if children else (0, 0)
                entry: dict[str, Any] = {
                    "processes": len(children),
                    "min": low,
                    "max": high,
                    "paused": bool(children and children[0].options.paused),
                }
                backlog = latest.get(worker.task_type)
                if backlog is not None and depths is not None and depths.measured_at:
                    entry.update(
                        depth=backlog.depth,
                        waiting=backlog.waiting,
                        held=backlog.held,
                        measured_ago=round(now - depths.measured_at, 1),
                    )
                out[worker.task_type] = entry
        return out

    def ready(self) -> tuple[bool, str]:
        """Readiness: every worker type has a live process whose last poll succeeded recently
        (or whose slots are all busy). A server outage makes the pool not ready."""
        if not self._started or self._stopping:
            return False, "not running"
        now = time.time()
        with self._lock:
            for task_type in sorted({c.task_type for c in self._children}):
                children = [c for c in self._children if c.task_type == task_type]
                ok = False
                for c in children:
                    s = c.run.status
                    if c.state is not State.RUNNING or s is None:
                        continue
                    window = max(
                        10.0,
                        3 * c.options.poll_timeout / 1000.0 + 2 * c.options.poll_interval / 1000.0,
                    )
                    busy = s.in_flight >= c.options.threads
                    if (
                        busy
                        or c.options.paused
                        or (s.last_poll_ok and now - s.last_poll_ok < window)
                    ):
                        ok = True
                        break
                if not ok:
                    return False, f"{task_type}: no process polled successfully recently"
        return True, "ok"

    def alive(self) -> bool:
        """Liveness: the monitor loop is turning."""
        return (
            self._monitor is not None
            and self._monitor.is_alive()
            and (time.monotonic() - self._last_tick < 10.0)
        )

    # -- start-up -----------------------------------------------------------------------------

    def _check_picklable(self) -> None:
        for child in self._children:
            try:
                pickle.dumps((child.worker, child.options, self.hooks))
            except Exception as exc:
                raise ConfigurationError(
                    child.task_type,
                    "the worker cannot be sent to a worker process: define its handler at module"
                    f" level in an importable module (pickling failed: {exc})",
                ) from None

    def _bindings(self) -> list[WorkerBinding]:
        out: list[WorkerBinding] = []
        for worker in self.workers:
            options = next(c.options for c in self._children if c.worker is worker)
            out.append(
                WorkerBinding(
                    worker.task_type,
                    options.process_range[1],
                    options.threads,
                    options.output_subject or "",
                    options.max_attempts,
                    domain=options.domain or "",
                )
            )
        return out

    def _start_source(self) -> None:
        source = create_source(self.config)
        # One hook thread: the outcomes the supervisor reports reach the hooks in order.
        self._agent = SourceAgent(source, HookRunner(self.hooks, 1, "taskfleet-supervisor"))
        self._agent.start(self._bindings(), self.config.state_path / "spool.sqlite3")
        self._spool = self._agent.spool
        self._depths = QueueDepths(self._agent, self._bindings(), self.config.queue_depth_interval)
        for worker in self.workers:
            low, high = next(c.options for c in self._children if c.worker is worker).process_range
            if low != high:
                self._autoscalers[worker.task_type] = self._autoscaler(low, high)
            paused = next(c.options for c in self._children if c.worker is worker).paused
            metrics.POOL_GAUGES[WORKER_PAUSED].set((worker.task_type,), float(paused))
        # What the source resolved at start-up (NATS: the embedded server it acquired).
        self._child_config = source.worker_config(self.config)

    def _autoscaler(self, low: int, high: int) -> Autoscaler:
        c = self.config
        return Autoscaler(low, high, c.scale_up_backlog, c.scale_up_after, c.scale_down_after)

    def _preload(self) -> None:
        if self._ctx.get_start_method() == "forkserver":
            # Children fork from a server that has already imported the runtime and the source
            # (no threads, no sockets): a restarted process is serving again sooner.
            assert self._agent is not None
            # ``_forkserver`` makes the fork server ignore SIGTERM (see that module).
            modules = [
                "taskfleet._forkserver",
                "taskfleet._child",
                "taskfleet._runner",
                "taskfleet._delivery",
            ]
            modules += self._agent.source.preload_modules()
            self._ctx.set_forkserver_preload(modules)

    def _bind_http(self) -> None:
        if self.config.metrics_bind is None:
            return
        from ._admin import AdminServer

        self._http = AdminServer(self, self.config)

    # -- processes ----------------------------------------------------------------------------

    def _spawn(self, child: Slot, now: float) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        assert self._ledger_dir is not None
        self._spawns += 1
        # A new file per process: a replacement never sees its predecessor's records.
        ledger = Ledger.create(
            os.path.join(self._ledger_dir, f"{self._spawns}.ledger"), child.options.threads
        )
        recipe = ChildRecipe(
            child.worker,
            child.options,
            child.index,
            self._child_config,
            self._metrics_dir,
            child_conn,
            self.hooks,
            ledger.path,
            self._root_logging,
            os.getpid(),
        )
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=child_main, args=(recipe,), name=f"taskfleet {child.name}", daemon=False
        )
        try:
            process.start()
        except BaseException:
            # e.g. EOFError: the fork server died while it was starting this process
            parent_conn.close()
            ledger.close(remove=True)
            raise
        finally:
            child_conn.close()
        try:
            # Watched as itself: under the fork server its parent is the fork server, whose
            # death must not pass for this process's.
            watch = watch_process(process.pid or 0)
        except ProcessLookupError:
            watch = None  # already gone: its sentinel says so
        child.spawned(
            Run(
                process,
                parent_conn,
                process.pid or 0,
                now,
                last_heartbeat=now,
                ledger=ledger,
                watch=watch,
            )
        )
        log.debug("started %s as pid %d", child.name, child.run.pid)

    def _monitor_loop(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if self._tick():
                        break
                    failures = 0
                except Exception:
                    # One child's trouble must not end the pool: log it, go on next tick.
                    failures += 1
                    if failures >= MONITOR_FAILURES:
                        raise
                    log.exception("supervisor monitor: error in a tick (going on)")
                    time.sleep(TICK)
        except Exception:
            log.exception("supervisor monitor failed; stopping the pool")
            # What the processes hold is handed back first: killed, they cannot report it.
            for child in self._children:
                try:
                    self._sync_ledger(child)
                    self._report_lost(child, "handed back: the supervisor failed", hand_back=True)
                except Exception:
                    log.exception("%s: handing back its tasks failed", child.name)
            self._kill_all("supervisor error")
        finally:
            self._shutdown()

    def _tick(self) -> bool:
        """One turn of the monitor. Returns True once the pool has stopped."""
        self._last_tick = time.monotonic()
        conns = [c.run.conn for c in self._children if c.run.conn is not None]
        ends = [
            _end_of(c.run)
            for c in self._children
            if c.run.process is not None and c.state is not State.STOPPED
        ]
        ready = wait(conns + ends, timeout=TICK)
        for obj in ready:
            if isinstance(obj, Connection):
                self._read(obj)
        for child in self._children:
            self._sync_ledger(child)
        now = time.monotonic()
        for child in list(self._children):
            if child.run.process is None or child.state is State.STOPPED:
                continue
            if _ended(child.run):
                self._on_exit(child, now)
            else:
                self._check_parent(child)
        self._check_deadlines(now)
        if self._stopping:
            return self._drain_step(now)
        self._requests.apply()
        self._restart_due(now)
        self._periodic(now)
        return False

    def _check_parent(self, child: Slot) -> None:
        """Under the fork server, its death reads as every process's end (exit code 255, from
        the sentinel it served); the processes themselves go on. Seen as such, not as deaths."""
        run = child.run
        if run.watch is None or run.parent_lost or self._ctx.get_start_method() != "forkserver":
            return
        if wait([run.process.sentinel], 0) and not wait([run.watch], 0):
            run.parent_lost = True
            log.warning(
                "%s (pid %d): the fork server is gone; the process goes on (a new fork server"
                " starts with the next process)",
                child.name,
                run.pid,
            )

    def _child_for(self, conn: Connection) -> Slot | None:
        for c in self._children:
            if c.run.conn is conn:
                return c
        return None

    def _read(self, conn: Connection) -> None:
        child = self._child_for(conn)
        if child is None:
            return
        # Drain everything queued on this pipe now: a goodbye must be seen before the
        # process's death is handled.
        while True:
            try:
                if not conn.poll():
                    return
                message = conn.recv()
            except (EOFError, OSError):
                conn.close()
                child.run.conn = None
                return
            self._handle(child, message)

    def _handle(self, child: Slot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        now = time.monotonic()
        child.run.last_heartbeat = now
        with self._lock:
            if kind == HEARTBEAT:
                child.heard_from(message[1])
            elif kind == HELLO:
                child.heard_from()
                if self._stopping or child.retire_by is not None:
                    self._send(child, (STOP,))
            elif kind == LEAVING:
                child.run.leaving = str(message[1])

    def _track(self, child: Slot, task: Task, started: float) -> None:
        """Hold ``task`` as in flight in ``child`` since ``started`` (monotonic); under the lock."""
        opts = child.options
        deadline = task_deadline(
            started, opts.time_limit, child.worker.is_async, self.config.kill_grace
        )
        every = lease_every(opts.lease_extend, lambda: self._source_lease_interval(task))
        child.run.in_flight[task.task_id] = InFlight(
            task, started, deadline, every, started + every if every else None
        )

    def _sync_ledger(self, child: Slot) -> None:
        """Bring ``child.run.in_flight`` up to date with the process's ledger (see ``ledger.py``).

        Only records whose sequence number changed since the last read are decoded; a record
        being written right now keeps what was known of it.
        """
        ledger = child.run.ledger
        if ledger is None:
            return
        records = ledger.read()
        with self._lock:
            view = child.run.ledger_view
            for index, record in enumerate(records):
                if record is None:
                    continue
                seq, started, payload = record
                known = view.get(index)
                if known is not None and known[0] == seq:
                    continue
                if seq >= 4:
                    # A record is written twice per task (held, then cleared once reported):
                    # past 4, this process has reported work, so a later death is not a crash
                    # loop.
                    child.did_work()
                if known is not None and known[1]:
                    child.run.in_flight.pop(
                        known[1], None
                    )  # settled (or replaced by a chained task)
                task_id = ""
                if payload:
                    try:
                        task = unpack_task(pickle.loads(payload))
                    except Exception:  # torn despite the sequence check: read it next tick
                        view.pop(index, None)
                        continue
                    self._track(child, task, started)
                    task_id = task.task_id
                view[index] = (seq, task_id)

    def _drop_ledger(self, child: Slot) -> None:
        if child.run.ledger is not None:
            child.run.ledger.close(remove=True)
            child.run.ledger = None
        child.run.ledger_view = {}

    def _source_lease_interval(self, task: Task) -> float | None:
        assert self._agent is not None
        return self._agent.source.lease_interval(task)

    def _send(self, child: Slot, message: tuple[Any, ...]) -> None:
        if child.run.conn is None:
            return
        try:
            child.run.conn.send(message)
        except (OSError, ValueError):
            pass

    # -- deaths and restarts ------------------------------------------------------------------

    def _on_exit(self, child: Slot, now: float) -> None:
        process = child.run.process
        if not child.run.parent_lost:
            process.join(0.5)  # its exit status, from the fork server or the kernel
        if child.run.watch is not None:
            os.close(child.run.watch)
            child.run.watch = None
        if child.run.conn is not None:
            self._read(child.run.conn)  # what the child said last (its goodbye)
            if child.run.conn is not None:
                child.run.conn.close()
                child.run.conn = None
        exitcode = None if child.run.parent_lost else process.exitcode
        reason, label = child.exited(exitcode)
        metrics.mark_process_dead(child.run.pid)
        self._sync_ledger(child)  # its last writes: every task it held when it died
        self._drop_ledger(child)
        self._report_lost(child, reason)
        if self._stopping or child.retire_by is not None:
            child.stopped()
            log.info("%s (pid %d) stopped: %s", child.name, child.run.pid, reason)
            if child.retire_by is not None and not self._stopping:
                with self._lock:
                    self._children.remove(child)
            return
        delay = child.plan_restart(exitcode, now, self.config.restart_backoff_max)
        metrics.get().worker_restart.labels(child.task_type, label).inc()
        level = logging.INFO if child.exited_cleanly(exitcode) else logging.WARNING
        log.log(
            level, "%s (pid %d): %s; restarting in %.2fs", child.name, child.run.pid, reason, delay
        )

    def _report_lost(self, child: Slot, reason: str, *, hand_back: bool = False) -> None:
        """Report every task the process still held, at once, so the server retries it now."""
        with self._lock:
            lost = list(child.run.in_flight.values())
            child.run.in_flight.clear()
        if not lost:
            return
        assert self._agent is not None
        m = metrics.get()
        for entry in lost:
            task = entry.task
            if task.task_id in child.run.timed_out:
                continue  # already reported when its deadline passed
            worker_id = child.options.identity
            if hand_back:
                # Not a failure: back in the queue now, without using up a retry.
                result = task.result(TaskStatus.IN_PROGRESS, reason=reason, worker_id=worker_id)
                result.exception = HANDED_BACK
                self._agent.report(task, result)
                m.taskfleet_tasks_lost.labels(task.task_type, "drain").inc()
                continue
            result = task.result(TaskStatus.FAILED, reason=reason, worker_id=worker_id)
            result.exception = "WorkerLost"
            # NATS: redeliver now. After a crash, a little jitter keeps the tasks that shared the
            # dead process from arriving together again, so an innocent neighbour of a task that
            # crashes every time it runs is not killed with it on every delivery.
            result.retry_after = random.uniform(0.0, 1.0)
            self._agent.report(task, result)
            m.taskfleet_tasks_lost.labels(task.task_type, "crash").inc()
        what = "handed back" if hand_back else "reported FAILED"
        log.warning("%s: %s %d in-flight task(s): %s", child.name, what, len(lost), reason)

    def _restart_due(self, now: float) -> None:
        for child in self._children:
            if child.restart_due(now):
                self._restart(child, now)

    def _restart(self, child: Slot, now: float) -> None:
        """Start the slot's next process; one that cannot be started (the fork server died
        during the spawn: ``EOFError``) is a restart failure, tried again with backoff (the
        next spawn starts a new fork server)."""
        try:
            self._spawn(child, now)
        except Exception as exc:
            # The slot's restart policy, as for a process that exited before it got going.
            delay = child.plan_restart(EXIT_START_FAILED, now, self.config.restart_backoff_max)
            child.last_exit = f"could not start a worker process: {type(exc).__name__}: {exc}"
            metrics.get().worker_restart.labels(child.task_type, "start_failed").inc()
            log.warning("%s: %s; trying again in %.2fs", child.name, child.last_exit, delay)

    # -- deadlines: time limits, wedged processes, kills, leases ------------------------------

    def _check_deadlines(self, now: float) -> None:
        """Apply what ``_deadlines.check_run`` decides for each running process."""
        extend: list[Task] = []
        with self._lock:
            for child in self._children:
                if child.run.process is None or child.state in (State.STOPPED, State.WAITING):
                    continue
                check = check_run(
                    child.run,
                    starting=child.state is State.STARTING,
                    time_limit=child.options.time_limit,
                    kill_grace=self.config.kill_grace,
                    startup_timeout=self.config.startup_timeout,
                    heartbeat_timeout=self.config.heartbeat_timeout,
                    now=now,
                )
                if check.sigkill:
                    self._signal(child, signal.SIGKILL)
                    child.run.sigkill_at = None
                for n, entry in enumerate(check.timed_out):
                    self._time_limit_passed(child, entry)
                    if n == 0 and check.time_limit_kill:  # killed for the first one reported
                        child.run.kill_reason = check.time_limit_kill
                        log.error(
                            "%s (pid %d): %s; killing it",
                            child.name,
                            child.run.pid,
                            child.run.kill_reason,
                        )
                        self._signal(child, signal.SIGTERM)
                        child.run.sigkill_at = check.sigkill_at
                for due in check.leases:
                    due.entry.next_lease = due.next_lease
                extend += check.extend
                if check.unresponsive_kill:
                    child.run.kill_reason = check.unresponsive_kill
                    log.error(
                        "%s (pid %d) is %s; killing it",
                        child.name,
                        child.run.pid,
                        child.run.kill_reason,
                    )
                    self._signal(child, signal.SIGKILL)
        if extend and self._agent is not None:
            self._agent.extend(extend)

    def _time_limit_passed(self, child: Slot, entry: InFlight) -> None:
        """Report ``entry``'s task as past its time limit (its process is killed for it)."""
        limit = child.options.time_limit
        assert limit is not None  # called only for a task whose worker has a time limit
        task = entry.task
        child.run.timed_out.add(task.task_id)
        result = time_limit_result(task, limit, child.options.identity, process_killed=True)
        assert self._agent is not None
        self._agent.report(task, result)
        metrics.get().taskfleet_time_limit_kills.labels(child.task_type).inc()

    def _signal(self, child: Slot, sig: signal.Signals) -> None:
        run = child.run
        if not run.pid or run.process is None or _ended(run):
            return
        try:
            if run.watch is not None:
                signal.pidfd_send_signal(run.watch, sig)  # never another process with its pid
            else:
                os.kill(run.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_all(self, reason: str) -> None:
        for child in self._children:
            if child.run.process is not None and child.state is not State.STOPPED:
                child.run.kill_reason = child.run.kill_reason or reason
                self._signal(child, signal.SIGKILL)

    def _periodic(self, now: float) -> None:
        if now >= self._next_flush and self._agent is not None:
            self._next_flush = now + 10.0
            if self._agent.delivery.spool_pending or (
                self._spool is not None and self._spool.count() > 0
            ):
                self._agent.flush_spool()
        if self._textfile is not None:
            self._textfile.periodic(now)
        if self._depths is not None and self._depths.tick(now):
            self._autoscale(now)
        self._retire_due(now)

    # -- autoscaling (docs/scaling.md) ---------------------------------------------------------

    def _serving(self, task_type: str) -> list[Slot]:
        """The type's processes that are not being removed (under the lock)."""
        return [c for c in self._children if c.task_type == task_type and c.retire_by is None]

    def _autoscale(self, now: float) -> None:
        assert self._depths is not None
        for task_type, scaler in self._autoscalers.items():
            backlog = self._depths.latest.get(task_type)
            if backlog is None:
                continue  # unknown: no decision on a guess
            with self._lock:
                children = self._serving(task_type)
                in_flight = sum(len(c.run.in_flight) for c in children)
            if not children or children[0].options.paused:
                continue  # a paused type waits for its resume, whatever its backlog
            threads = children[0].options.threads
            step = scaler.decide(now, backlog.waiting, len(children), threads, in_flight)
            if step:
                log.info(
                    "autoscaling %s: %d -> %d process(es) (%d waiting, %d of %d slots busy)",
                    task_type,
                    len(children),
                    len(children) + step,
                    backlog.waiting,
                    in_flight,
                    len(children) * threads,
                )
                metrics.get().taskfleet_autoscale_decisions.labels(
                    task_type, "up" if step > 0 else "down"
                ).inc()
                self.scale_processes(task_type, len(children) + step, now)

    def scale_processes(self, task_type: str, processes: int, now: float) -> None:
        """Start or remove processes of ``task_type`` until ``processes`` serve it. A removed
        process drains as on SIGTERM (within the drain timeout), then is not replaced; the
        youngest go first. Called on the monitor thread."""
        with self._lock:
            serving = self._serving(task_type)
            if not serving or self._stopping:
                return
            template = serving[0]
            for child in sorted(serving, key=lambda c: -c.index)[
                : max(0, len(serving) - processes)
            ]:
                child.retire_by = now + self.config.drain_timeout
                if child.state is State.WAITING or child.run.process is None:
                    child.state = State.STOPPED
                    self._children.remove(child)
                else:
                    child.state = State.STOPPING
                    self._send(child, (STOP,))
            used = {c.index for c in self._children if c.task_type == task_type}
            position = max(i for i, c in enumerate(self._children) if c.task_type == task_type)
            for _ in range(processes - len(serving)):
                index = next(i for i in range(len(used) + 1) if i not in used)
                used.add(index)
                child = Slot(template.worker, template.options, index)
                position += 1
                self._children.insert(position, child)
                self._spawn(child, now)

    def _set_paused(self, task_type: str, paused: bool) -> None:
        """Pause or resume every process of ``task_type``, and those it starts later (monitor
        thread)."""
        with self._lock:
            for child in self._children:
                if child.task_type == task_type:
                    child.options = replace(child.options, paused=paused)
                    self._send(child, (PAUSE if paused else RESUME,))
        metrics.POOL_GAUGES[WORKER_PAUSED].set((task_type,), float(paused))
        scaler = self._autoscalers.get(task_type)
        if scaler is not None and not paused:
            scaler.above_since = scaler.idle_since = None  # measured afresh from now on
        log.info("%s: %s by request", task_type, "paused" if paused else "resumed")

    def _set_range(self, task_type: str, low: int, high: int) -> None:
        """Scale ``task_type`` by request (monitor thread): a fixed count, or a range that its
        autoscaler keeps to from now on."""
        with self._lock:
            for child in self._children:
                if child.task_type == task_type:
                    child.options = replace(
                        child.options, processes=low if low == high else (low, high)
                    )
            serving = len(self._serving(task_type))
        if low == high:
            self._autoscalers.pop(task_type, None)
        elif task_type in self._autoscalers:
            self._autoscalers[task_type].low, self._autoscalers[task_type].high = low, high
        else:
            self._autoscalers[task_type] = self._autoscaler(low, high)
        target = min(max(serving, low), high)
        log.info(
            "%s: scaled by request to %s: %d -> %d process(es)",
            task_type,
            low if low == high else f"{low}-{high}",
            serving,
            target,
        )
        self.scale_processes(task_type, target, time.monotonic())

    def _retire_due(self, now: float) -> None:
        """Removed processes still running past their drain: hand back their tasks, kill."""
        for child in list(self._children):
            over = retire_over(child.retire_by, child.run.kill_reason, now)
            if over is not None:
                self._hand_back(child, over)

    # -- drain --------------------------------------------------------------------------------

    def _drain_step(self, now: float) -> bool:
        """One step of the drain. Returns True when every process has stopped."""
        for child in self._children:
            if child.state is State.WAITING:
                child.state = State.STOPPED
            elif child.state in (State.STARTING, State.RUNNING):
                child.state = State.STOPPING
                self._send(child, (STOP,))
        over = drain_over(self._stop_now, self._drain_deadline, now)
        if over is not None:
            for child in self._children:
                if child.state is State.STOPPING and not child.run.kill_reason:
                    self._hand_back(child, over)
        return all(c.state is State.STOPPED or c.run.process is None for c in self._children)

    def _hand_back(self, child: Slot, over: HandBack) -> None:
        """End a drain of ``child``: report what it holds for a retry now, kill it."""
        kill_reason, why = over
        child.run.kill_reason = kill_reason
        with self._lock:
            held = list(child.run.in_flight)
        if held:
            log.warning("%s: handing back %d unfinished task(s)", child.name, len(held))
        self._report_lost(child, f"handed back: {why}", hand_back=True)
        self._signal(child, signal.SIGKILL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Signal handlers only set flags; the monitor acts on them.
        if self._done.is_set():
            # The pool stopped and nobody joined it: the signal is the program's again.
            old = self._old_handlers.get(signum, signal.SIG_DFL)
            self._restore_signals()
            if callable(old):
                old(signum, frame)
            elif old == signal.SIG_DFL:
                signal.raise_signal(signum)
            return
        if self._stopping:
            log.warning("second %s: stopping at once", signal.Signals(signum).name)
            self.request_stop(immediately=True)
        else:
            log.info("%s received: draining", signal.Signals(signum).name)
            self.request_stop()

    def _shutdown(self) -> None:
        self._requests.close()
        for child in self._children:
            if child.run.process is not None and not _ended(child.run):
                wait([_end_of(child.run)], 5)
            if child.run.watch is not None:
                os.close(child.run.watch)
                child.run.watch = None
        self._cleanup()
        self._done.set()
        log.info("pool stopped")

    def _cleanup(self) -> None:
        if self._depths is not None:
            self._depths.close()
            self._depths = None
        metrics.POOL_GAUGES[WORKER_PAUSED].clear()
        if self._agent is not None:
            self._agent.close(timeout=self.config.drain_timeout + 30)
            self._agent = None
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._textfile is not None:
            self._textfile.write()
            self._textfile = None
        self._spool = None  # closed by the agent
        for child in self._children:
            self._drop_ledger(child)
        if self._metrics_dir:
            metrics.setup(None)
        for scratch in self._scratch:
            scratch.remove()
        self._scratch.clear()
        self._ledger_dir = self._metrics_dir = None
        if not self._monitor:
            self._done.set()


def _run_on_after_main(pool: TaskHandler) -> None:
    """Keep a started pool whole when the program's main code ends without joining it.

    Scripts written for the Conductor SDK call ``start_processes()`` and let ``main`` return;
    the pool is expected to run until SIGTERM. The interpreter then shuts its thread pools
    down before it waits for anything else, which would leave the supervisor unable to touch
    the spool or run hooks. A hook of the threading module, run before that shutdown (hooks run
    last-registered first, and the executors' own is registered on import), waits for the pool
    to stop instead, so it runs and drains as if ``join_processes()`` had been called.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return
    import concurrent.futures.thread  # noqa: F401 - registers its hook first, so ours runs first

    ref = weakref.ref(pool)

    def wait_for_the_pool() -> None:
        alive = ref()
        if alive is not None and alive._started and not alive._done.is_set():
            log.info("the program's main code ended; the pool runs until SIGTERM or SIGINT")
            alive.join_processes()

    register(wait_for_the_pool)


#: Arguments of the Conductor Python SDK's ``TaskHandler`` that taskfleet does not take: what
#: to do instead (docs/migrating-from-conductor-python.md).
_SDK_ARGUMENTS = {
    "event_listeners": (
        "use hooks=[...] (taskfleet.hooks.HookBase): hooks see every task's start and outcome"
    ),
    "monitor_processes": (
        "taskfleet always supervises its worker processes and restarts them with backoff"
        " (TASKFLEET_RESTART_BACKOFF_MAX); remove it"
    ),
}


def _refuse_arguments(unknown: Mapping[str, Any]) -> None:
    """One line naming the first argument ``TaskHandler`` does not take, and what to use."""
    if not unknown:
        return
    name = sorted(unknown)[0]
    if name in _SDK_ARGUMENTS:
        raise ConfigurationError(name, _SDK_ARGUMENTS[name])
    if name.startswith("restart"):
        raise ConfigurationError(name, _SDK_ARGUMENTS["monitor_processes"])
    known = ", ".join(
        p
        for p in inspect.signature(TaskHandler.__init__).parameters
        if p not in ("self", "unknown")
    )
    raise ConfigurationError(name, f"is not an argument of TaskHandler (it takes {known})")
