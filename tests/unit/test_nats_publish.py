"""Reading a JetStream PubAck without nats-py's js.publish: errors are found, PubAcks pass.

The byte strings are what nats-server 2.x answered (captured from a real server), including
a stream literally named "error".
"""

from __future__ import annotations

import pytest

from taskfleet._sources.nats import _publish_problem

FULL = (
    b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},'
    b'"stream":"error","seq":0}'
)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"stream":"error","seq":1}',
        b'{"stream":"error","seq":1,"duplicate": true}',
        b'{"stream":"TASKFLEET_RESULTS","domain":"hub","seq":7}',
    ],
)
def test_pubacks_are_not_problems(answer):
    assert _publish_problem("r.x", answer) is None


def test_a_jetstream_error_names_its_description_and_code():
    problem = _publish_problem("r.x", FULL)
    assert problem is not None
    assert "maximum messages exceeded" in str(problem) and "10077" in str(problem)
    assert problem.status == 10077 and problem.retryable


@pytest.mark.parametrize("answer", [b"", b"not json", b"[1]", b'{"seq":1}', b'{"error":"x"}'])
def test_anything_else_is_an_unexpected_answer(answer):
    problem = _publish_problem("r.x", answer)
    assert problem is not None and "unexpected answer" in str(problem)
