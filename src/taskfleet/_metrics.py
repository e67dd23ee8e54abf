"""Every metric taskfleet exports, defined in one place, and Prometheus multiprocess set-up.

Names follow the Conductor SDKs' canonical set so existing dashboards work; the pool's own
metrics carry a ``taskfleet_`` prefix. Labels are bounded: ``taskType``, ``status``, and
``exception`` (an exception *class* name, never a message).

Multiprocess mode: the supervisor picks a directory; each process calls :func:`setup` with it
before creating any metric. That works even when ``prometheus_client`` was imported earlier in
the process (e.g. by a forkserver's preloaded modules), because the value class is switched
explicitly instead of being read from the environment at import time.

Buffered metrics: in multiprocess mode every increment is a locked write to a memory-mapped
file (~6 µs), and the per-task metrics take several per task. A worker process therefore keeps
the increments of the per-task metrics (``_Def.buffered``) in memory and writes them out in
:func:`flush`, which its runner calls every :data:`FLUSH_INTERVAL` seconds and when it stops.
A scrape sees them at most that late; a process killed with ``-9`` loses at most that much of
them. Failures, redeliveries, dead letters, restarts and gauges are written at once.
"""

from __future__ import annotations

import bisect
import collections
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["FLUSH_INTERVAL", "METRIC_NAMES", "Metrics", "flush", "get", "setup"]

#: Seconds a worker process may hold increments of buffered metrics (see the module docstring).
FLUSH_INTERVAL = 0.1

#: Latency buckets (seconds) for poll, execute and update times.
TIME_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
#: Payload size buckets (bytes).
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

_EXCEPTION_LABELS = ("taskType", "exception")


@dataclass(frozen=True)
class _Def:
    kind: str  # counter | gauge | histogram | pool (see PoolGauge)
    name: str
    help: str
    labels: tuple[str, ...]
    mode: str = ""  # gauge multiprocess mode
    buckets: tuple[float, ...] = ()
    buffered: bool = False  # written per task: increments wait for flush() in worker processes


DEFINITIONS: tuple[_Def, ...] = (
    # -- the Conductor SDKs' canonical set --------------------------------------------------
    _Def("counter", "task_poll", "Poll requests sent", ("taskType",), buffered=True),
    _Def(
        "histogram",
        "task_poll_time_seconds",
        "Poll request duration",
        ("taskType", "status"),
        buckets=TIME_BUCKETS,
        buffered=True,
    ),
    _Def(
        "histogram",
        "task_execute_time_seconds",
        "Handler execution time by result status",
        ("taskType", "status"),
        buckets=TIME_BUCKETS,
        buffered=True,
    ),
    _Def(
        "histogram",
        "task_update_time_seconds",
        "Result delivery duration",
        ("taskType", "status"),
        buckets=TIME_BUCKETS,
        buffered=True,
    ),
    _Def("counter", "task_poll_error", "Poll requests that failed", _EXCEPTION_LABELS),
    _Def("counter", "task_execute_error", "Handler executions that failed", _EXCEPTION_LABELS),
    _Def("counter", "task_update_error", "Result deliveries that failed", _EXCEPTION_LABELS),
    _Def(
        "histogram",
        "task_result_size_bytes",
        "Serialized output payload size",
        ("taskType",),
        buckets=SIZE_BUCKETS,
        buffered=True,
    ),
    _Def("gauge", "active_workers", "Live worker processes", ("taskType",), mode="livesum"),
    _Def(
        "counter", "worker_restart", "Worker processes restarted, by cause", ("taskType", "reason")
    ),
    # -- the pool's own ---------------------------------------------------------------------
    _Def(
        "counter",
        "taskfleet_tasks_received",
        "Tasks received from the source",
        ("taskType",),
        buffered=True,
    ),
    _Def(
        "gauge",
        "taskfleet_tasks_in_flight",
        "Tasks received and not yet reported",
        ("taskType",),
        mode="livesum",
    ),
    _Def(
        "gauge",
        "taskfleet_worker_slots",
        "Execution slots of live worker processes",
        ("taskType",),
        mode="livesum",
    ),
    _Def(
        "counter",
        "taskfleet_lease_extensions",
        "Lease extensions / in-progress acks sent",
        ("taskType",),
    ),
    _Def(
        "counter", "taskfleet_results_spooled", "Results written to the local spool", ("taskType",)
    ),
    _Def(
        "gauge", "taskfleet_spool_depth", "Results waiting in the local spool", (), mode="livemax"
    ),
    _Def(
        "gauge",
        "taskfleet_spool_dead_results",
        "Results the local spool gave up on (moved to its dead table)",
        (),
        mode="livemax",
    ),
    _Def(
        "counter",
        "taskfleet_time_limit_kills",
        "Processes killed for a task past its time limit",
        ("taskType",),
    ),
    _Def(
        "counter",
        "taskfleet_tasks_lost",
        "In-flight tasks of a dead process reported by the supervisor",
        ("taskType", "reason"),
    ),
    _Def("counter", "taskfleet_nats_redeliveries", "Tasks delivered more than once", ("taskType",)),
    _Def("counter", "taskfleet_dead_letters", "Tasks dead-lettered", ("taskType", "reason")),
    _Def(
        "counter",
        "taskfleet_poll_hook_events_dropped",
        "Poll hook events (before_poll, after_poll) dropped while the poll hooks were behind",
        ("taskType",),
    ),
    _Def(
        "gauge",
        "taskfleet_last_poll_success_timestamp_seconds",
        "Unix time of the last successful poll",
        ("taskType",),
        mode="livemax",
    ),
    _Def(
        "pool",
        "taskfleet_queue_depth",
        "Tasks the server holds for the type and not finished: waiting, and on NATS delivered"
        " and not acked (absent while the source cannot tell)",
        ("taskType",),
    ),
    _Def(
        "pool",
        "taskfleet_worker_paused",
        "1 while the task type is paused (the paused option, or paused at run time), else 0",
        ("taskType",),
    ),
    _Def(
        "counter",
        "taskfleet_autoscale_decisions",
        "Worker processes added or removed by autoscaling",
        ("taskType", "direction"),
    ),
)

