"""Secrets stay secret beyond the logs: in ``repr`` of the settings, in what results carry to the
server, in ``/workers``; and what the pool keeps on disk is readable by its owner only."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import TaskStatus, add_log, worker_task
from taskfleet._config import Configuration
from taskfleet._control import ChildStatus, ControlClient
from taskfleet._errors import SourceError
from taskfleet._ledger import Ledger
from taskfleet._logs import configure_logging, secrets_of
from taskfleet._runner import Runner, run_inline
from taskfleet._sources.base import PollRequest
from taskfleet._sources.memory import MemorySource
from taskfleet._spool import Spool
from taskfleet._task import Task

PASSWORD = "pl4nted-nats-password"
URL_PASSWORD = "pl4nted-url-password"
URL = f"nats://worker:{URL_PASSWORD}@127.0.0.1:4222"


@pytest.fixture
def planted() -> Iterator[Configuration]:
    """A configuration holding secrets, logging set up from it as a worker process does."""
    config = Configuration.from_env({}, source="memory", nats_url=URL, nats_password=PASSWORD)
    logger = logging.getLogger("taskfleet")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    configure_logging(secrets=secrets_of(config), stream=io.StringIO())
    yield config
    configure_logging(stream=io.StringIO())  # forget the planted secrets
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _assert_clean(text: str) -> None:
    assert PASSWORD not in text and URL_PASSWORD not in text, text


def test_repr_of_the_settings_shows_no_credentials(planted):
    text = repr(planted) + str(planted)
    _assert_clean(text)
    assert "nats://***@127.0.0.1:4222" in text


@worker_task("leaky")
def leaky() -> None:
    add_log(f"connecting with password {PASSWORD} to {URL}")
    raise RuntimeError(f"login refused for {PASSWORD!r} at {URL}")


def test_reasons_and_task_logs_sent_to_the_server_are_redacted(planted):
    source = MemorySource()
    t = source.add("leaky")
    run_inline(leaky, source, max_tasks=1)
    result = source.final(t.task_id)
    assert result is not None and result.status is TaskStatus.FAILED
    _assert_clean(result.reason_for_incompletion or "")
    _assert_clean(" ".join(entry.log for entry in result.logs))
    assert "RuntimeError: login refused" in (result.reason_for_incompletion or "")


class _FailingOnce(MemorySource):
    async def poll(self, request: PollRequest) -> list[Task]:
        if self.polls == 0:
            self.polls += 1
            raise SourceError(f"cannot reach {URL}: password {PASSWORD} refused")
        return await super().poll(request)


class _Recorder(ControlClient):
    def __init__(self) -> None:
        super().__init__(None)
        self.statuses: list[ChildStatus] = []

    def heartbeat(self, status: ChildStatus) -> None:
        self.statuses.append(status)


def test_the_last_error_shown_by_workers_is_redacted(planted):
    import asyncio

    source = _FailingOnce()
    source.add("leaky")
    control = _Recorder()
    asyncio.run(Runner(leaky, source, control=control, max_tasks=1).run())
    errors = [s.last_error for s in control.statuses if s.last_error]
    assert errors, "no heartbeat carried the poll error"
    for error in errors:
        _assert_clean(error)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_directory_and_the_spool_are_the_owners_only(tmp_path, loose_umask):
    state = tmp_path / "state"
    spool = Spool(state / "spool.sqlite3", "memory")
    spool.close()
    assert _mode(state) == 0o700
    for path in state.iterdir():
        assert _mode(path) & 0o077 == 0, f"{path.name} is {oct(_mode(path))}"


def test_an_existing_state_directory_is_tightened(tmp_path, loose_umask):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "spool.sqlite3").touch(mode=0o644)
    Spool(state / "spool.sqlite3", "memory").close()
    assert _mode(state) == 0o700
    assert _mode(state / "spool.sqlite3") == 0o600


def test_ledger_files_are_the_owners_only(tmp_path, loose_umask):
    Ledger.create(tmp_path / "ledger", 4)
    assert _mode(tmp_path / "ledger") == 0o600
