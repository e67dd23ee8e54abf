"""Logs: one line per event, task ids on every line of a running task, no secret in any line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator

import pytest

from taskfleet import Configuration, ConfigurationError, Task
from taskfleet._context import TaskContext, task_context
from taskfleet._logs import (
    RedactingFilter,
    TaskContextFilter,
    TextFormatter,
    configure_logging,
    secrets_of,
)

LOG = logging.getLogger("taskfleet.test")


@pytest.fixture(autouse=True)
def restore_taskfleet_logger() -> Iterator[None]:
    logger = logging.getLogger("taskfleet")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def running(task_id: str = "t-1", task_type: str = "resize", workflow: str = "wf-9"):
    return task_context(TaskContext(Task(task_id, task_type, workflow_instance_id=workflow)))


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_lines_carry_time_level_logger_pid_and_task():
    out = io.StringIO()
    configure_logging("info", "text", stream=out)
    with running():
        LOG.info("resized %s", "a.png")
    LOG.info("idle")
    inside, outside = lines(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO taskfleet\.test \[\d+\] "
        r"\[resize/t-1\] resized a\.png",
        inside,
    )
    assert outside.endswith(f"taskfleet.test [{os.getpid()}] [-] idle")


def test_json_lines_carry_the_running_tasks_ids():
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    with running():
        LOG.debug("step %d", 1, extra={"size": 42})
    LOG.warning("between tasks")
    first, second = (json.loads(line) for line in lines(out))
    assert first["message"] == "step 1"
    assert first["level"] == "DEBUG"
    assert first["logger"] == "taskfleet.test"
    assert isinstance(first["pid"], int)
    assert (first["task_id"], first["task_type"], first["workflow_id"]) == ("t-1", "resize", "wf-9")
    assert first["size"] == 42
    assert "task_id" not in second


def test_every_line_of_concurrent_tasks_carries_its_own_task_id():
    out = io.StringIO()
    configure_logging("info", "json", stream=out)

    def work(task_id: str) -> None:
        with running(task_id):
            for i in range(20):
                LOG.info("%s step %d", task_id, i)

    async def async_work(task_id: str) -> None:
        with running(task_id):
            for i in range(20):
                LOG.info("%s step %d", task_id, i)
                await asyncio.sleep(0)

    async def both() -> None:
        await asyncio.gather(async_work("a-1"), async_work("a-2"))

    threads = [threading.Thread(target=work, args=(f"t-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    asyncio.run(both())
    for t in threads:
        t.join(timeout=10)
    entries = [json.loads(line) for line in lines(out)]
    assert len(entries) == 6 * 20
    for entry in entries:
        assert entry["message"].startswith(entry["task_id"] + " ")


def test_exceptions_are_included_in_json_lines():
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        raise ValueError("bad pixel")
    except ValueError:
        LOG.exception("resize failed")
    entry = json.loads(lines(out)[0])
    assert "ValueError: bad pixel" in entry["exc_info"]


def test_configuring_twice_does_not_duplicate_lines():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", stream=first)
    configure_logging("warning", "json", stream=second)
    LOG.info("dropped: below warning")
    LOG.warning("once")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in lines(second)] == ["once"]
    assert (
        sum(getattr(h, "_taskfleet", False) for h in logging.getLogger("taskfleet").handlers) == 1
    )


def test_taskfleet_lines_do_not_reach_the_root_logger_twice():
    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    root_handler = Collect()
    logging.getLogger().addHandler(root_handler)
    try:
        ours = io.StringIO()
        configure_logging("info", "text", stream=ours)
        LOG.info("only in our handler")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert "only in our handler" in ours.getvalue()
    assert not root_handler.records


@pytest.mark.parametrize(
    ("level", "fmt", "setting"),
    [("loud", "text", "TASKFLEET_LOG_LEVEL"), ("info", "xml", "TASKFLEET_LOG_FORMAT")],
)
def test_bad_level_or_format_names_the_setting(level, fmt, setting):
    with pytest.raises(ConfigurationError) as err:
        configure_logging(level, fmt, stream=io.StringIO())
    assert err.value.setting == setting


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "secret_part"),
    [
        ("connecting to nats://alice:s3cr3t-pw@nats.example:4222", "s3cr3t-pw"),
        ("connecting to nats://tok3n-in-userinfo@nats.example:4222", "tok3n-in-userinfo"),
        ("headers {'X-Authorization': 'abcdef123456'}", "abcdef123456"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("GET /api/tasks?token=qwerty987&limit=1", "qwerty987"),
        ('{"password": "hunter2hunter2"}', "hunter2hunter2"),
        (
            "got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3b3JrZXIifQ.c2lnbmF0dXJl back",
            "eyJzdWIiOiJ3b3JrZXIifQ",
        ),
    ],
)
def test_token_looking_values_are_masked(message, secret_part):
    redacted = RedactingFilter().redact(message)
    assert secret_part not in redacted
    assert "***" in redacted


def test_urls_without_credentials_and_plain_words_are_left_alone():
    text = "polling http://conductor:8080/api for tokens of resize (password reset task)"
    assert RedactingFilter().redact(text) == text


def test_configured_secrets_are_masked_in_message_args_extras_and_tracebacks():
    out = io.StringIO()
    configure_logging("info", "json", secrets=["p4ss-w0rd-xyz"], stream=out)
    LOG.info("login with %s", "p4ss-w0rd-xyz", extra={"detail": "used p4ss-w0rd-xyz"})
    try:
        raise RuntimeError("server refused p4ss-w0rd-xyz")
    except RuntimeError:
        LOG.exception("failed %r", {"secret_value": "p4ss-w0rd-xyz"})
    assert "p4ss-w0rd-xyz" not in out.getvalue()
    assert out.getvalue().count("***") >= 4


def test_secrets_of_a_configuration_are_its_secret_settings_and_url_passwords():
    config = Configuration.from_env(
        {
            "NATS_URL": "nats://bob:url-pass@h1:4222,nats://h2:4222",
            "NATS_TOKEN": "nats-token-1",
            "TASKFLEET_METRICS_TOKEN": "metrics-token-1",
        }
    )
    assert sorted(secrets_of(config)) == ["metrics-token-1", "nats-token-1", "url-pass"]


def test_users_can_attach_the_filters_to_their_own_handler():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TaskContextFilter())
    handler.addFilter(RedactingFilter(["my-api-secret"]))
    handler.setFormatter(TextFormatter())
    mine = logging.getLogger("userapp.test_logs")
    mine.addHandler(handler)
    mine.propagate = False
    try:
        with running("t-7", "thumbnail"):
            mine.warning("calling with my-api-secret")
    finally:
        mine.removeHandler(handler)
    assert "[thumbnail/t-7] calling with ***" in out.getvalue()