METRIC_NAMES: frozenset[str] = frozenset(d.name for d in DEFINITIONS)


class _Buffered:
    """Stands in for a counter's or a histogram's child: values wait in a list for flush().

    ``list.append`` is atomic, so threads may record too; :func:`flush` swaps the list out
    before reading it.
    """

    __slots__ = ("_child", "_values")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._values: list[float] = []

    def inc(self, amount: float = 1) -> None:
        if amount < 0:  # refused now, as prometheus_client does, not at the next flush
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._values.append(amount)

    def observe(self, amount: float) -> None:
        self._values.append(amount)

    def flush(self) -> None:
        values = self._values
        self._values = []
        if not values:
            return
        child = self._child
        bounds = getattr(child, "_upper_bounds", None)
        if bounds is None:  # a counter
            child.inc(sum(values))
            return
        try:
            # One write per touched bucket instead of two per value. These are
            # prometheus_client's attribute names; if they ever change, the fallback below
            # (one observe per value) keeps the numbers right.
            buckets, total = child._buckets, child._sum
            counts = collections.Counter(bisect.bisect_left(bounds, v) for v in values)
            if max(counts) >= len(buckets):
                raise IndexError(max(counts))
        except (AttributeError, IndexError, TypeError):
            for v in values:
                child.observe(v)
            return
        total.inc(sum(values))
        for index, count in counts.items():
            buckets[index].inc(count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._child, name)


_buffered: list[_Buffered] = []


def flush() -> None:
    """Write out what the buffered metrics of this process hold (a no-op when none do)."""
    for child in _buffered:
        if child._values:
            child.flush()


class Family:
    """A metric with its labelled children cached: ``labels()`` on the hot path is a dict hit.

    ``prometheus_client``'s own ``labels()`` validates the values and takes a lock on every
    call; the runner asks for the same few children for every task. With ``buffered``, the
    children's increments wait for :func:`flush`. Anything else is passed to the wrapped metric.
    """

    __slots__ = ("_buffered", "_children", "metric")

    def __init__(self, metric: Any, buffered: bool = False) -> None:
        self.metric = metric
        self._buffered = buffered
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        try:
            return self._children[values]
        except KeyError:
            child = self.metric.labels(*values)
            if self._buffered:
                child = _Buffered(child)
                _buffered.append(child)
            self._children[values] = child
            return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class PoolGauge:
    """A gauge only the supervisor sets, served from its memory rather than the multiprocess
    files, so a label set can be absent (not zero) while its value is unknown."""

    def __init__(self, d: _Def) -> None:
        self.definition = d
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self._values[labels] = value

    def remove(self, labels: tuple[str, ...]) -> None:
        self._values.pop(labels, None)

    def clear(self) -> None:
        self._values.clear()

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        d = self.definition
        family = GaugeMetricFamily(d.name, d.help, labels=d.labels)
        for labels, value in list(self._values.items()):
            family.add_metric(labels, value)
        yield family


#: The pool gauges by name; a registry that serves the pool's metrics registers each.
POOL_GAUGES: dict[str, PoolGauge] = {d.name: PoolGauge(d) for d in DEFINITIONS if d.kind == "pool"}


