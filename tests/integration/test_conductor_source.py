"""The Conductor source speaks the task API to the in-memory server over real HTTP."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from taskfleet._config import Configuration
from taskfleet._errors import SourceError
from taskfleet._sources import PollRequest, WorkerBinding
from taskfleet._sources.conductor import ConductorSource
from taskfleet._task import Task, TaskResult, TaskStatus
from taskfleet.testing import ConductorTestServer
from taskfleet.testing import conductor as testing_conductor

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_source(url: str, **settings: Any) -> ConductorSource:
    return ConductorSource(Configuration.from_env({}, conductor_server_url=url, **settings))


async def poll_once(source: ConductorSource, request: PollRequest) -> list[Task]:
    try:
        return await source.poll(request)
    finally:
        await source.close()


def request(task_type: str = "t", count: int = 1, timeout: float = 0.0, **kw: Any) -> PollRequest:
    return PollRequest(task_type=task_type, count=count, timeout=timeout, worker_id="w1", **kw)


@pytest.fixture
def server() -> Iterator[ConductorTestServer]:
    with ConductorTestServer() as srv:
        yield srv


@pytest.fixture
def source(server: ConductorTestServer) -> Iterator[ConductorSource]:
    src = make_source(server.url)
    yield src
    run(src.close())


def call(source: ConductorSource, coro_fn: Any) -> Any:
    """Run one coroutine of ``source`` on a fresh loop (the source outlives the loop)."""
    return run(coro_fn(source))


# -- polling ------------------------------------------------------------------------------------


def test_poll_returns_no_more_tasks_than_asked_for(server, source):
    server.enqueue_many("t", [{"n": i} for i in range(5)])

    tasks = call(source, lambda s: s.poll(request(count=3)))

    assert [t.input_data for t in tasks] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert server.counts() == {"IN_PROGRESS": 3, "SCHEDULED": 2}


def test_polled_tasks_are_mapped_from_the_wire(server, source):
    server.register_task_def("t", response_timeout_seconds=42, retry_count=1)
    task_id = server.enqueue("t", {"x": 1}, workflow_id="wf-9", correlation_id="c-1")
    (first,) = call(source, lambda s: s.poll(request()))
    call(source, lambda s: s.report(first, first.result(TaskStatus.FAILED, reason="once")))

    (task,) = call(source, lambda s: s.poll(request()))

    assert task.task_id == task_id and task.task_type == "t"
    assert task.input_data == {"x": 1}
    assert task.workflow_instance_id == "wf-9" and task.correlation_id == "c-1"
    assert (task.attempt, task.retry_count, task.poll_count) == (2, 1, 1)
    assert task.response_timeout_seconds == 42
    assert task.reference_task_name == "t_ref" and task.created_time > 0
    assert task.raw["workerId"] == "w1"


def test_a_trace_context_in_the_input_becomes_the_tasks_headers(server, source):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    server.enqueue("t", {"traceparent": traceparent, "tracestate": "k=v"})
    server.enqueue("t", {"traceparent": 7})  # not a string: not a trace context
    first, second = call(source, lambda s: s.poll(request(count=2)))
    # The in-flight ledger keeps headers, not input: the pool's own span for this task, if its
    # process dies, continues the same trace (docs/tracing.md).
    assert first.headers == {"traceparent": traceparent, "tracestate": "k=v"}
    assert first.input_data["traceparent"] == traceparent  # the handler's input is unchanged
    assert second.headers == {}


def test_poll_for_no_free_slots_makes_no_request(server, source):
    assert call(source, lambda s: s.poll(request(count=0))) == []
    assert server.request_count() == 0


def test_poll_sends_the_long_poll_wait_in_milliseconds_capped_at_five_seconds(server, source):
    call(source, lambda s: s.poll(request(timeout=0.05)))
    server.enqueue("t")
    call(source, lambda s: s.poll(request(timeout=30)))

    queries = [r.query for r in server.requests]
    assert "timeout=50" in queries[0] and "timeout=5000" in queries[1]
    assert "workerid=w1" in queries[0] and "count=1" in queries[0]


@pytest.mark.parametrize("empty_status", [200, 204])
def test_an_empty_poll_is_an_empty_list_whatever_the_server_answers(empty_status):
    with ConductorTestServer(empty_poll_status=empty_status) as srv:
        assert run(poll_once(make_source(srv.url), request())) == []


def test_a_task_nested_too_deeply_to_decode_fails_alone_and_the_batch_is_served(
    server, source, monkeypatch
):
    # The server sends one task whose input is 100,000 arrays deep: more than any JSON parser's
    # stack. Its bytes are spliced into the real answer, since the server cannot encode it either.
    deep = "[" * 100_000 + "]" * 100_000
    real_dumps = json.dumps
    monkeypatch.setattr(
        testing_conductor.json,
        "dumps",
        lambda obj, **kw: real_dumps(obj, **kw).replace('"@deep@"', deep),
    )
    ids = [server.enqueue("t", {"n": 1}), server.enqueue("t", {"v": "@deep@"})]
    ids.append(server.enqueue("t", {"n": 3}))
    tasks = run(poll_once(source, request(count=3)))
    assert [t.task_id for t in tasks] == [ids[0], ids[2]]
    job = server.job(ids[1])
    assert job.status == "FAILED_WITH_TERMINAL_ERROR"
    assert "nested too deeply" in (job.reason or "")


def test_poll_asks_for_the_workers_domain(server, source):
    server.enqueue("t")
    blue = server.enqueue("t", domain="blue")

    tasks = call(source, lambda s: s.poll(request(count=5, domain="blue")))

    assert [t.task_id for t in tasks] == [blue] and tasks[0].domain == "blue"


def test_the_source_reuses_its_connections(server, source):
    for _ in range(5):
        call(source, lambda s: s.poll(request()))
    assert server.connections_accepted <= 4  # at most one per pool thread


# -- results ------------------------------------------------------------------------------------


def test_report_without_chain_uses_post_tasks_and_hands_out_nothing(server, source):
    first, second = server.enqueue_many("t", [{}, {}])
    (task,) = call(source, lambda s: s.poll(request()))

    nxt = call(source, lambda s: s.report(task, task.result(output_data={"y": 1})))

    assert nxt is None
    assert server.job(first).status == "COMPLETED" and server.job(first).output == {"y": 1}
    assert server.job(second).status == "SCHEDULED"
    assert server.request_count("/tasks/update-v2") == 0


def test_output_with_dates_and_uuids_is_delivered_as_json(server, source):
    # requests' own encoder knows neither; the result used to raise out of report() and the
    # task waited for the server's response timeout.
    (task_id,) = server.enqueue_many("t", [{}])
    (task,) = call(source, lambda s: s.poll(request()))
    when = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID(int=7)

    call(source, lambda s: s.report(task, task.result(output_data={"at": when, "id": ident})))

    job = server.job(task_id)
    assert job.status == "COMPLETED"
    assert job.output == {"at": "2026-11-23T12:00:00+00:00", "id": str(ident)}


def test_output_that_is_not_json_fails_the_task_naming_the_value(server, source):
    from taskfleet._delivery import Delivery

    (task_id,) = server.enqueue_many("t", [{}])
    (task,) = call(source, lambda s: s.poll(request()))

    result = task.result(output_data={"bad": object()})
    call(source, lambda s: Delivery(s, None).deliver(task, result))

    job = server.job(task_id)
    assert job.status == "FAILED_WITH_TERMINAL_ERROR"
    assert "output.bad" in (job.reason or "")


def test_report_with_chain_returns_the_next_task_from_update_v2(server, source):
    first, second = server.enqueue_many("t", [{"n": 1}, {"n": 2}])
    (task,) = call(source, lambda s: s.poll(request()))

    nxt = call(source, lambda s: s.report(task, task.result(worker_id="w1"), chain=True))

    assert server.job(first).status == "COMPLETED"
    assert nxt is not None and nxt.task_id == second and nxt.input_data == {"n": 2}
    assert server.job(second).status == "IN_PROGRESS" and server.job(second).worker_id == "w1"
    assert call(source, lambda s: s.report(nxt, nxt.result(), chain=True)) is None


def test_a_server_without_update_v2_is_reported_to_with_post_tasks_from_then_on():
    with ConductorTestServer(legacy_update=True) as srv:
        ids = srv.enqueue_many("t", [{}, {}])
        source = make_source(srv.url)
        try:
            for _ in ids:
                (task,) = run(source.poll(request()))
                assert run(source.report(task, task.result(), chain=True)) is None
        finally:
            run(source.close())

        assert all(srv.job(i).status == "COMPLETED" for i in ids)
        assert srv.request_count("/tasks/update-v2") == 1
        assert srv.request_count("/tasks") - srv.request_count("/tasks/") == 2


def test_a_result_for_an_unknown_task_fails_without_retry_and_teaches_no_fallback(server, source):
    ghost = Task(task_id="ghost", task_type="t", workflow_instance_id="wf")

    with pytest.raises(SourceError) as info:
        call(source, lambda s: s.report(ghost, ghost.result(), chain=True))

    assert info.value.status == 404 and not info.value.retryable
    # The next chained report still asks update-v2: an unknown task taught nothing.
    server.enqueue("t")
    (task,) = call(source, lambda s: s.poll(request()))
    before = server.request_count("/tasks/update-v2")
    call(source, lambda s: s.report(task, task.result(), chain=True))
    assert server.request_count("/tasks/update-v2") == before + 1


def test_a_result_without_a_workflow_id_takes_it_from_the_task(server, source):
    task_id = server.enqueue("t")
    (task,) = call(source, lambda s: s.poll(request()))

    call(source, lambda s: s.report(task, TaskResult(task_id=task.task_id)))

    job = server.job(task_id)
    assert job.status == "COMPLETED" and job.history[0].worker_id == "w1"


def test_failures_logs_and_in_progress_reach_the_server(server, source):
    server.register_task_def("t", retry_count=0)
    task_id = server.enqueue("t")
    (task,) = call(source, lambda s: s.poll(request()))
    progress = task.result(TaskStatus.IN_PROGRESS)
    progress.callback_after_seconds = 0
    progress.log("halfway")
    call(source, lambda s: s.report(task, progress))
    (again,) = call(source, lambda s: s.poll(request()))

    failure = again.result(TaskStatus.FAILED_WITH_TERMINAL_ERROR, reason="bad input")
    call(source, lambda s: s.report(again, failure))

    job = server.job(task_id)
    assert again.poll_count == 2
    assert job.status == "FAILED_WITH_TERMINAL_ERROR" and job.reason == "bad input"
    assert job.logs == ("halfway",)


def test_extend_resets_the_response_timeout_clock_of_every_task(server, source):
    server.register_task_def("t", response_timeout_seconds=60)
    ids = server.enqueue_many("t", [{}, {}])
    tasks = call(source, lambda s: s.poll(request(count=2)))
    before = [server.job(i).lease_deadline for i in ids]

    call(source, lambda s: s.extend(tasks))

    after = [server.job(i).lease_deadline for i in ids]
    assert all(
        a is not None and b is not None and a > b for a, b in zip(after, before, strict=True)
    )
    assert all(server.job(i).status == "IN_PROGRESS" for i in ids)


@pytest.mark.slow
def test_extend_keeps_a_task_alive_past_its_response_timeout(server, source):
    server.register_task_def("t", response_timeout_seconds=1.0, retry_count=0)
    task_id = server.enqueue("t")
    tasks = call(source, lambda s: s.poll(request()))
    started = time.monotonic()

    while time.monotonic() - started < 1.5:  # outlive the response timeout by half
        half_gone = lambda: (server.job(task_id).lease_remaining or 0) < 0.5  # noqa: E731
        assert server.wait_for(half_gone, timeout=2)
        call(source, lambda s: s.extend(tasks))

    job = server.job(task_id)
    assert job.status == "IN_PROGRESS" and job.history == ()


# -- auth ---------------------------------------------------------------------------------------


def test_the_source_fetches_a_token_once_and_sends_it():
    with ConductorTestServer(auth=("key", "secret")) as srv:
        srv.enqueue("t")
        source = make_source(srv.url, conductor_auth_key="key", conductor_auth_secret="secret")
        try:
            assert len(run(source.poll(request()))) == 1
            assert run(source.poll(request())) == []
        finally:
            run(source.close())
        assert srv.request_count("/token") == 1
        assert [r.status for r in srv.requests if r.path.startswith("/tasks")] == [200, 204]


def test_an_expired_token_is_refreshed_once_and_the_call_retried():
    with ConductorTestServer(auth=("key", "secret")) as srv:
        source = make_source(srv.url, conductor_auth_key="key", conductor_auth_secret="secret")
        try:
            run(source.poll(request()))
            srv.expire_tokens()
            srv.enqueue("t")
            assert len(run(source.poll(request()))) == 1
        finally:
            run(source.close())
        assert srv.request_count("/token") == 2
        assert [r.status for r in srv.requests if r.path.startswith("/tasks")] == [204, 401, 200]


def test_concurrent_first_calls_share_one_token_fetch():
    with ConductorTestServer(auth=("key", "secret")) as srv:
        source = make_source(srv.url, conductor_auth_key="key", conductor_auth_secret="secret")

        async def four_polls() -> list[list[Task]]:
            try:
                return await asyncio.gather(*(source.poll(request()) for _ in range(4)))
            finally:
                await source.close()

        assert run(four_polls()) == [[], [], [], []]
        assert srv.request_count("/token") == 1


def test_wrong_credentials_fail_without_retry_and_without_the_secret():
    with ConductorTestServer(auth=("key", "secret")) as srv:
        source = make_source(srv.url, conductor_auth_key="key", conductor_auth_secret="hunter2")
        with pytest.raises(SourceError) as info:
            run(poll_once(source, request()))
    assert info.value.status == 401 and not info.value.retryable
    assert "hunter2" not in str(info.value)


def test_a_server_without_auth_is_used_without_a_token(server):
    server.enqueue("t")
    source = make_source(server.url, conductor_auth_key="key", conductor_auth_secret="secret")
    try:
        assert len(run(source.poll(request()))) == 1
        run(source.poll(request()))
    finally:
        run(source.close())
    assert server.request_count("/token") == 1


def test_a_server_that_wants_auth_tells_a_source_without_credentials_what_to_set():
    with ConductorTestServer(auth=("key", "secret")) as srv, pytest.raises(SourceError) as info:
        run(poll_once(make_source(srv.url), request()))
    assert info.value.status == 401 and not info.value.retryable
    assert "CONDUCTOR_AUTH_KEY" in str(info.value)


# -- start-up: the server must answer before any worker starts ---------------------------------

BINDINGS = [WorkerBinding(task_type="t")]


def prepare(source: ConductorSource) -> None:
    async def go() -> None:
        try:
            await source.prepare(BINDINGS)
        finally:
            await source.close()

    run(go())


def test_start_up_against_a_server_that_answers_takes_no_task(server):
    server.enqueue("t")
    prepare(make_source(server.url))
    assert server.request_count("/tasks/queue/sizes") == 1
    assert server.request_count("/tasks/poll/batch/t") == 0


def test_start_up_against_a_refused_port_says_so_and_names_the_setting(server):
    server.go_down("refuse")
    with pytest.raises(SourceError) as info:
        prepare(make_source(server.url))
    assert str(info.value) == (
        f"cannot reach the Conductor server at {server.url}: connection refused (nothing listens"
        " there); check CONDUCTOR_SERVER_URL and that the server is running"
    )


def test_start_up_behind_a_gateway_whose_server_is_down_fails(server):
    server.go_down("503")
    with pytest.raises(SourceError) as info:
        prepare(make_source(server.url))
    assert "HTTP 503 from a gateway (the server behind it is down)" in str(info.value)


def test_start_up_with_credentials_the_server_rejects_names_them():
    with ConductorTestServer(auth=("key", "secret")) as srv, pytest.raises(SourceError) as info:
        prepare(make_source(srv.url, conductor_auth_key="key", conductor_auth_secret="hunter2"))
    assert "rejected the credentials (HTTP 401): check CONDUCTOR_AUTH_KEY" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_start_up_without_credentials_a_server_wants_names_what_to_set():
    with ConductorTestServer(auth=("key", "secret")) as srv, pytest.raises(SourceError) as info:
        prepare(make_source(srv.url))
    assert "set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET" in str(info.value)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (429, True), (400, False), (404, False), (409, False)],
)
def test_error_answers_become_source_errors_with_the_right_retry_flag(
    server, source, status, retryable
):
    server.inject_errors(1, status=status)

    with pytest.raises(SourceError) as info:
        call(source, lambda s: s.poll(request()))

    assert info.value.status == status and info.value.retryable is retryable
    assert server.request_count() == 1  # one attempt: retrying is the runner's job


def test_a_refused_connection_is_a_retryable_source_error(server, source):
    server.go_down("refuse")

    with pytest.raises(SourceError) as info:
        call(source, lambda s: s.poll(request()))

    assert info.value.retryable and info.value.status is None
    server.go_up()
    assert call(source, lambda s: s.poll(request())) == []


def test_a_server_answering_503_to_everything_is_retryable(server, source):
    server.go_down("503")
    task = Task(task_id="x", task_type="t", workflow_instance_id="wf")
    with pytest.raises(SourceError) as info:
        call(source, lambda s: s.report(task, task.result()))
    assert info.value.status == 503 and info.value.retryable


def test_a_slow_answer_times_out_as_a_retryable_error(server):
    source = make_source(server.url, http_read_timeout=0.1)
    server.set_delay(0.5)
    with pytest.raises(SourceError) as info:
        run(poll_once(source, request()))
    assert info.value.retryable and "timed out" in str(info.value)


def test_error_messages_never_show_url_credentials():
    with ConductorTestServer() as srv:
        port = srv.port
    source = make_source(f"http://user:pa55word@127.0.0.1:{port}/api")
    with pytest.raises(SourceError) as info:
        run(poll_once(source, request()))
    assert "pa55word" not in str(info.value) and "***" in str(info.value)


def test_a_closed_source_refuses_calls_and_closes_twice(server):
    source = make_source(server.url)
    run(source.start())
    run(source.close())
    run(source.close())
    with pytest.raises(SourceError) as info:
        run(source.poll(request()))
    assert not info.value.retryable


# -- the HTTP transport -------------------------------------------------------------------------


def test_blocking_calls_work_from_any_thread_on_one_connection_each(server, source):
    import threading

    ids = server.enqueue_many("t", [{}] * 6)
    results: list[str] = []

    def slot() -> None:
        for task in source.poll_blocking(request(count=3)):
            assert source.report_blocking(task, task.result(TaskStatus.COMPLETED)) is None
            results.append(task.task_id)

    threads = [threading.Thread(target=slot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == sorted(ids)
    assert server.wait_all_terminal(ids, timeout=5)
    assert server.connections_accepted == 2


def test_a_keep_alive_connection_the_server_cut_is_replaced_before_the_next_call(server, source):
    (first, second) = server.enqueue_many("t", [{}, {}])
    assert [t.task_id for t in source.poll_blocking(request())] == [first]
    server.go_down("refuse")  # cuts the open connection
    server.go_up()
    assert [t.task_id for t in source.poll_blocking(request())] == [second]
    assert server.connections_accepted == 1  # since the rebind: the new connection


class _Redirecting:
    """A server that answers every request with a redirect to ``target`` and records nothing;
    ``target`` records the headers it receives."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen: list[dict[str, str]] = []
        self.seen = seen

        class Target(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
        location = f"http://127.0.0.1:{self.target.server_address[1]}/api/tasks/poll/batch/t"

        class Redirect(Target):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        self.redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        self.url = f"http://127.0.0.1:{self.redirect.server_address[1]}/api"
        for srv in (self.target, self.redirect):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        for srv in (self.target, self.redirect):
            srv.shutdown()
            srv.server_close()


def test_a_redirect_is_an_error_and_never_followed_with_credentials():
    servers = _Redirecting()
    try:
        source = make_source(servers.url.replace("http://", "http://user:secret@"))
        with pytest.raises(SourceError) as info:
            source.poll_blocking(request())
        run(source.close())
    finally:
        servers.close()
    assert info.value.status == 302 and not info.value.retryable
    assert "redirect refused" in str(info.value) and "secret" not in str(info.value)
    assert servers.seen == []  # nothing, and no credentials, went to the redirect's target


@pytest.mark.parametrize(
    ("variable", "value", "scheme"),
    [("HTTPS_PROXY", "https://proxy:3128", "https"), ("HTTP_PROXY", "socks5://proxy:1080", "http")],
)
def test_a_proxy_that_cannot_be_used_fails_at_start_naming_the_variable(
    monkeypatch, variable, value, scheme
):
    from taskfleet._errors import ConfigurationError

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        make_source(f"{scheme}://conductor.example:8080/api")
    assert str(info.value).startswith(variable) and "\n" not in str(info.value)


def test_no_proxy_hosts_are_reached_directly(monkeypatch, server, source):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = make_source(server.url)
    try:
        assert direct.poll_blocking(request()) == []
    finally:
        run(direct.close())


def test_an_http_proxy_is_sent_absolute_urls(monkeypatch, server):
    # The test server stands in for the proxy: it serves the path of an absolute URL. The
    # Conductor host does not resolve, so an answer proves the request went through the proxy.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:proxypass@127.0.0.1:{server.port}")
    task_id = server.enqueue("t", {})
    proxied = make_source("http://conductor.invalid:8080/api")
    try:
        assert [t.task_id for t in proxied.poll_blocking(request())] == [task_id]
    finally:
        run(proxied.close())
    assert server.requests[-1].path == "/tasks/poll/batch/t"
