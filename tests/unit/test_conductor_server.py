"""The in-memory Conductor server keeps Conductor's task lifecycle over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from taskfleet.testing import ConductorTestServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server() -> Iterator[ConductorTestServer]:
    with ConductorTestServer() as srv:
        yield srv


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def poll(
    http: requests.Session,
    server: ConductorTestServer,
    task_type: str,
    *,
    count: int = 1,
    timeout_ms: int = 0,
    worker: str = "w1",
    domain: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    params: dict[str, Any] = {"workerid": worker, "count": count, "timeout": timeout_ms}
    if domain:
        params["domain"] = domain
    return http.get(
        f"{server.url}/tasks/poll/batch/{task_type}", params=params, headers=headers, timeout=10
    )


def polled(http: requests.Session, server: ConductorTestServer, task_type: str, **kw: Any) -> list:
    resp = poll(http, server, task_type, **kw)
    assert resp.status_code in (200, 204), resp.text
    return resp.json() if resp.status_code == 200 else []


def result(task: dict[str, Any], status: str = "COMPLETED", **extra: Any) -> dict[str, Any]:
    return {
        "taskId": task["taskId"],
        "workflowInstanceId": task["workflowInstanceId"],
        "workerId": "w1",
        "status": status,
        **extra,
    }


def update(http: requests.Session, server: ConductorTestServer, body: dict, v2: bool = False):
    path = "/tasks/update-v2" if v2 else "/tasks"
    return http.post(server.url + path, json=body, timeout=10)


# -- polling ------------------------------------------------------------------------------------


def test_batch_poll_hands_out_up_to_count_tasks_in_order_and_starts_them(server, http):
    ids = server.enqueue_many("resize", [{"n": i} for i in range(3)])

    tasks = polled(http, server, "resize", count=2, worker="host-a")

    assert [t["taskId"] for t in tasks] == ids[:2]
    assert [t["inputData"] for t in tasks] == [{"n": 0}, {"n": 1}]
    assert all(t["status"] == "IN_PROGRESS" and t["pollCount"] == 1 for t in tasks)
    assert all(t["workerId"] == "host-a" and t["retryCount"] == 0 for t in tasks)
    job = server.job(ids[0])
    assert job.status == "IN_PROGRESS" and job.poll_count == 1 and job.worker_id == "host-a"
    assert server.counts() == {"IN_PROGRESS": 2, "SCHEDULED": 1}


def test_an_empty_poll_answers_204_by_default(server, http):
    assert poll(http, server, "nothing").status_code == 204


def test_an_empty_poll_answers_an_empty_array_when_configured_like_newer_servers(http):
    with ConductorTestServer(empty_poll_status=200) as srv:
        resp = poll(http, srv, "nothing")
    assert resp.status_code == 200 and resp.json() == []


def test_a_long_poll_wakes_as_soon_as_a_task_is_enqueued(server, http):
    got: list[Any] = []
    poller = threading.Thread(
        target=lambda: got.append(polled(http, server, "late", timeout_ms=5000))
    )
    started = time.monotonic()
    poller.start()
    assert server.wait_for(lambda: server.waiting_polls == 1, timeout=5)

    task_id = server.enqueue("late")
    poller.join(timeout=10)

    assert [t["taskId"] for t in got[0]] == [task_id]
    assert time.monotonic() - started < 4.5  # woken, not timed out


def test_a_poll_timeout_above_five_seconds_is_refused(server, http):
    resp = poll(http, server, "x", timeout_ms=5001)
    assert resp.status_code == 400
    assert resp.json()["code"] == "INVALID_INPUT"


def test_polls_only_see_tasks_of_their_own_domain(server, http):
    plain = server.enqueue("t")
    blue = server.enqueue("t", domain="blue")

    assert [t["taskId"] for t in polled(http, server, "t", count=5, domain="blue")] == [blue]
    assert [t["taskId"] for t in polled(http, server, "t", count=5)] == [plain]


# -- results ------------------------------------------------------------------------------------


def test_a_completed_result_finishes_the_task_with_its_output_and_worker(server, http):
    task_id = server.enqueue("t", {"x": 1})
    (task,) = polled(http, server, "t")

    resp = update(http, server, result(task, outputData={"y": 2}))

    assert resp.status_code == 200 and resp.text == task_id
    job = server.job(task_id)
    assert job.status == "COMPLETED" and job.output == {"y": 2} and job.terminal
    assert [(o.status, o.worker_id) for o in job.history] == [("COMPLETED", "w1")]


def test_updates_to_a_terminal_task_are_accepted_and_ignored(server, http):
    task_id = server.enqueue("t")
    (task,) = polled(http, server, "t")
    update(http, server, result(task, outputData={"first": True}))

    again = update(http, server, result(task, "FAILED", reasonForIncompletion="late"))

    assert again.status_code == 200
    job = server.job(task_id)
    assert job.status == "COMPLETED" and job.output == {"first": True} and len(job.history) == 1


def test_a_failed_task_is_retried_up_to_its_retry_count_then_stays_failed(server, http):
    server.register_task_def("flaky", retry_count=2)
    task_id = server.enqueue("flaky")

    for attempt in range(3):
        (task,) = polled(http, server, "flaky")
        assert task["retryCount"] == attempt
        update(http, server, result(task, "FAILED", reasonForIncompletion=f"boom {attempt}"))

    job = server.job(task_id)
    assert job.status == "FAILED" and job.retry_count == 2 and job.attempt == 3
    assert [o.reason for o in job.history] == ["boom 0", "boom 1", "boom 2"]
    assert polled(http, server, "flaky") == []


def test_a_retry_waits_for_the_retry_delay(server, http):
    server.register_task_def("slow_retry", retry_count=1, retry_delay_seconds=0.3)
    server.enqueue("slow_retry")
    (task,) = polled(http, server, "slow_retry")
    failed_at = time.monotonic()
    update(http, server, result(task, "FAILED"))

    assert polled(http, server, "slow_retry") == []
    (retry,) = polled(http, server, "slow_retry", timeout_ms=3000)
    assert time.monotonic() - failed_at >= 0.3
    assert retry["retryCount"] == 1


def test_a_terminal_error_is_never_retried(server, http):
    server.register_task_def("t", retry_count=5)
    task_id = server.enqueue("t")
    (task,) = polled(http, server, "t")

    update(http, server, result(task, "FAILED_WITH_TERMINAL_ERROR", reasonForIncompletion="bad"))

    job = server.job(task_id)
    assert job.status == "FAILED_WITH_TERMINAL_ERROR" and job.retry_count == 0
    assert job.reason == "bad"


def test_in_progress_with_a_callback_requeues_the_task_and_counts_the_poll(server, http):
    task_id = server.enqueue("t")
    (task,) = polled(http, server, "t")

    update(http, server, result(task, "IN_PROGRESS", callbackAfterSeconds=0.2))

    assert server.job(task_id).status == "SCHEDULED"
    assert polled(http, server, "t") == []
    (again,) = polled(http, server, "t", timeout_ms=3000)
    assert again["taskId"] == task_id and again["pollCount"] == 2 and again["retryCount"] == 0


def test_a_missed_response_timeout_requeues_the_task_as_a_retry(server, http):
    server.register_task_def("t", response_timeout_seconds=0.2, retry_count=1)
    task_id = server.enqueue("t")
    polled(http, server, "t", worker="crashed")

    assert server.wait_for(lambda: server.job(task_id).status == "SCHEDULED", timeout=5)
    job = server.job(task_id)
    assert job.retry_count == 1
    assert [(o.status, o.worker_id, o.reason) for o in job.history] == [
        ("TIMED_OUT", "crashed", "response timeout")
    ]
    (retry,) = polled(http, server, "t")
    assert retry["retryCount"] == 1 and retry["pollCount"] == 1


def test_a_response_timeout_with_no_retries_left_times_the_task_out(server, http):
    server.register_task_def("t", response_timeout_seconds=0.1, retry_count=0)
    task_id = server.enqueue("t")
    polled(http, server, "t")

    assert server.wait_all_terminal([task_id], timeout=5)
    assert server.job(task_id).status == "TIMED_OUT"


def test_an_attempt_past_its_total_timeout_times_out_even_with_time_left_on_its_lease(server, http):
    server.register_task_def("t", response_timeout_seconds=60, timeout_seconds=0.2, retry_count=0)
    task_id = server.enqueue("t")
    polled(http, server, "t")

    assert server.wait_all_terminal([task_id], timeout=5)
    job = server.job(task_id)
    assert job.status == "TIMED_OUT" and job.reason == "task timed out"


def test_a_lease_extension_resets_the_response_timeout_clock_but_applies_nothing(server, http):
    server.register_task_def("t", response_timeout_seconds=60)
    task_id = server.enqueue("t")
    (task,) = polled(http, server, "t")
    before = server.job(task_id).lease_deadline
    assert before is not None

    body = result(task, "IN_PROGRESS", extendLease=True, outputData={"ignored": 1})
    assert update(http, server, body).status_code == 200

    job = server.job(task_id)
    assert job.status == "IN_PROGRESS" and job.output == {} and job.history == ()
    assert job.lease_deadline is not None and job.lease_deadline > before


def test_update_v2_hands_the_next_task_of_the_same_type_to_the_same_worker(server, http):
    first, second = server.enqueue_many("t", [{}, {}])
    server.enqueue("other")
    (task,) = polled(http, server, "t")

    resp = update(http, server, result(task), v2=True)

    assert resp.status_code == 200
    assert resp.json()["taskId"] == second and resp.json()["workerId"] == "w1"
    assert server.job(first).status == "COMPLETED"
    assert server.job(second).status == "IN_PROGRESS"
    last = update(http, server, result(resp.json()), v2=True)
    assert last.status_code == 204


def test_a_legacy_server_answers_404_on_update_v2_but_accepts_post_tasks(http):
    with ConductorTestServer(legacy_update=True) as srv:
        task_id = srv.enqueue("t")
        (task,) = polled(http, srv, "t")
        assert update(http, srv, result(task), v2=True).status_code == 404
        assert update(http, srv, result(task)).status_code == 200
        assert srv.job(task_id).status == "COMPLETED"


def test_invalid_and_unknown_updates_get_the_servers_error_body(server, http):
    missing_wf = update(http, server, {"taskId": "x", "status": "COMPLETED"}, v2=True)
    unknown = update(
        http, server, {"taskId": "nope", "workflowInstanceId": "wf", "status": "COMPLETED"}
    )

    assert missing_wf.status_code == 400 and missing_wf.json()["retryable"] is False
    assert unknown.status_code == 404
    assert set(unknown.json()) >= {"status", "code", "message", "retryable"}


def test_logs_from_results_and_from_the_log_endpoint_are_kept_per_task(server, http):
    task_id = server.enqueue("t")
    (task,) = polled(http, server, "t")

    http.post(f"{server.url}/tasks/{task_id}/log", data="starting", timeout=10)
    logs = [{"log": "done", "taskId": task_id, "createdTime": 1}]
    update(http, server, result(task, logs=logs))

    assert server.job(task_id).logs == ("starting", "done")


def test_a_single_poll_and_a_task_lookup_answer_one_task(server, http):
    task_id = server.enqueue("t", {"x": 1})

    one = http.get(f"{server.url}/tasks/poll/t", params={"workerid": "w1"}, timeout=10)
    looked_up = http.get(f"{server.url}/tasks/{task_id}", timeout=10)

    assert one.json()["taskId"] == task_id
    assert looked_up.json()["status"] == "IN_PROGRESS"
    assert http.get(f"{server.url}/tasks/nope", timeout=10).status_code == 404


def test_queue_sizes_count_scheduled_tasks_per_type(server, http):
    server.register_task_def("a", retry_count=1)
    server.enqueue_many("a", [{}, {}])
    server.enqueue("b")
    server.enqueue("a", domain="d1")

    def sizes() -> dict:
        names = ["a", "b", "c", "d1:a"]
        return http.get(f"{server.url}/tasks/queue/sizes", params={"taskType": names}).json()

    assert sizes() == {"a": 2, "b": 1, "c": 0, "d1:a": 1}
    [task] = polled(http, server, "a")  # started: no longer waiting in the queue
    assert sizes() == {"a": 1, "b": 1, "c": 0, "d1:a": 1}
    http.post(f"{server.url}/tasks", json=result(task, "FAILED"))  # retried: queued again
    assert sizes() == {"a": 2, "b": 1, "c": 0, "d1:a": 1}


def test_task_definitions_can_be_registered_over_http(server, http):
    body = [{"name": "t", "retryCount": 0, "responseTimeoutSeconds": 0.1}]
    assert http.put(f"{server.url}/metadata/taskdefs", json=body).status_code == 200
    task_id = server.enqueue("t")
    polled(http, server, "t")
    assert server.wait_all_terminal([task_id], timeout=5)


# -- auth ---------------------------------------------------------------------------------------


def test_a_server_without_auth_answers_404_on_token(server, http):
    assert (
        http.post(f"{server.url}/token", json={"keyId": "k", "keySecret": "s"}).status_code == 404
    )


def test_a_server_with_auth_wants_a_token_in_x_authorization(http):
    with ConductorTestServer(auth=("key", "secret")) as srv:
        anonymous = poll(http, srv, "t")
        wrong = http.post(f"{srv.url}/token", json={"keyId": "key", "keySecret": "nope"})
        token = http.post(f"{srv.url}/token", json={"keyId": "key", "keySecret": "secret"})
        authed = poll(http, srv, "t", headers={"X-Authorization": token.json()["token"]})

    assert anonymous.status_code == 401 and anonymous.json()["error"] == "INVALID_TOKEN"
    assert wrong.status_code == 401
    assert authed.status_code == 204


def test_expired_tokens_answer_expired_token_until_a_new_one_is_fetched(http):
    with ConductorTestServer(auth=("key", "secret")) as srv:
        creds = {"keyId": "key", "keySecret": "secret"}
        old = {"X-Authorization": http.post(f"{srv.url}/token", json=creds).json()["token"]}
        srv.expire_tokens()
        expired = poll(http, srv, "t", headers=old)
        new = {"X-Authorization": http.post(f"{srv.url}/token", json=creds).json()["token"]}

        assert expired.status_code == 401 and expired.json()["error"] == "EXPIRED_TOKEN"
        assert poll(http, srv, "t", headers=new).status_code == 204


def test_tokens_expire_after_their_ttl(http):
    with ConductorTestServer(auth=("key", "secret"), token_ttl=0.0) as srv:
        token = http.post(f"{srv.url}/token", json={"keyId": "key", "keySecret": "secret"})
        resp = poll(http, srv, "t", headers={"X-Authorization": token.json()["token"]})
    assert resp.json()["error"] == "EXPIRED_TOKEN"


# -- faults -------------------------------------------------------------------------------------


def test_a_server_gone_down_refuses_connections_and_comes_back_on_the_same_port(server, http):
    port = server.port
    assert poll(http, server, "t").status_code == 204

    server.go_down("refuse")
    with pytest.raises(requests.ConnectionError):
        poll(http, server, "t")

    server.go_up()
    assert server.port == port
    assert poll(http, server, "t").status_code == 204


def test_going_down_cuts_a_long_poll_in_flight(server, http):
    errors: list[BaseException] = []

    def long_poll() -> None:
        try:
            poll(http, server, "t", timeout_ms=5000)
        except requests.RequestException as exc:
            errors.append(exc)

    poller = threading.Thread(target=long_poll)
    poller.start()
    assert server.wait_for(lambda: server.waiting_polls == 1, timeout=5)
    server.go_down("refuse")
    poller.join(timeout=5)

    assert not poller.is_alive() and len(errors) == 1


@pytest.mark.parametrize("mode", ["500", "503"])
def test_a_server_down_with_a_status_answers_it_to_every_request(server, http, mode):
    server.go_down(mode)
    assert poll(http, server, "t").status_code == int(mode)
    assert http.post(f"{server.url}/tasks", json={}).status_code == int(mode)
    server.go_up()
    assert poll(http, server, "t").status_code == 204


def test_injected_errors_fail_only_the_next_matching_requests(server, http):
    server.inject_errors(2, status=503, path_prefix="/tasks/poll")

    assert http.get(f"{server.url}/tasks/queue/sizes").status_code == 200
    assert [poll(http, server, "t").status_code for _ in range(3)] == [503, 503, 204]


def test_a_delay_holds_every_request(server, http):
    server.set_delay(0.2)
    started = time.monotonic()
    poll(http, server, "t")
    assert time.monotonic() - started >= 0.2


def test_requests_are_logged_with_path_and_status(server, http):
    poll(http, server, "t")
    http.post(f"{server.url}/tasks", json={})

    assert [(r.method, r.path, r.status) for r in server.requests] == [
        ("GET", "/tasks/poll/batch/t", 204),
        ("POST", "/tasks", 400),
    ]
    assert server.request_count("/tasks/poll") == 1 and server.request_count() == 2


def test_a_session_reuses_its_keep_alive_connection(server, http):
    for _ in range(5):
        poll(http, server, "t")
    assert server.connections_accepted == 1


def test_stop_ends_long_polls_and_start_and_stop_are_idempotent(http):
    srv = ConductorTestServer().start()
    srv.start()
    poller = threading.Thread(
        target=lambda: _swallow(lambda: poll(http, srv, "t", timeout_ms=5000))
    )
    poller.start()
    assert srv.wait_for(lambda: srv.waiting_polls == 1, timeout=5)

    srv.stop()
    srv.stop()
    poller.join(timeout=5)
    assert not poller.is_alive()


def test_wait_for_gives_up_after_its_timeout(server):
    task_id = server.enqueue("t")
    assert server.wait_for([task_id], timeout=0.05) is False


def _swallow(fn: Any) -> None:
    try:
        fn()
    except requests.RequestException:
        pass
