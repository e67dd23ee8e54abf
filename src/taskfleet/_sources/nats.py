"""NATS JetStream task source: one durable pull consumer per task type, protobuf on the wire.

Promises (``docs/reliability.md``, ``docs/sources.md``):

- **Ack after result.** A result is published to ``<prefix>.results.<type>`` with
  ``Nats-Msg-Id = "<task id>:<attempt>"`` and its PubAck awaited *before* the task is acked, so a
  crash between the two costs a redelivery whose result the stream de-duplicates.
- **Settling needs no message object.** Every ack is a plain publish to the task's ``handle``
  (the JetStream reply subject): ``+ACK``, ``-NAK {"delay": ns}``, ``+WPI``, ``+TERM``. Any process
  holding a :meth:`Task.slim` copy — the supervisor settling a dead child's task — can settle it.
- **Hand-backs.** A task handed back unfinished by a drain (``base.HANDED_BACK``) is nak'd for
  redelivery at once; on its last delivery a fresh copy is published instead (then the old one
  acked), so a drain never dead-letters it.
- **Retries.** A retryable failure with deliveries left is nak'd with exponential backoff
  (``retry_base * 2**(attempt-1)``, capped; ``TaskResult.retry_after`` wins) and *no* result is
  published: the results subject carries one final outcome per task, which is what
  ``TaskClient.result`` waits for. On the last delivery, or for a terminal error, a FAILED result
  and a copy of the original task on ``<prefix>.dead.<type>`` (header ``Taskfleet-Reason``) are
  published, then the task is ``+TERM``'d: on a work-queue stream a message past ``max_deliver``
  would otherwise stay in the stream forever.
- **Bad input never kills a worker.** An undecodable message gets a FAILED result and a
  dead-letter copy with the decode error, is terminated, and ``poll`` goes on.
- **Nothing is stranded.** A task whose *last* delivery runs out its ack wait (the worker and
  its supervisor both lost) would stay in the work-queue stream forever. JetStream announces it
  with a MAX_DELIVERIES advisory; the process that ran :meth:`NatsSource.prepare` (the
  supervisor) listens for those of its own consumers, in one queue group per consumer — one
  handler per advisory across machines — and dead-letters the task (FAILED result, dead copy)
  before deleting it from the stream. An advisory is a claim anyone allowed to publish could
  forge: it is acted on only once the consumer confirms it (the task is still in the stream,
  delivered, yet at or below the consumer's ack floor or with nothing pending: given up);
  until then it is checked again every :data:`ADVISORY_RECHECK` seconds, and dropped when the
  task leaves the stream.
- **Pipelines.** A COMPLETED task with an output subject (on the task, or the worker binding's)
  has its output published there as a new Task (PubAck awaited, de-duplicated by id) before
  its input is acked.

Every method raises :class:`~taskfleet._errors.SourceError` rather than nats-py's exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nats.errors import MaxPayloadError, NoRespondersError

from .. import _metrics as metrics
from .._backoff import Backoff
from .._config import Configuration, redact_url
from .._errors import DecodeError, SourceError
from .._nats.connect import connect, ensure_streams, error_code, provisioning
from .._nats.embedded import servers_for
from .._nats.wire import (
    REASON_HEADER,
    SUBJECT_HEADER,
    Subjects,
    consumer_name,
    decode_task,
    encode_result,
    encode_task,
    header_value,
    parse_handle,
    parse_task,
    task_from_message,
    task_id_of,
)
from .._task import Task, TaskLog, TaskResult, TaskStatus
from .base import HANDED_BACK, Backlog, PollRequest, TaskSource, WorkerBinding

__all__ = ["NatsSource"]

log = logging.getLogger("taskfleet.nats")

_ACK = b"+ACK"
_PROGRESS = b"+WPI"
_TERM = b"+TERM"
#: Seconds to wait for a PubAck or a JetStream API answer.
API_TIMEOUT = 5.0
#: Seconds between checks of max-deliveries advisories their consumer does not confirm yet.
ADVISORY_RECHECK = 2.0
#: Unconfirmed advisories remembered at most (forged ones cost no more memory than this).
ADVISORY_BACKLOG = 10_000
#: JetStream's err_code for a message over the stream's max_msg_size (never accepted).
ERR_MESSAGE_TOO_LARGE = 10054


def nak_payload(delay: float) -> bytes:
    """``-NAK`` asking for redelivery after ``delay`` seconds (0: at once)."""
    if delay <= 0:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * 1_000_000_000)}).encode()


class NatsSource(TaskSource):
    """Tasks from JetStream; see the module docstring for the delivery semantics.

    Args:
        config: connection (``NATS_URL``, credentials, TLS) and stream settings. With no URL,
            :meth:`start` joins (or starts) the machine's shared embedded server
            (:func:`taskfleet._nats.embedded.servers_for`) and :meth:`worker_config` hands its
            URL on to the worker processes.
        retry_base, retry_cap: seconds of the nak backoff: ``retry_base * 2**(attempt-1)``,
            at most ``retry_cap``.
        ack_sync: confirm ``+ACK``/``+TERM`` with a request to the server (a "double ack")
            instead of a plain publish; slower, for callers that must know the ack landed.
        client_name: connection name shown by the server's monitoring.
    """

    name = "nats"

    def __init__(
        self,
        config: Configuration,
        *,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        ack_sync: bool = False,
        client_name: str = "taskfleet",
    ) -> None:
        self.config = config
        self.subjects = Subjects(config.nats_prefix)
        self._retry = Backoff(retry_base, retry_cap)
        self.ack_sync = ack_sync
        self.client_name = client_name
        self._nc: Any = None
        self._js: Any = None
        self._lease: Any = None
        #: the servers connected to (with the embedded server: known once started)
        self._servers = config.nats_urls
        self._subs: dict[str, Any] = {}
        self._max_deliver: dict[str, int] = {}
        self._output_subjects: dict[str, str] = {}
        self._advisories: dict[str, Any] = {}  # consumer -> its advisory subscription
        self._types_of: dict[str, str] = {}  # consumer -> task type
        self._unconfirmed: dict[int, tuple[str, int]] = {}  # stream seq -> (consumer, deliveries)
        self._recheck: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (bounded by ``nats_connect_timeout``); reconnects forever afterwards.

        Raises:
            SourceError: the first connection failed in time (naming the redacted URL).
            NatsServerError: no URL is configured and the embedded server cannot start.
        """
        if self._nc is not None:
            return
        self._servers, self._lease = await asyncio.to_thread(servers_for, self.config)
        try:
            self._nc = await connect(self.config, self._servers, name=self.client_name)
        except BaseException:
            await self._release_lease()
            raise
        self._js = self._nc.jetstream(timeout=API_TIMEOUT)

    async def prepare(self, workers: Sequence[WorkerBinding]) -> None:
        """Create or update both streams and one durable consumer per worker type.

        Idempotent: re-running with the same bindings changes nothing; changed settings
        (ack wait, max deliver) update the existing consumers in place.

        Raises:
            SourceError: JetStream refused or did not answer.
            ConfigurationError: a task type cannot be a subject token.
        """
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = self._require_js()
        await ensure_streams(js, self.config)
        deadline = time.monotonic() + self.config.nats_provision_timeout
        for binding in workers:
            durable = consumer_name(binding.task_type)
            max_deliver = binding.max_attempts or self.config.nats_max_deliver
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.config.nats_ack_wait,
                max_deliver=max_deliver,
                filter_subject=self.subjects.task(binding.task_type),
                # In-flight messages are capped consumer-wide: leave room for every slot.
                max_ack_pending=max(1000, 2 * binding.processes * binding.threads),
            )
            try:
                await provisioning(
                    f"consumer {durable}",
                    functools.partial(js.add_consumer, self.subjects.tasks_stream, config),
                    deadline,
                )
            except Exception as exc:
                raise SourceError(
                    f"cannot provision consumer {durable} for task type {binding.task_type!r}:"
                    f" {exc}",
                    retryable=error_code(exc) is None,
                ) from None
            self._max_deliver[durable] = max_deliver
            self._types_of[durable] = binding.task_type
            if binding.output_subject:
                self._output_subjects[binding.task_type] = binding.output_subject
        await self._watch_exhausted()

    async def _watch_exhausted(self) -> None:
        stream = self.subjects.tasks_stream
        for durable in self._types_of:
            if durable in self._advisories:
                continue
            try:
                self._advisories[durable] = await self._require_nc().subscribe(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}",
                    queue=f"{stream}_{durable}_exhausted",
                    cb=self._on_exhausted,
                )
            except Exception as exc:
                raise SourceError(f"cannot watch max-delivery advisories: {exc}") from None

    async def _on_exhausted(self, msg: Any) -> None:
        """Check an advisory names this pool's consumer and its last delivery, then dead-letter
        the task once the consumer confirms it is stranded; logged, never raised."""
        durable = str(msg.subject).rpartition(".")[2]
        try:
            advisory = json.loads(msg.data)
            seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
            if (
                advisory.get("stream") != self.subjects.tasks_stream
                or advisory.get("consumer") != durable
                or durable not in self._types_of
                or deliveries < self._max_deliver[durable]
            ):
                raise ValueError("not about a last delivery of this pool's consumer")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a max-deliveries advisory on %s: %s", msg.subject, exc)
            return
        await self._dead_letter_stranded(durable, seq, deliveries)

    async def _dead_letter_stranded(self, durable: str, seq: int, deliveries: int) -> None:
        stream = self.subjects.tasks_stream
        self._unconfirmed.pop(seq, None)
        try:
            js = self._require_js()
            info = await js.consumer_info(stream, durable)
            given_up = info.ack_floor.stream_seq >= seq or (
                not info.num_ack_pending and info.delivered.stream_seq >= seq
            )
            if not given_up:
                # Maybe pending for the consumer (a live task, or an older one before it is):
                # not given up, whatever the advisory says. Checked again later.
                self._remember(seq, durable, deliveries)
                return
            try:
                raw = await js.get_msg(stream, seq)
            except Exception:
                return  # already settled (a late ack or term): nothing is stranded
            task_type = self._types_of[durable]
            if str(raw.subject) != self.subjects.task(task_type):
                return  # another consumer's task
            data = bytes(raw.data or b"")
            try:
                task_id = decode_task(data).id
            except DecodeError:
                task_id = f"{stream}:{seq}"
            task = Task(task_id=task_id, task_type=task_type, attempt=max(deliveries, 1))
            reason = (
                f"not acked within the ack wait of its last delivery ({deliveries}); worker lost"
            )
            await self._publish_final(
                task, TaskResult(task_id), reason, original=data, kind="stranded"
            )
            await js.delete_msg(stream, seq)
            log.warning("dead-lettered stranded task %s (%s): %s", task_id, task_type, reason)
            self.outcome_decided(task, dead_letter_result(task, reason))
        except Exception as exc:
            log.warning("could not dead-letter a stranded task of %s: %s", stream, exc)
            self._remember(seq, durable, deliveries)

    def _remember(self, seq: int, durable: str, deliveries: int) -> None:
        """Check the advisory again later (up to ADVISORY_BACKLOG of them)."""
        if self._nc is None:
            return
        if len(self._unconfirmed) >= ADVISORY_BACKLOG:
            log.warning("%d max-deliveries advisories unconfirmed: dropped one", ADVISORY_BACKLOG)
            return
        self._unconfirmed[seq] = (durable, deliveries)
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_stranded())

    async def _recheck_stranded(self) -> None:
        while self._unconfirmed and self._nc is not None:
            await asyncio.sleep(ADVISORY_RECHECK)
            for seq, (durable, deliveries) in list(self._unconfirmed.items()):
                await self._dead_letter_stranded(durable, seq, deliveries)

    def worker_config(self, config: Configuration) -> Configuration:
        """With the embedded server, its URL: worker processes use the server this source
        acquired (which stays up while the supervisor holds its lease)."""
        if self._lease is None:
            return config
        return config.replace(nats_url=",".join(self._servers), source="nats")

    def lease_interval(self, task: Task) -> float | None:
        """Half the consumer's ack wait (or of the task's own response timeout)."""
        clock = task.response_timeout_seconds or self.config.nats_ack_wait
        return clock / 2 if clock else None

    def spool_key(self) -> str:
        """The stream prefix and the servers' redacted URLs (the embedded server's: once started)."""
        urls = ",".join(redact_url(u) for u in self._servers)
        return f"nats {self.config.nats_prefix} {urls}"

    async def close(self) -> None:
        """Unsubscribe, drain and disconnect; release the embedded server. Safe to call twice."""
        nc, self._nc, self._js = self._nc, None, None
        subs, self._subs = self._subs, {}
        for durable, advisories in self._advisories.items():
            subs[f"$advisories {durable}"] = advisories
        self._advisories, self._unconfirmed = {}, {}
        if self._recheck is not None:
            self._recheck.cancel()
        if nc is not None:
            # An open pull subscription makes drain() hang for drain_timeout: unsubscribe first.
            for sub in subs.values():
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            try:
                await asyncio.wait_for(nc.drain(), API_TIMEOUT)
            except Exception:
                with contextlib.suppress(Exception):
                    await nc.close()
        await self._release_lease()

    # -- polling ----------------------------------------------------------------------------

    async def poll(self, request: PollRequest) -> list[Task]:
        """Fetch up to ``request.count`` tasks, waiting at most ``request.timeout`` seconds.

        Fetch only as many as can start now: JetStream's ack clock runs for every fetched
        message from its delivery. Undecodable messages are dead-lettered here, not returned.

        Raises:
            SourceError: the connection or the consumer failed (not on an empty poll).
        """
        if request.count < 1:
            return []
        sub = await self._subscription(request.task_type)
        try:
            messages = await sub.fetch(batch=request.count, timeout=max(request.timeout, 0.01))
        except asyncio.TimeoutError:
            # nats-py raises a bare asyncio.TimeoutError or its own subclass on an empty poll.
            return []
        except Exception as exc:
            raise await self._explain_fetch_error(request.task_type, exc) from None
        tasks = []
        for msg in messages:
            try:
                tasks.append(self._to_task(msg, request.task_type))
            except DecodeError as exc:
                await self._reject_undecodable(msg, request.task_type, exc)
        return tasks

    async def _explain_fetch_error(self, task_type: str, exc: Exception) -> SourceError:
        """Turn a fetch failure into a SourceError that says what to do about it."""
        stale = self._subs.pop(task_type, None)  # bind again next time
        if stale is not None:
            with contextlib.suppress(Exception):
                await stale.unsubscribe()
        durable = consumer_name(task_type)
        with contextlib.suppress(Exception):
            await self._require_js().consumer_info(self.subjects.tasks_stream, durable)
            return SourceError(
                f"fetching {task_type!r} tasks failed: {exc}", status=error_code(exc)
            )
        # nats-py reports a missing consumer as a vague 503; name the likely cause instead.
        return SourceError(
            f"fetching {task_type!r} tasks failed: no consumer {durable} on stream"
            f" {self.subjects.tasks_stream} (or the server is unreachable); the supervisor's"
            f" prepare() provisions it ({exc})",
            status=error_code(exc),
        )

    def _to_task(self, msg: Any, task_type: str) -> Task:
        message, input_data = parse_task(msg.data)
        # The reply subject carries the delivery count and stream sequence; reading it here
        # costs a third of nats-py's msg.metadata (which also builds datetimes).
        handle = parse_handle(msg.reply or "")
        if handle is not None:
            delivered, stream_seq = handle.delivered, handle.stream_seq
        else:
            metadata = msg.metadata
            delivered, stream_seq = metadata.num_delivered, metadata.sequence.stream
        if delivered > 1:
            metrics.get().taskfleet_nats_redeliveries.labels(task_type).inc()
        return task_from_message(
            message,
            input_data=input_data,
            task_type=task_type,
            handle=msg.reply,
            attempt=delivered,
            raw={"subject": msg.subject, "stream_sequence": stream_seq},
        )

    async def _reject_undecodable(self, msg: Any, task_type: str, exc: DecodeError) -> None:
        """FAILED result + dead-letter copy, then term; logged, never raised."""
        handle = parse_handle(msg.reply or "")
        seq = handle.stream_seq if handle else 0
        task = Task(
            task_id=task_id_of(msg.data) or f"{self.subjects.tasks_stream}:{seq}",
            task_type=task_type,
            attempt=handle.delivered if handle else 1,
            handle=msg.reply or "",
        )
        reason = f"undecodable task message: {exc}"
        try:
            await self._publish_final(
                task, TaskResult(task.task_id), reason, original=msg.data, kind="undecodable"
            )
            await self._settle(task.handle, _TERM)
        except SourceError as err:
            # Left un-acked: it comes back after ack_wait and is dead-lettered then.
            log.warning("could not dead-letter undecodable message %s: %s", task.task_id, err)
        else:
            log.warning("dead-lettered %s on %s: %s", task.task_id, msg.subject, reason)
            self.outcome_decided(task, dead_letter_result(task, reason))

    async def _subscription(self, task_type: str) -> Any:
        sub = self._subs.get(task_type)
        if sub is None:
            js = self._require_js()
            try:
                sub = await js.pull_subscribe_bind(
                    consumer_name(task_type), stream=self.subjects.tasks_stream
                )
            except Exception as exc:
                raise SourceError(f"cannot bind to the consumer of {task_type!r}: {exc}") from None
            self._subs[task_type] = sub
        return sub

    # -- reporting --------------------------------------------------------------------------

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        """Publish the outcome (PubAck awaited), then settle the task; see the module docstring.

        Works from a slim task: only ``task_id``, ``task_type``, ``attempt``, ``handle``,
        ``output_subject`` and the ids are used. Never returns a chained task.

        Raises:
            SourceError: a publish or the settlement failed; nothing was acked, so calling
                again later is safe (results are de-duplicated by ``Nats-Msg-Id``).
        """
        if not task.handle:
            raise SourceError(f"task {task.task_id} has no NATS handle", retryable=False)
        status = result.status
        if status is TaskStatus.COMPLETED:
            publishes = [self._publish_result(task, result)]
            subject = task.output_subject or self._output_subjects.get(task.task_type, "")
            if subject and "." not in subject:
                subject = self.subjects.task(subject)  # a bare name is the next task type
            if subject:
                publishes.append(self._publish_next(task, result, subject))
            await _all(publishes)
            await self._settle(task.handle, _ACK)
            return None

        left = await self._deliveries_left(task)
        if status is TaskStatus.IN_PROGRESS:
            if left:
                if result.output_data or result.logs:
                    # TaskInProgress's output is not lost: readers of progress events see it.
                    await self._publish_progress(task, result)
                await self._settle(task.handle, nak_payload(result.callback_after_seconds))
                return None
            if result.exception == HANDED_BACK:
                await self._republish(task)
                return None
            reason = f"still in progress after {task.attempt} deliveries"
        elif status is TaskStatus.FAILED and left:
            delay = result.retry_after
            if delay is None:
                delay = self._retry.delay(task.attempt)
            await self._settle(task.handle, nak_payload(delay))
            return None
        else:
            reason = result.reason_for_incompletion or "failed"
            if status is TaskStatus.FAILED:
                reason += f" (gave up after {task.attempt} attempts)"
        kind = "terminal" if status is TaskStatus.FAILED_WITH_TERMINAL_ERROR else "attempts_spent"
        await self._publish_final(task, result, reason, terminal=status, kind=kind)
        await self._settle(task.handle, _TERM)
        return None

    async def _republish(self, task: Task) -> None:
        """A task handed back on its last delivery: a fresh copy goes to the stream (PubAck
        awaited), then the old one is acked, so a drain does not dead-letter an unfinished
        task."""
        original, subject = await self._original(task)
        headers = {"Nats-Msg-Id": f"{task.task_id}:{task.attempt}:handed-back"}
        await self._publish(subject, original, headers)
        await self._settle(task.handle, _ACK)
        log.info("task %s handed back on its last delivery: published again", task.task_id)

    async def extend(self, tasks: Sequence[Task]) -> None:
        """Send ``+WPI`` for each task: JetStream restarts its ack clock.

        Raises:
            SourceError: the connection is closed.
        """
        for task in tasks:
            if task.handle:
                await self._settle(task.handle, _PROGRESS, sync=False)

    async def backlog(self, workers: Sequence[WorkerBinding]) -> dict[str, Backlog]:
        """Per type, its consumer's ``num_pending`` (not delivered yet: waiting) and
        ``num_ack_pending`` (delivered, not acked: held, naked retries included). A consumer
        that cannot be read is left out."""
        js = self._require_js()
        stream = self.subjects.tasks_stream
        infos = await asyncio.gather(
            *(js.consumer_info(stream, consumer_name(w.task_type)) for w in workers),
            return_exceptions=True,
        )
        out: dict[str, Backlog] = {}
        for worker, info in zip(workers, infos, strict=True):
            if isinstance(info, BaseException):
                log.debug("no backlog for %s: %r", worker.task_type, info)
                continue
            out[worker.task_type] = Backlog(int(info.num_pending), int(info.num_ack_pending))
        return out

    async def progress(
        self, task: Task, output: Mapping[str, Any] | None, logs: Sequence[TaskLog]
    ) -> None:
        """An in-progress ack (the ack wait starts again), then a progress event on
        ``<prefix>.progress.<type>``: an ``IN_PROGRESS`` result with the partial output and the
        new log lines, for ``TaskClient.progress`` and ``TaskClient.events``."""
        await self.extend([task])
        result = task.result(TaskStatus.IN_PROGRESS, output)
        result.logs = list(logs)
        await self._publish_progress(task, result)

    async def _publish_progress(self, task: Task, result: TaskResult) -> None:
        try:
            payload = encode_result(task, result)
            await self._require_nc().publish(self.subjects.progress(task.task_type), payload)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"progress of task {task.task_id} not published: {exc}") from None

    async def _deliveries_left(self, task: Task) -> bool:
        """Whether JetStream will deliver the task again after a nak."""
        handle = parse_handle(task.handle)
        durable = handle.consumer if handle else consumer_name(task.task_type)
        limit = self._max_deliver.get(durable)
        if limit is None:
            # Not provisioned by this process (a worker child): ask the consumer once.
            js = self._require_js()
            stream = handle.stream if handle else self.subjects.tasks_stream
            try:
                info = await js.consumer_info(stream, durable)
            except Exception as exc:
                raise SourceError(f"cannot read consumer {durable}: {exc}") from None
            limit = int(info.config.max_deliver or -1)
            self._max_deliver[durable] = limit
        return limit < 1 or task.attempt < limit

    async def _publish_result(
        self,
        task: Task,
        result: TaskResult,
        *,
        status: TaskStatus | None = None,
        reason: str | None = None,
    ) -> None:
        payload = encode_result(task, result, status=status, reason=reason)
        await self._publish(
            self.subjects.result(task.task_type),
            payload,
            {"Nats-Msg-Id": f"{task.task_id}:{task.attempt}"},
            what="output" if status is None else "result",
        )

    async def _publish_next(self, task: Task, result: TaskResult, subject: str) -> None:
        next_type = self.subjects.type_of_task_subject(subject)
        # Deterministic id: a redelivered producer republishes the same id, de-duplicated.
        next_id = f"{task.task_id}>{next_type}"
        payload = encode_task(
            next_id,
            next_type,
            result.output_data,
            workflow_id=task.workflow_instance_id,
            correlation_id=task.correlation_id or task.task_id,
            headers=task.headers,
        )
        await self._publish(subject, payload, {"Nats-Msg-Id": f"{next_id}:1"}, what="output")

    async def _publish_final(
        self,
        task: Task,
        result: TaskResult,
        reason: str,
        *,
        terminal: TaskStatus = TaskStatus.FAILED,
        original: bytes | None = None,
        kind: str = "attempts_spent",
    ) -> None:
        """A FAILED result and a dead-letter copy of the task, both PubAck'd.

        ``kind`` (undecodable, terminal, attempts_spent, stranded) labels the dead-letter count.
        """
        status = (
            TaskStatus.FAILED_WITH_TERMINAL_ERROR
            if terminal is TaskStatus.FAILED_WITH_TERMINAL_ERROR
            else TaskStatus.FAILED
        )
        await _all(
            [
                self._publish_result(task, result, status=status, reason=reason),
                self._dead_letter(task, reason, original),
            ]
        )
        metrics.get().taskfleet_dead_letters.labels(task.task_type, kind).inc()

    async def _dead_letter(self, task: Task, reason: str, original: bytes | None) -> None:
        subject = self.subjects.task(task.task_type)
        if original is None:
            # A slim task has no payload: the original is still in the work-queue stream
            # until the task is termed, so read it back by sequence.
            original, subject = await self._original(task)
        headers = {
            "Nats-Msg-Id": f"{task.task_id}:{task.attempt}:dead",
            REASON_HEADER: header_value(reason),
            SUBJECT_HEADER: subject,
            "Taskfleet-Task-Id": header_value(task.task_id),
            "Taskfleet-Attempt": str(task.attempt),
        }
        await self._publish(self.subjects.dead(task.task_type), original, headers)

    async def _original(self, task: Task) -> tuple[bytes, str]:
        handle = parse_handle(task.handle)
        if handle is not None:
            try:
                raw = await self._require_js().get_msg(handle.stream, handle.stream_seq)
                return bytes(raw.data or b""), str(raw.subject)
            except Exception as exc:
                log.warning("original of task %s not readable: %s", task.task_id, exc)
        rebuilt = encode_task(
            task.task_id,
            task.task_type,
            task.input_data,
            workflow_id=task.workflow_instance_id,
            correlation_id=task.correlation_id,
            output_subject=task.output_subject,
            headers=task.headers,
        )
        return rebuilt, self.subjects.task(task.task_type)

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], *, what: str = "message"
    ) -> None:
        """Publish to a stream and wait for its PubAck (a request with its own timeout: unlike
        publish_async's futures it cannot hang when the server rejects the message).

        What ``js.publish`` does, minus building a PubAck object nobody reads (~10 µs a task):
        the answer is checked for JetStream's error object only. A payload over the server's
        ``max_payload`` raises a SourceError that ``rejects_result`` (``what`` names it).
        """
        nc = self._require_nc()
        try:
            answer = await nc.request(subject, payload, timeout=API_TIMEOUT, headers=headers)
        except MaxPayloadError:
            raise SourceError(
                f"{what} is {_mb(len(payload))}; the server accepts at most"
                f" {_mb(nc.max_payload, exact=True)} per message (max_payload): return less,"
                f" e.g. store large data elsewhere and return a reference to it",
                rejects_result=True,
            ) from None
        except NoRespondersError:
            raise SourceError(
                f"publish to {subject} failed: no stream takes this subject (no responders)"
            ) from None
        except Exception as exc:
            raise SourceError(
                f"publish to {subject} failed: {exc}", status=error_code(exc)
            ) from None
        data = answer.data
        if data[:1] != b"{" or b'"error"' in data:  # the fast check; the JSON decides
            problem = _publish_problem(subject, data)
            if problem is not None:
                raise problem

    async def _settle(self, handle: str, payload: bytes, *, sync: bool | None = None) -> None:
        nc = self._require_nc()
        try:
            if self.ack_sync if sync is None else sync:
                await nc.request(handle, payload, timeout=API_TIMEOUT)
            else:
                await nc.publish(handle, payload)
        except Exception as exc:
            raise SourceError(f"settling task ({payload[:4].decode()}) failed: {exc}") from None

    # -- helpers ----------------------------------------------------------------------------

    def _require_nc(self) -> Any:
        if self._nc is None:
            raise SourceError("the NATS source is not started", retryable=False)
        return self._nc

    def _require_js(self) -> Any:
        self._require_nc()
        return self._js

    async def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await asyncio.to_thread(lease.release)


