"""Who may talk to the pool over NATS: the embedded server's credentials, its environment and
log, and max-deliveries advisories that must be confirmed before a task is deleted
(``docs/deployment.md``, Security)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
from helpers import run

from taskfleet._nats import server as server_module
from taskfleet._nats.embedded import EmbeddedNats
from taskfleet._nats.server import NatsServer
from taskfleet._nats.wire import Subjects, consumer_name, decode_result, encode_task
from taskfleet._sources import nats as nats_source
from taskfleet._sources.base import PollRequest, WorkerBinding
from taskfleet._sources.nats import NatsSource
from taskfleet._task import TaskStatus

pytestmark = pytest.mark.slow


def _bare(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


async def _refused(url: str) -> bool:
    try:
        client = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
        )
    except Exception as exc:
        return "Authorization" in str(exc)
    await client.close()
    return False


def test_a_client_without_the_embedded_servers_credentials_is_refused(tmp_path):
    async def probe(url: str) -> tuple[bool, bool, bool]:
        with_credentials = await nats.connect(url, allow_reconnect=False)
        await with_credentials.close()
        wrong = url.replace(urlsplit(url).password or "", "not-the-password")
        return True, await _refused(_bare(url)), await _refused(wrong)

    state = tmp_path / "state"
    with EmbeddedNats(state) as url:
        accepted, anonymous_refused, wrong_refused = run(probe(url))
        pid = json.loads((state / "nats" / "server.json").read_text())["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert accepted and anonymous_refused and wrong_refused
    password = urlsplit(url).password or ""
    assert len(password) >= 32
    assert password.encode() not in cmdline, "argv is readable by every local user"
    for name in ("credentials.json", "nats-server.conf"):
        mode = stat.S_IMODE((state / "nats" / name).stat().st_mode)
        assert mode == 0o600, f"{name} {oct(mode)}"
    # The next server of this state directory takes the same credentials.
    with EmbeddedNats(state) as again:
        assert again == url


def test_nats_server_gets_a_minimal_environment_not_the_parents(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_AUTH_SECRET", "planted-secret-value")
    with NatsServer(tmp_path) as server:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
    assert b"planted-secret-value" not in environ
    assert b"CONDUCTOR_AUTH_SECRET" not in environ


def test_the_servers_log_is_rotated_by_size_and_its_tail_read_from_the_end(tmp_path, monkeypatch):
    limit = 4096
    monkeypatch.setattr(server_module, "LOG_SIZE_LIMIT", limit, raising=False)
    # A log left by earlier runs, far over the limit: never read whole, and rotated away.
    (tmp_path / "nats-server.log").write_bytes(b"old line\n" * 100_000)

    async def knock(url: str, times: int) -> None:
        for _ in range(times):  # every refused connection is a line in the server's log
            await _refused(url)

    with NatsServer(tmp_path, user="taskfleet", password="right") as server:
        run(knock(server.url, 120))
        tail = server.log_tail()
    logs = sorted(tmp_path.glob("nats-server.log*"))
    assert len(logs) <= server_module.LOG_FILES, logs
    assert all(p.stat().st_size <= 2 * limit for p in logs), [p.stat().st_size for p in logs]
    assert len(tail) <= 4000 and "old line" not in tail


# -- max-deliveries advisories -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _pool_and_outsider(config, task_type: str):
    """A supervisor's source consuming ``task_type`` (one delivery), and a raw connection."""
    supervisor = NatsSource(config)
    await supervisor.start()
    await supervisor.prepare([WorkerBinding(task_type, max_attempts=1)])
    nc = await nats.connect(config.nats_url)
    try:
        yield supervisor, nc, nc.jetstream()
    finally:
        await nc.close()
        await supervisor.close()


async def _forge_advisory(nc, config, task_type: str, seq: int, **body) -> None:
    stream = Subjects(config.nats_prefix).tasks_stream
    durable = consumer_name(task_type)
    advisory = {"stream": stream, "consumer": durable, "stream_seq": seq, "deliveries": 1}
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"
    await nc.publish(subject, json.dumps({**advisory, **body}).encode())
    await nc.flush()


def test_a_forged_max_deliveries_advisory_deletes_no_live_task(nats_config, monkeypatch):
    """One task waits, one runs; an outsider claims both exhausted. Both stay, and the running
    one completes with its own result, no dead letter."""
    monkeypatch.setattr(nats_source, "ADVISORY_RECHECK", 0.2, raising=False)
    subjects = Subjects(nats_config.nats_prefix)

    async def scenario() -> None:
        async with _pool_and_outsider(nats_config, "live") as (supervisor, nc, js):
            seqs = []
            for task_id in ("running", "waiting"):
                payload = encode_task(task_id, "live", {"n": 1})
                seqs.append((await js.publish(subjects.task("live"), payload)).seq)
            (task,) = await supervisor.poll(PollRequest("live", 1, 5.0, "w1"))
            assert task.task_id == "running"
            for seq in seqs:
                await _forge_advisory(nc, nats_config, "live", seq)
            await asyncio.sleep(1.5)  # several re-checks
            info = await js.stream_info(subjects.tasks_stream)
            assert info.state.messages == 2, "a forged advisory deleted a live task"
            await supervisor.report(task.slim(), task.result(TaskStatus.COMPLETED, {"ok": True}))
            results = await js.stream_info(subjects.results_stream)
            assert results.state.messages == 1  # the real result, no dead letter beside it
            sub = await js.subscribe(subjects.result("live"), ordered_consumer=True)
            outcome = decode_result((await sub.next_msg(timeout=5)).data)
            assert outcome.task_id == "running" and outcome.status == outcome.COMPLETED

    run(scenario())


def test_an_advisory_about_a_consumer_that_is_not_the_pools_is_ignored(nats_config, monkeypatch):
    monkeypatch.setattr(nats_source, "ADVISORY_RECHECK", 0.2, raising=False)
    subjects = Subjects(nats_config.nats_prefix)

    async def scenario() -> None:
        async with _pool_and_outsider(nats_config, "mine") as (supervisor, nc, js):
            ack = await js.publish(subjects.task("mine"), encode_task("t-1", "mine", {}))
            # Named on the pool's own subject, but the body is about another consumer.
            await _forge_advisory(nc, nats_config, "mine", ack.seq, consumer="someone_else")
            await asyncio.sleep(1.0)
            info = await js.stream_info(subjects.tasks_stream)
            assert info.state.messages == 1
            assert supervisor._unconfirmed == {}

    run(scenario())
