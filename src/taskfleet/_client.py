"""``TaskClient``: submit tasks to a NATS pool and read their results from plain, synchronous code.

The client owns an asyncio loop in a background thread (``_loop.py``); every public method is a
blocking call into it, so scripts, web handlers and notebooks need no ``async``. It talks to
``NATS_URL``, or — when none is configured — to the machine's shared embedded server
(:func:`taskfleet._nats.embedded.servers_for`), starting it if no other process has.

How results are read: per task type, one *ordered consumer* (ephemeral, flow-controlled, recreated
by nats-py after a gap) on ``<prefix>.results.<type>`` from the start of the results stream. Every
outcome it delivers is kept in memory, so ``result(id)`` is a dictionary look-up once the outcome
has arrived, whoever submitted the task. What is kept is bounded: at most ``max_results``
outcomes, each for at most ``results_max_age`` seconds after it arrived (oldest dropped first); a
``result`` call already waiting is answered when its outcome arrives, whatever the bound. A
producer of more results than that between its ``submit`` and ``result`` calls should consume
:meth:`TaskClient.results` instead. Two calls watching one type at once subscribe once.
Subjects carry the type, not the id, which is why a direct get by subject cannot find one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from . import _json, _tracing
from ._backoff import Backoff
from ._config import Configuration, redact_url
from ._errors import ConfigurationError, DecodeError, SourceError, TaskfleetError
from ._loop import BackgroundLoop, CallTimedOut
from ._nats.connect import connect, ensure_streams
from ._nats.embedded import servers_for
from ._nats.wire import Subjects, consumer_name, decode_result, encode_task
from ._task import TaskLog, TaskStatus

__all__ = ["ResultTimeout", "TaskClient", "TaskOutcome"]

T = TypeVar("T")

log = logging.getLogger("taskfleet.client")

#: Why a client configured for Conductor is refused (rather than quietly talking to NATS).
NATS_ONLY = (
    "is set, but TaskClient speaks NATS only: Conductor tasks come from workflows started on"
    " the Conductor server; to feed a NATS pool, unset it or set TASKFLEET_SOURCE=nats"
)

#: Submissions in flight at once in :meth:`TaskClient.submit_many` (PubAcks pipelined).
PIPELINE = 256
#: Seconds a single publish may wait for its PubAck.
PUBLISH_TIMEOUT = 10.0
#: Outcomes (and ids of submitted tasks) a client keeps at most, and for how many seconds.
MAX_RESULTS = 100_000
RESULTS_MAX_AGE = 3600.0


class ResultTimeout(TaskfleetError, TimeoutError):
    """No result for the task arrived within the timeout.

    Attributes:
        why: what the server says of the type's workers (no pool ever consumed it, none is
            consuming it now, tasks still queued or running), also at the end of the message.
    """

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(f"{message}: {why}" if why else message)
        self.why = why


@dataclass(frozen=True)
class TaskOutcome:
    """A final result as read from ``<prefix>.results.<type>``; times are epoch milliseconds."""

    task_id: str
    task_type: str
    status: TaskStatus
    output: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    logs: tuple[TaskLog, ...] = ()
    worker_id: str = ""
    attempt: int = 0
    start_time: int = 0
    end_time: int = 0
    #: the task's correlation id ("" when it had none)
    correlation_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.COMPLETED

    @classmethod
    def from_wire(cls, data: bytes) -> TaskOutcome:
        """Decode a result message.

        Raises:
            DecodeError: not a TaskResult, or its output is not JSON.
        """
        message = decode_result(data)
        status_name = message.Status.Name(message.status)
        try:
            output = _json.loads(message.output) if message.output else {}
        except ValueError as exc:
            raise DecodeError(f"result output is not JSON: {exc}", data[:256], exc) from None
        return cls(
            task_id=message.task_id,
            task_type=message.task_type,
            status=TaskStatus[status_name]
            if status_name in TaskStatus.__members__
            else TaskStatus.FAILED,
            output=output,
            reason=message.reason,
            logs=tuple(
                TaskLog(e.message, message.task_id, e.created_time_ms) for e in message.logs
            ),
            worker_id=message.worker_id,
            attempt=message.attempt,
            start_time=message.start_time_ms,
            end_time=message.end_time_ms,
            correlation_id=message.correlation_id,
        )


class TaskClient:
    """Synchronous producer API for a NATS worker pool.

    Args:
        config: settings (``NATS_URL``, credentials, prefix); default: from the environment.
        url: shorthand for ``config.replace(nats_url=url)``.
        max_results: outcomes kept for ``result`` calls still to come (and task ids remembered
            from ``submit``); the oldest go first.
        results_max_age: seconds an outcome is kept after it arrived.

    Raises:
        SourceError: the server is unreachable within ``nats_connect_timeout``.
        NatsServerError: no URL is configured and the embedded server cannot start.
    """

    def __init__(
        self,
        config: Configuration | None = None,
        *,
        url: str | None = None,
        max_results: int = MAX_RESULTS,
        results_max_age: float = RESULTS_MAX_AGE,
    ) -> None:
        config = config or Configuration.from_env()
        if url is not None:
            config = config.replace(nats_url=url)
        if url is None and config.resolved_source == "conductor":
            raise ConfigurationError("CONDUCTOR_SERVER_URL", NATS_ONLY)
        self.config = config
        self.subjects = Subjects(config.nats_prefix)
        #: submit passes the current trace context on (docs/tracing.md)
        self._trace = config.tracing != "off"
        if max_results < 1 or results_max_age <= 0:
            raise ConfigurationError("max_results", "and results_max_age must be positive")
        self.max_results, self.results_max_age = max_results, results_max_age
        self._types: OrderedDict[str, str] = OrderedDict()
        #: task id -> (outcome, monotonic time it arrived), oldest first
        self._outcomes: OrderedDict[str, tuple[TaskOutcome, float]] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[TaskOutcome]]] = {}
        self._listeners: dict[str, list[queue.Queue[TaskOutcome]]] = {}
        self._watches: dict[str, asyncio.Future[Any]] = {}
        #: the latest progress event of each running task, and readers of a task's events
        self._progress: dict[str, TaskOutcome] = {}
        self._followers: dict[str, list[queue.Queue[TaskOutcome]]] = {}
        self._lease: Any = None
        self._closed = False
        #: the (redacted) URL of the embedded server this client had to start because none was
        #: running (so no pool on this machine uses that state directory right now), else ""
        self.started_server = ""
        servers, self._lease = servers_for(config)
        if self._lease is not None and self._lease.started:
            self.started_server = redact_url(servers[0])
            log.warning(
                "no embedded server was running for state directory %s: started one at %s;"
                " tasks wait there until a pool with that state directory runs",
                config.state_path,
                self.started_server,
            )
        self._loop = BackgroundLoop("taskfleet-client")
        try:
            self._nc: Any = self._call(connect(config, servers, name="taskfleet-client"))
            self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT)
            # Producers may come first: the streams must exist before a task can be stored.
            self._call(ensure_streams(self._js, config))
        except BaseException:
            self.close()
            raise

    # -- submitting -------------------------------------------------------------------------

    def submit(
        self,
        task_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str = "",
        output_subject: str = "",
    ) -> str:
        """Store one task (PubAck awaited) and return its id.

        Re-submitting the same ``task_id`` within the stream's duplicate window (2 min) stores
        it once, so a retried ``submit`` after a timeout does not double the work.

        Raises:
            SourceError: the server did not confirm the task.
            OutputError: ``input`` is not JSON-serialisable.
        """
        task_id = task_id or uuid.uuid4().hex
        payload = encode_task(
            task_id,
            task_type,
            input or {},
            correlation_id=correlation_id,
            output_subject=output_subject,
            headers=_tracing.inject(headers) if self._trace else headers,
        )
        self._call(self._publish(self.subjects.task(task_type), payload, task_id))
        self._remember_types({task_id: task_type})
        return task_id

    def submit_many(
        self, task_type: str, inputs: Iterable[Mapping[str, Any]], *, correlation_id: str = ""
    ) -> list[str]:
        """Store many tasks with pipelined PubAcks; return their ids in input order.

        Raises:
            SourceError: a task was not confirmed (earlier ones may be stored: submitting the
                same ids again is de-duplicated, see :meth:`submit`).
        """
        batch = []
        headers = _tracing.inject(None) if self._trace else None
        for data in inputs:
            task_id = uuid.uuid4().hex
            payload = encode_task(
                task_id, task_type, data, correlation_id=correlation_id, headers=headers
            )
            batch.append((task_id, payload))
        subject = self.subjects.task(task_type)

        async def publish_all() -> None:
            for start in range(0, len(batch), PIPELINE):
                chunk = batch[start : start + PIPELINE]
                await asyncio.gather(*(self._publish(subject, p, i) for i, p in chunk))

        self._call(publish_all(), timeout=PUBLISH_TIMEOUT + len(batch) * 0.01)
        ids = [task_id for task_id, _ in batch]
        self._remember_types(dict.fromkeys(ids, task_type))
        return ids

    def _remember_types(self, types: Mapping[str, str]) -> None:
        self._types.update(types)
        while len(self._types) > self.max_results:
            self._types.popitem(last=False)

    # -- results ----------------------------------------------------------------------------

    def result(
        self, task_id: str, timeout: float | None = 30.0, *, task_type: str | None = None
    ) -> TaskOutcome:
        """Block until the task's final result is on the results subject and return it.

        Args:
            task_type: needed only for tasks this client did not submit.
            timeout: seconds; None waits forever.

        Raises:
            ResultTimeout: no result within ``timeout``.
            ConfigurationError: the type of a foreign task id was not given.
        """
        task_type = self._type_of(task_id, task_type)

        async def wait() -> TaskOutcome:
            await self._watch(task_type)
            self._expire()
            known = self._outcomes.get(task_id)
            if known is not None:
                return known[0]
            future: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(future)
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                why = await self._why_no_result(task_type)
                message = f"no result for task {task_id} within {timeout:g} s"
                raise ResultTimeout(message, why) from None
            finally:
                waiters = self._waiters.get(task_id, [])
                if future in waiters:
                    waiters.remove(future)

        return self._call(wait(), timeout=None if timeout is None else timeout + PUBLISH_TIMEOUT)

    def results(self, task_type: str, *, idle_timeout: float | None = 5.0) -> Iterator[TaskOutcome]:
        """Every final result of a type: those kept so far first (within ``max_results`` and
        ``results_max_age``), then new ones as they come.

        Ends after ``idle_timeout`` seconds without a new result (None: never).
        """
        inbox: queue.Queue[TaskOutcome] = queue.Queue()

        async def register() -> list[TaskOutcome]:
            await self._watch(task_type)
            # Snapshot and registration happen in one loop step: no outcome is missed or doubled.
            self._listeners.setdefault(task_type, []).append(inbox)
            self._expire()
            return [o for o, _ in self._outcomes.values() if o.task_type == task_type]

        try:
            yield from self._call(register())
            while True:
                try:
                    yield inbox.get(timeout=idle_timeout)
                except queue.Empty:
                    return
        finally:
            with contextlib.suppress(Exception):
                self._loop.call_soon(self._listeners.get(task_type, []).remove, inbox)

    def progress(self, task_id: str, *, task_type: str | None = None) -> TaskOutcome | None:
        """The latest progress event of a running task (``status`` ``IN_PROGRESS``, the partial
        ``output`` and the ``logs`` sent with it), or None when none arrived yet.

        Progress events are not stored by the server: this client sees those published after
        it first asked about the task's type (``submit`` does not count; call this, ``events``
        or ``result`` once to start listening).

        Raises:
            ConfigurationError: the type of a foreign task id was not given.
        """
        task_type = self._type_of(task_id, task_type)
        self._call(self._watch(task_type))
        return self._progress.get(task_id)

    def events(
        self, task_id: str, timeout: float | None = 30.0, *, task_type: str | None = None
    ) -> Iterator[TaskOutcome]:
        """A task's progress events as they come, then its final result; then it ends.

        Raises:
            ResultTimeout: no event within ``timeout`` seconds (None: wait forever).
            ConfigurationError: the type of a foreign task id was not given.
        """
        task_type = self._type_of(task_id, task_type)
        inbox: queue.Queue[TaskOutcome] = queue.Queue()

        async def follow() -> TaskOutcome | None:
            await self._watch(task_type)
            self._followers.setdefault(task_id, []).append(inbox)
            known = self._outcomes.get(task_id)
            return known[0] if known is not None else None

        try:
            final = self._call(follow())
            while final is None:
                try:
                    event = inbox.get(timeout=timeout)
                except queue.Empty:
                    raise ResultTimeout(
                        f"no event of task {task_id} within {timeout:g} s"
                    ) from None
                if event.status is not TaskStatus.IN_PROGRESS:
                    final = event
                else:
                    yield event
            yield final
        finally:
            with contextlib.suppress(Exception):
                self._loop.call_soon(self._unfollow, task_id, inbox)

    def _unfollow(self, task_id: str, inbox: queue.Queue[TaskOutcome]) -> None:
        followers = self._followers.get(task_id, [])
        if inbox in followers:
            followers.remove(inbox)
        if not followers:
            self._followers.pop(task_id, None)

    def _type_of(self, task_id: str, task_type: str | None) -> str:
        found = task_type or self._types.get(task_id)
        if found is None:
            raise ConfigurationError(
                "task_type", f"is required for task {task_id!r}, which this client did not submit"
            )
        return found

    def depth(self, task_type: str) -> int:
        """Tasks of this type in the work queue: waiting plus in flight (not yet acked).

        Raises:
            SourceError: the server did not answer.
        """
        subject = self.subjects.task(task_type)

        async def count() -> int:
            try:
                info = await self._js.stream_info(
                    self.subjects.tasks_stream, subjects_filter=subject
                )
            except Exception as exc:
                raise SourceError(f"cannot read the depth of {task_type!r}: {exc}") from None
            return int((info.state.subjects or {}).get(subject, 0))

        return self._call(count())

    def consumers_of(self, task_type: str) -> dict[str, int] | None:
        """What the server knows of the pool consuming a type, or None when no pool ever has.

        Returns ``{"pending": ..., "in_flight": ..., "pulling": ...}``: tasks not yet delivered,
        delivered but not yet acknowledged, and pull requests waiting (a running pool keeps
        at least one while it has free slots).

        Raises:
            SourceError: the server did not answer.
        """
        return self._call(self._consumer_state(task_type))

    async def _consumer_state(self, task_type: str) -> dict[str, int] | None:
        from nats.js.errors import NotFoundError

        try:
            info = await self._js.consumer_info(
                self.subjects.tasks_stream, consumer_name(task_type)
            )
        except NotFoundError:
            return None
        except Exception as exc:
            raise SourceError(f"cannot read the consumer of {task_type!r}: {exc}") from None
        return {
            "pending": int(info.num_pending or 0),
            "in_flight": int(info.num_ack_pending or 0),
            "pulling": int(info.num_waiting or 0),
        }

    async def _why_no_result(self, task_type: str) -> str:
        """One clause saying why a result has not come: the producer's most common dead ends."""
        try:
            state = await self._consumer_state(task_type)
        except SourceError as exc:
            return str(exc)
        if state is None:
            return (
                f"no worker has ever consumed {task_type!r} on this server"
                " (is the type spelt as the worker's? is the pool on another server or state"
                " directory?)"
            )
        if state["in_flight"]:
            return f"{state['in_flight']} task(s) of {task_type!r} are running now"
        if state["pulling"] == 0:
            return (
                f"no worker is consuming {task_type!r} now; {state['pending']} task(s) wait"
                " for a pool to run"
            )
        return f"{state['pending']} task(s) of {task_type!r} wait in the queue"

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching, drain the connection, stop the loop; release the embedded server.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        nc = getattr(self, "_nc", None)
        if nc is not None and self._loop.running:

            async def shutdown() -> None:
                for watch in self._watches.values():
                    with contextlib.suppress(Exception):
                        await (await watch).unsubscribe()
                try:
                    await asyncio.wait_for(nc.drain(), 5.0)
                except Exception:
                    with contextlib.suppress(Exception):
                        await nc.close()

            with contextlib.suppress(Exception):
                self._run(shutdown(), timeout=10.0)
        self._loop.stop(timeout=10.0)
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals (on the loop thread) -----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        if self._closed:
            coro.close()
            raise SourceError("the TaskClient is closed", retryable=False)
        return self._run(coro, timeout)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        try:
            return self._loop.call(coro, timeout)
        except CallTimedOut:
            raise SourceError(f"the NATS call did not finish within {timeout:g} s") from None

    async def _publish(self, subject: str, payload: bytes, task_id: str) -> None:
        """Publish one task and wait for the stream's PubAck, within PUBLISH_TIMEOUT.

        A replicated stream has no leader for a moment after it is created or when the node
        that led it is lost: the server then answers "no responders" (or 503). That is waited
        out, with backoff, within the same time; sending the same message again is safe, since
        ``Nats-Msg-Id`` de-duplicates it (docs/nats.md).
        """
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        pauses = Backoff(0.05, 1.0, jitter=0.2)
        while True:
            try:
                await self._js.publish(
                    subject,
                    payload,
                    timeout=max(0.1, deadline - time.monotonic()),
                    headers={"Nats-Msg-Id": task_id},
                )
                return
            except Exception as exc:
                from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

                if not isinstance(exc, (NoStreamResponseError, ServiceUnavailableError)):
                    raise SourceError(
                        f"submitting task {task_id} to {subject} failed: {exc}"
                    ) from None
                pause = pauses.next()
                if time.monotonic() + pause >= deadline:
                    raise SourceError(
                        f"submitting task {task_id} to {subject} failed: {exc} (for"
                        f" {pauses.elapsed:.1f} s: the stream has no leader, or none takes"
                        " this subject)"
                    ) from None
                await asyncio.sleep(pause)

    def _expire(self) -> None:
        """Drop outcomes past the size and age bounds (oldest first)."""
        horizon = time.monotonic() - self.results_max_age
        outcomes = self._outcomes
        while outcomes and (
            len(outcomes) > self.max_results or next(iter(outcomes.values()))[1] < horizon
        ):
            outcomes.popitem(last=False)

    async def _watch(self, task_type: str) -> None:
        """Subscribe to the type's results once, however many calls ask at the same time."""
        watch = self._watches.get(task_type)
        if watch is None:
            watch = self._watches[task_type] = asyncio.ensure_future(self._subscribe(task_type))
        try:
            await asyncio.shield(watch)
        except Exception:
            if self._watches.get(task_type) is watch:
                del self._watches[task_type]  # the next call tries again
            raise

    async def _subscribe(self, task_type: str) -> Any:
        async def on_result(msg: Any) -> None:
            try:
                outcome = TaskOutcome.from_wire(msg.data)
            except DecodeError:
                return  # not ours to judge; the producer of that message is at fault
            self._outcomes.pop(outcome.task_id, None)
            self._outcomes[outcome.task_id] = (outcome, time.monotonic())
            self._expire()
            for future in self._waiters.pop(outcome.task_id, []):
                if not future.done():
                    future.set_result(outcome)
            for inbox in self._listeners.get(task_type, []):
                inbox.put(outcome)
            self._progress.pop(outcome.task_id, None)
            for inbox in self._followers.get(outcome.task_id, []):
                inbox.put(outcome)

        async def on_progress(msg: Any) -> None:
            try:
                event = TaskOutcome.from_wire(msg.data)
            except DecodeError:
                return
            if event.task_id in self._outcomes:
                return  # a late event of a finished task
            self._progress[event.task_id] = event
            for inbox in self._followers.get(event.task_id, []):
                inbox.put(event)

        try:
            # Progress first: no event between the results' replay and this subscription is lost.
            await self._nc.subscribe(self.subjects.progress(task_type), cb=on_progress)
            return await self._js.subscribe(
                self.subjects.result(task_type), cb=on_result, ordered_consumer=True
            )
        except Exception as exc:
            raise SourceError(f"cannot read results of {task_type!r}: {exc}") from None
