"""The NATS wire format's pure parts: names, handles, nak payloads, decoding failures."""

from __future__ import annotations

import json

import pytest

from taskfleet._errors import ConfigurationError, DecodeError
from taskfleet._nats.wire import (
    Subjects,
    consumer_name,
    decode_task,
    encode_result,
    encode_task,
    parse_handle,
    task_from_message,
)
from taskfleet._sources.nats import nak_payload
from taskfleet._task import Task, TaskResult, TaskStatus


def test_subjects_and_stream_names_follow_the_prefix():
    subjects = Subjects("acme.prod")
    assert subjects.task("resize") == "acme.prod.tasks.resize"
    assert subjects.result("resize") == "acme.prod.results.resize"
    assert subjects.dead("resize") == "acme.prod.dead.resize"
    assert (subjects.tasks_stream, subjects.results_stream) == (
        "ACME_PROD_TASKS",
        "ACME_PROD_RESULTS",
    )
    assert subjects.type_of_task_subject("acme.prod.tasks.a.b") == "a.b"


@pytest.mark.parametrize("bad", ["", "a b", "a*", "a.>", ".a", "a..b"])
def test_task_types_that_cannot_be_subject_tokens_are_refused(bad):
    with pytest.raises(ConfigurationError, match="task_type"):
        Subjects("p").task(bad)


def test_consumer_names_are_safe_and_do_not_collide():
    assert consumer_name("resize_image") == "resize_image"
    assert consumer_name("a.b") != consumer_name("a_b")
    assert all(c.isalnum() or c in "_-" for c in consumer_name("a.b/c d"))


def test_both_ack_subject_forms_are_parsed():
    v1 = parse_handle("$JS.ACK.S.C.3.17.9.1700000000000000000.0")
    v2 = parse_handle("$JS.ACK.dom.acchash.S.C.3.17.9.1700000000000000000.0.rnd")
    assert v1 == v2
    assert v1 is not None and (v1.stream, v1.consumer, v1.delivered, v1.stream_seq) == (
        "S",
        "C",
        3,
        17,
    )
    assert parse_handle("_INBOX.x") is None


def test_a_nak_delay_is_sent_in_nanoseconds():
    assert nak_payload(0) == b"-NAK"
    assert json.loads(nak_payload(1.5)[5:]) == {"delay": 1_500_000_000}


def test_a_task_round_trips_and_delivery_count_wins_over_the_wire_attempt():
    data = encode_task("id1", "t", {"a": [1]}, correlation_id="c", output_subject="p.tasks.u")
    task = task_from_message(decode_task(data), task_type="t", handle="h", attempt=3, raw={})
    assert (task.task_id, task.input_data, task.attempt, task.output_subject) == (
        "id1",
        {"a": [1]},
        3,
        "p.tasks.u",
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", "protobuf"),
        (encode_task("", "t", {}), "no id"),
    ],
)
def test_undecodable_tasks_raise_decode_errors_with_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_task(data)


def test_result_statuses_have_the_wire_names():
    from taskfleet._proto.taskfleet.v1 import task_pb2

    assert TaskStatus.COMPLETED.value == task_pb2.TaskResult.Status.Name(
        task_pb2.TaskResult.COMPLETED
    )
    result = TaskResult("id1", status=TaskStatus.FAILED_WITH_TERMINAL_ERROR)
    message = task_pb2.TaskResult.FromString(encode_result(Task("id1", "t"), result))
    assert message.status == task_pb2.TaskResult.FAILED_WITH_TERMINAL_ERROR