class Metrics:
    """The metric objects of one process, as attributes named after the metrics (each a
    :class:`Family`)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        for d in DEFINITIONS:
            attr = d.name
            if d.kind == "counter":
                metric: Any = Counter(d.name, d.help, d.labels, registry=self.registry)
            elif d.kind == "gauge":
                metric = Gauge(
                    d.name,
                    d.help,
                    d.labels,
                    registry=self.registry,
                    multiprocess_mode=d.mode or "livesum",  # type: ignore[arg-type]
                )
            elif d.kind == "pool":
                self.registry.register(POOL_GAUGES[d.name])
                continue
            else:
                metric = Histogram(
                    d.name, d.help, d.labels, registry=self.registry, buckets=d.buckets
                )
            setattr(self, attr, Family(metric, buffered=d.buffered and _buffering))

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes set dynamically
        raise AttributeError(name)


_lock = threading.Lock()
_metrics: Metrics | None = None
# prometheus_client asks for the pid on every write to notice forks; a system call each time
# (several per task). Cached here, refreshed by setup() and, in a child forked after setup(),
# before anything else runs.
_pid = os.getpid()


def _process_id() -> int:
    return _pid


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()
    # The parent's unflushed increments are the parent's to write.
    for child in _buffered:
        child._values = []


_fork_hook = False
_multiproc_dir: str | None = None
_buffering = False


def setup(multiproc_dir: str | None, *, buffered: bool = False) -> None:
    """Choose this process's mode before its first metric: multiprocess (files in a directory
    shared by the pool, which must exist) or in-process. Called by every taskfleet process at
    start; a directory that does not exist (any more) means in-process.

    ``buffered`` (worker processes, multiprocess mode only): per-task metrics hold their
    increments until :func:`flush` (see the module docstring).
    """
    global _metrics, _multiproc_dir, _buffering, _pid, _fork_hook
    from prometheus_client import values

    with _lock:
        _pid = os.getpid()
        if not _fork_hook:
            # Registered by the first set-up rather than at import: importing taskfleet leaves
            # a program's forks alone. Processes forked from here on refresh the cached pid.
            os.register_at_fork(after_in_child=_after_fork)
            _fork_hook = True
        flush()
        _buffered.clear()
        if multiproc_dir and not os.path.isdir(multiproc_dir):
            # The pool that made it has stopped and removed it (this process started as the
            # pool stopped): creating it again would leave a directory nobody removes.
            multiproc_dir = None
        _buffering = bool(buffered and multiproc_dir)
        if multiproc_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
            values.ValueClass = values.MultiProcessValue(_process_id)
        elif _multiproc_dir:
            # Back to in-process values (a pool in this process stopped and removed its files).
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            values.ValueClass = values.MutexValue
        _multiproc_dir = multiproc_dir
        _metrics = None


def buffering() -> bool:
    """Whether this process holds increments until :func:`flush`."""
    return _buffering


def multiproc_dir() -> str | None:
    return _multiproc_dir


def get() -> Metrics:
    """This process's metrics (created on first use)."""
    global _metrics
    m = _metrics
    if m is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
            m = _metrics
    return m


#: Held while the files of the multiprocess directory are read for a scrape or folded, so a
#: scrape never sees a dead process's values twice or not at all (``files_lock``).
_files_lock = threading.Lock()
#: The counter and histogram values of every dead process, summed into one file per kind.
_FOLDED = "folded"


def files_lock() -> threading.Lock:
    """Hold while collecting from the multiprocess directory (see :func:`mark_process_dead`)."""
    return _files_lock


def mark_process_dead(pid: int) -> None:
    """Forget the live gauges of a dead process and fold its counters and histograms into the
    directory's ``counter_folded.db`` / ``histogram_folded.db``, deleting its own files: a
    process recycled or crash-looping for months leaves the directory, and each scrape's work,
    the size of the live processes plus one file per kind, not one per process that ever ran.
    Totals do not change (counters never go back)."""
    if not _multiproc_dir:
        return
    from prometheus_client import multiprocess

    with _files_lock:
        multiprocess.mark_process_dead(pid, _multiproc_dir)
        for kind in ("counter", "histogram"):
            _fold(os.path.join(_multiproc_dir, f"{kind}_{pid}.db"), kind)


def _fold(path: str, kind: str) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    try:
        values = MmapedDict.read_all_values_from_file(path)
    except FileNotFoundError:
        return
    except (struct.error, ValueError):
        # Shorter than its header: the process was killed while creating it, before it wrote
        # a value. Nothing to fold (and a supervisor must not die of it).
        os.unlink(path)
        return
    folded = MmapedDict(os.path.join(os.path.dirname(path), f"{kind}_{_FOLDED}.db"))
    try:
        for key, value, timestamp, _ in values:
            total, _ = folded.read_value(key)
            folded.write_value(key, total + value, timestamp)
    finally:
        folded.close()
    os.unlink(path)
