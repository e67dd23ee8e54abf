"""NatsSource against a real nats-server: provisioning, delivery, retries, dead letters, pipelines."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from typing import Any

import nats
import pytest
from helpers import eventually, run
from nats.js.api import RetentionPolicy

from taskfleet._config import Configuration
from taskfleet._errors import SourceError
from taskfleet._nats.wire import REASON_HEADER, Subjects, decode_result, encode_task
from taskfleet._sources.base import HANDED_BACK, PollRequest, WorkerBinding
from taskfleet._sources.nats import NatsSource
from taskfleet._task import TaskResult, TaskStatus

pytestmark = pytest.mark.slow


class Probe:
    """A separate raw connection: publishes tasks and inspects streams like an outsider."""

    def __init__(self, config: Configuration) -> None:
        self.config = config
        self.subjects = Subjects(config.nats_prefix)

    async def __aenter__(self) -> Probe:
        self.nc = await nats.connect(self.config.nats_url)
        self.js = self.nc.jetstream()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def submit(self, task_type: str, task_id: str, data: dict[str, Any], **kw: Any) -> None:
        payload = encode_task(task_id, task_type, data, **kw)
        await self.js.publish(
            self.subjects.task(task_type), payload, headers={"Nats-Msg-Id": task_id}
        )

    async def count(self, stream: str, subject: str) -> int:
        info = await self.js.stream_info(stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def tasks_left(self, task_type: str) -> int:
        return await self.count(self.subjects.tasks_stream, self.subjects.task(task_type))

    async def results(self, task_type: str) -> list[Any]:
        return [decode_result(m.data) for m in await self._all(self.subjects.result(task_type))]

    async def dead(self, task_type: str) -> list[Any]:
        return await self._all(self.subjects.dead(task_type))

    async def _all(self, subject: str) -> list[Any]:
        n = await self.count(self.subjects.results_stream, subject)
        if not n:
            return []
        sub = await self.js.subscribe(subject, ordered_consumer=True)
        try:
            return [await sub.next_msg(timeout=5) for _ in range(n)]
        finally:
            await sub.unsubscribe()


async def started(config: Configuration, *bindings: WorkerBinding, **kw: Any) -> NatsSource:
    source = NatsSource(config, retry_base=0.05, retry_cap=0.2, **kw)
    await source.start()
    if bindings:
        await source.prepare(bindings)
    return source


async def poll_one(source: NatsSource, task_type: str, timeout: float = 5.0) -> Any:
    tasks = await source.poll(PollRequest(task_type, 1, timeout, "w1"))
    assert len(tasks) == 1, f"expected one {task_type} task within {timeout} s"
    return tasks[0]


def test_provisioning_twice_is_idempotent_and_updates_changed_settings(nats_config):
    async def scenario() -> None:
        source = await started(nats_config)
        try:
            await source.prepare([WorkerBinding("resize")])
            await source.prepare([WorkerBinding("resize")])
            await source.prepare([WorkerBinding("resize", max_attempts=7)])
            js = source._js
            info = await js.consumer_info(source.subjects.tasks_stream, "resize")
            assert info.config.max_deliver == 7
            assert info.config.filter_subject == f"{nats_config.nats_prefix}.tasks.resize"
            tasks = await js.stream_info(source.subjects.tasks_stream)
            assert tasks.config.retention == RetentionPolicy.WORK_QUEUE
            results = await js.stream_info(source.subjects.results_stream)
            assert results.config.max_age == nats_config.nats_results_max_age
            assert set(results.config.subjects) == {
                f"{nats_config.nats_prefix}.results.>",
                f"{nats_config.nats_prefix}.dead.>",
            }
        finally:
            await source.close()
            await source.close()

    run(scenario())


def test_a_completed_task_has_one_result_and_leaves_the_work_queue(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("echo"))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("echo", "t-1", {"x": 1}, correlation_id="c", headers={"h": "v"})
                task = await poll_one(source, "echo")
                assert (task.task_id, task.task_type, task.attempt) == ("t-1", "echo", 1)
                assert task.input_data == {"x": 1}
                assert (task.correlation_id, dict(task.headers)) == ("c", {"h": "v"})
                assert task.handle.startswith("$JS.ACK.")
                result = task.result(TaskStatus.COMPLETED, {"y": 2}, worker_id="w1")
                result.log("did it")
                await source.report(task.slim(), result)
                # A second report of the same attempt is de-duplicated by Nats-Msg-Id.
                await source.report(task.slim(), result)
                await eventually(lambda: _is_zero(probe.tasks_left("echo")), what="the ack")
                (only,) = await probe.results("echo")
                assert only.task_id == "t-1" and only.attempt == 1
                assert only.status == only.COMPLETED and only.output == b'{"y":2}'
                assert [log.message for log in only.logs] == ["did it"]
            finally:
                await source.close()

    run(scenario())


def test_the_task_is_not_acked_when_its_result_cannot_be_published(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("echo"))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("echo", "t-1", {})
                task = await poll_one(source, "echo")
                await probe.js.delete_stream(source.subjects.results_stream)
                with pytest.raises(SourceError, match="results"):
                    await source.report(task.slim(), task.result())
                info = await probe.js.consumer_info(source.subjects.tasks_stream, "echo")
                assert info.num_ack_pending == 1, "the task must stay un-acked"
                assert await probe.tasks_left("echo") == 1
            finally:
                await source.close()

    run(scenario())


def test_a_failed_task_is_redelivered_with_a_higher_attempt_and_no_result(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("flaky", max_attempts=3))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("flaky", "t-1", {})
                first = await poll_one(source, "flaky")
                await source.report(first.slim(), first.result(TaskStatus.FAILED, reason="boom"))
                second = await poll_one(source, "flaky")
                assert (second.task_id, second.attempt) == ("t-1", 2)
                assert await probe.results("flaky") == []
                await source.report(second.slim(), second.result())
                await eventually(lambda: _is_zero(probe.tasks_left("flaky")), what="the ack")
                (only,) = await probe.results("flaky")
                assert only.status == only.COMPLETED and only.attempt == 2
            finally:
                await source.close()

    run(scenario())


def test_a_task_failing_every_delivery_ends_failed_with_a_dead_letter_copy(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("doomed", max_attempts=2))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("doomed", "t-1", {"n": 1})
                for attempt in (1, 2):
                    task = await poll_one(source, "doomed")
                    assert task.attempt == attempt
                    await source.report(task.slim(), task.result(TaskStatus.FAILED, reason="nope"))
                await eventually(lambda: _is_zero(probe.tasks_left("doomed")), what="the term")
                (result,) = await probe.results("doomed")
                assert (
                    result.status == result.FAILED and "gave up after 2 attempts" in result.reason
                )
                (dead,) = await probe.dead("doomed")
                assert "nope" in dead.headers[REASON_HEADER]
                assert b'{"n":1}' in dead.data, "the dead-letter copy carries the original task"
            finally:
                await source.close()

    run(scenario())


def test_a_task_handed_back_on_its_last_delivery_is_published_again_not_dead_lettered(
    nats_config,
):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("drained", max_attempts=1))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("drained", "t-1", {"n": 1})
                task = await poll_one(source, "drained")
                assert task.attempt == 1  # its only delivery
                result = task.result(TaskStatus.IN_PROGRESS, reason="handed back: drain")
                result.exception = HANDED_BACK
                await source.report(task.slim(), result)
                again = await poll_one(source, "drained")
                assert (again.task_id, again.input_data, again.attempt) == ("t-1", {"n": 1}, 1)
                await source.report(again, again.result(TaskStatus.COMPLETED, {"ok": True}))
                await eventually(lambda: _is_zero(probe.tasks_left("drained")), what="the ack")
                assert await probe.dead("drained") == []
                (final,) = await probe.results("drained")
                assert final.status == final.COMPLETED
            finally:
                await source.close()

    run(scenario())


def test_a_task_whose_last_delivery_expires_unacked_is_dead_lettered_not_stranded(nats_config):
    config = nats_config.replace(nats_ack_wait=1.0)

    async def scenario() -> None:
        supervisor = await started(config, WorkerBinding("lost", max_attempts=1))
        worker = await started(config)
        async with Probe(config) as probe:
            try:
                await probe.submit("lost", "t-1", {"n": 1})
                await poll_one(worker, "lost")  # ... and the worker vanishes without a word
                await eventually(lambda: _is_zero(probe.tasks_left("lost")), what="the reaping")
                (result,) = await probe.results("lost")
                assert result.task_id == "t-1" and result.status == result.FAILED
                assert "last delivery" in result.reason
                (dead,) = await probe.dead("lost")
                assert b'{"n":1}' in dead.data
            finally:
                await worker.close()
                await supervisor.close()

    run(scenario())


def test_a_terminal_error_is_dead_lettered_at_once(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("strict"))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("strict", "t-1", {})
                task = await poll_one(source, "strict")
                result = task.result(TaskStatus.FAILED_WITH_TERMINAL_ERROR, reason="bad input")
                await source.report(task.slim(), result)
                await eventually(lambda: _is_zero(probe.tasks_left("strict")), what="the term")
                (only,) = await probe.results("strict")
                assert only.status == only.FAILED_WITH_TERMINAL_ERROR and only.reason == "bad input"
                assert len(await probe.dead("strict")) == 1
            finally:
                await source.close()

    run(scenario())


def test_undecodable_bytes_are_dead_lettered_with_a_reason_and_polling_goes_on(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("bytes"))
        async with Probe(nats_config) as probe:
            try:
                await probe.js.publish(source.subjects.task("bytes"), os.urandom(64) + b"\xff\xff")
                assert await source.poll(PollRequest("bytes", 5, 2.0, "w1")) == []
                await eventually(lambda: _is_zero(probe.tasks_left("bytes")), what="the term")
                (dead,) = await probe.dead("bytes")
                assert "undecodable" in dead.headers[REASON_HEADER]
                (result,) = await probe.results("bytes")
                assert result.status == result.FAILED and "undecodable" in result.reason
                await probe.submit("bytes", "good", {})
                assert (await poll_one(source, "bytes")).task_id == "good"
            finally:
                await source.close()

    run(scenario())


def test_a_message_naming_another_task_type_is_a_decode_error_settled_on_its_own_subject(
    nats_config,
):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("mine"), WorkerBinding("theirs"))
        async with Probe(nats_config) as probe:
            try:
                # Published on mine's subject, but the message says it is a "theirs" task.
                payload = encode_task("liar", "theirs", {})
                await probe.js.publish(source.subjects.task("mine"), payload)
                assert await source.poll(PollRequest("mine", 5, 2.0, "w1")) == []
                await eventually(lambda: _is_zero(probe.tasks_left("mine")), what="the term")
                (result,) = await probe.results("mine")
                assert result.task_id == "liar" and result.task_type == "mine"
                assert result.status == result.FAILED
                assert "says type 'theirs' but came on the subject of 'mine'" in result.reason
                assert await probe.results("theirs") == []
            finally:
                await source.close()

    run(scenario())


def test_a_result_over_the_max_payload_is_refused_for_good_naming_both_sizes(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("big"))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("big", "b1", {})
                task = await poll_one(source, "big")
                result = TaskResult(task.task_id, output_data={"blob": "x" * 2_100_000})
                with pytest.raises(SourceError) as caught:
                    await source.report(task, result)
                assert caught.value.rejects_result and not caught.value.retryable
                assert str(caught.value).startswith(
                    "output is 2.0 MB; the server accepts at most 1 MB per message"
                )
            finally:
                await source.close()

    run(scenario())


def test_in_progress_acks_hold_a_task_past_its_ack_wait(nats_config):
    config = nats_config.replace(nats_ack_wait=1.0)

    async def scenario() -> None:
        worker = await started(config, WorkerBinding("long"))
        other = await started(config)
        async with Probe(config) as probe:
            try:
                await probe.submit("long", "t-1", {})
                task = await poll_one(worker, "long")
                held_until = time.monotonic() + 2.5
                while time.monotonic() < held_until:
                    await worker.extend([task.slim()])
                    stolen = await other.poll(PollRequest("long", 1, 0.3, "w2"))
                    assert stolen == [], "an extended task must not be redelivered"
                # Without extensions the ack wait runs out and the task comes back.
                again = await poll_one(other, "long", timeout=5)
                assert (again.task_id, again.attempt) == ("t-1", 2)
            finally:
                await worker.close()
                await other.close()

    run(scenario())


def test_a_task_in_progress_comes_back_after_its_callback_delay(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("poller"))
        try:
            async with Probe(nats_config) as probe:
                await probe.submit("poller", "t-1", {})
            task = await poll_one(source, "poller")
            result = task.result(TaskStatus.IN_PROGRESS)
            result.callback_after_seconds = 0.2
            await source.report(task.slim(), result)
            again = await poll_one(source, "poller")
            assert (again.task_id, again.attempt) == ("t-1", 2)
        finally:
            await source.close()

    run(scenario())


def test_a_supervisor_connection_settles_a_slim_task_of_a_dead_worker(nats_config):
    async def scenario() -> None:
        worker = await started(nats_config, WorkerBinding("crashy", max_attempts=3))
        supervisor = NatsSource(nats_config)  # never prepared: learns max_deliver from the server
        await supervisor.start()
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("crashy", "t-1", {"big": "x" * 1000})
                slim = (await poll_one(worker, "crashy")).slim()
                await worker.close()  # the child is gone; its connection with it
                failed = TaskResult(slim.task_id, status=TaskStatus.FAILED_WITH_TERMINAL_ERROR)
                failed.reason_for_incompletion = "SIGSEGV in native code"
                await supervisor.report(slim, failed)
                await eventually(lambda: _is_zero(probe.tasks_left("crashy")), what="the term")
                (dead,) = await probe.dead("crashy")
                assert b"x" * 1000 in dead.data, "the original was read back from the stream"
                assert "SIGSEGV" in dead.headers[REASON_HEADER]
            finally:
                await worker.close()
                await supervisor.close()

    run(scenario())


def test_a_dead_url_fails_start_within_the_connect_timeout_naming_the_url(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the connect: nobody listens
    config = Configuration.from_env(
        {},
        nats_url=f"nats://alice:s3cret@127.0.0.1:{port}",
        nats_connect_timeout=2.0,
        state_dir=str(tmp_path),
    )
    began = time.monotonic()
    with pytest.raises(SourceError) as caught:
        run(NatsSource(config).start())
    assert time.monotonic() - began < 6
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_pipeline_hands_a_completed_output_to_the_next_worker_type(nats_config):
    async def scenario() -> None:
        next_subject = Subjects(nats_config.nats_prefix).task("stage_b")
        source = await started(
            nats_config,
            WorkerBinding("stage_a", output_subject=next_subject),
            WorkerBinding("stage_b"),
        )
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("stage_a", "job-1", {"n": 1})
                a = await poll_one(source, "stage_a")
                await source.report(a.slim(), a.result(TaskStatus.COMPLETED, {"n": 2}))
                b = await poll_one(source, "stage_b")
                assert b.input_data == {"n": 2}
                assert (b.task_id, b.correlation_id, b.attempt) == ("job-1>stage_b", "job-1", 1)
                await source.report(b.slim(), b.result(TaskStatus.COMPLETED, {"n": 3}))
                await eventually(lambda: _is_zero(probe.tasks_left("stage_a")), what="a's ack")
                await eventually(lambda: _is_zero(probe.tasks_left("stage_b")), what="b's ack")
                assert [r.task_id for r in await probe.results("stage_b")] == ["job-1>stage_b"]
            finally:
                await source.close()

    run(scenario())


def test_an_output_subject_on_the_task_itself_wins(nats_config):
    async def scenario() -> None:
        subjects = Subjects(nats_config.nats_prefix)
        source = await started(nats_config, WorkerBinding("first"), WorkerBinding("second"))
        async with Probe(nats_config) as probe:
            try:
                await probe.submit("first", "j", {}, output_subject=subjects.task("second"))
                a = await poll_one(source, "first")
                assert a.output_subject == subjects.task("second")
                await source.report(replace(a.slim()), a.result(TaskStatus.COMPLETED, {"ok": True}))
                assert (await poll_one(source, "second")).input_data == {"ok": True}
            finally:
                await source.close()

    run(scenario())


async def _is_zero(count: Any) -> bool:
    return await count == 0


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="needs Python 3.11")
def test_nothing_waits_in_an_empty_poll_beyond_its_timeout(nats_config):
    async def scenario() -> None:
        source = await started(nats_config, WorkerBinding("idle"))
        try:
            began = time.monotonic()
            assert await source.poll(PollRequest("idle", 10, 0.3, "w1")) == []
            assert time.monotonic() - began < 3
        finally:
            await source.close()

    run(scenario())