def _publish_problem(subject: str, data: bytes) -> SourceError | None:
    """The SourceError for an answer to a publish that is not a PubAck (JetStream's error
    object, or not JSON); None for a PubAck after all (a stream may be named "error")."""
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return SourceError(f"publish to {subject} failed: unexpected answer {data[:200]!r}")
    error = answer.get("error")
    if error is None and "stream" in answer:
        return None
    if not isinstance(error, dict):
        return SourceError(f"publish to {subject} failed: unexpected answer {data[:200]!r}")
    code = error.get("err_code")
    return SourceError(
        f"publish to {subject} failed: {error.get('description', 'refused')}"
        f" (code {error.get('code')}, err_code {code})",
        status=code if isinstance(code, int) else None,
        rejects_result=code == ERR_MESSAGE_TOO_LARGE,
    )


def _mb(size: int, *, exact: bool = False) -> str:
    """``2.0 MB`` (one decimal), or ``1 MB`` for a round limit (``exact``); MB = 2**20 bytes."""
    mb = size / (1 << 20)
    return f"{mb:g} MB" if exact else f"{mb:.1f} MB"


def dead_letter_result(task: Task, reason: str) -> TaskResult:
    """The outcome hooks see for a task the source dead-lettered without a handler's result."""
    result = task.result(TaskStatus.FAILED_WITH_TERMINAL_ERROR, reason=reason)
    result.exception = "DeadLetter"
    return result


async def _all(coroutines: Sequence[Any]) -> None:
    """Await publishes concurrently (their PubAcks pipeline); raise the first failure."""
    if len(coroutines) == 1:
        await coroutines[0]  # gather() would cost a Task and ~40 us for nothing
        return
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
