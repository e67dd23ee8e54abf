"""The ``taskfleet`` command, run as a user runs it: a subprocess, its output and its exit code.

Every error path prints one line on stderr and exits with its documented code; only a user module
that raises on import gets a traceback. Tests that start a pool or a nats-server are ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskfleet import _cli as cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "examples.quickstart.workers"
TASKS = "examples/quickstart/tasks.json"


def taskfleet(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskfleet ARGS`` with a clean taskfleet environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TASKFLEET_", "NATS_"))}
    base.pop("CONDUCTOR_SERVER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "taskfleet", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


#: A pool logs at INFO what it finds at start-up (scratch directories of pools killed earlier
#: on this machine, say); the tests of its one-line errors are about the error line alone.
QUIET_START = {"TASKFLEET_LOG_LEVEL": "warning"}


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the documented exit code and a single ``taskfleet: ...`` line; return it."""
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taskfleet: ")
    assert "Traceback" not in done.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- help and exit codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["local"], ["submit"], ["results"], ["nats-server"], ["status"], ["config"]],
)
def test_every_command_has_help(command):
    done = taskfleet(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: taskfleet" in done.stdout
    assert "exit codes" in done.stdout


def test_exit_codes_are_documented_in_docs_cli():
    page = (ROOT / "docs" / "cli.md").read_text()
    for name in cli.__all__:
        if name.startswith("EXIT_"):
            assert f"`{getattr(cli, name)}`" in page and name in page, name


def test_python_dash_m_and_the_console_script_are_the_same_command():
    done = taskfleet("--version")
    assert done.returncode == 0 and done.stdout.startswith("taskfleet ")
    script = Path(sys.executable).parent / "taskfleet"
    if script.exists():  # installed with pip install -e .
        installed = subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        assert installed.stdout == done.stdout


# -- taskfleet local ----------------------------------------------------------------------


def test_local_runs_the_quickstart_tasks_and_all_complete():
    done = taskfleet("local", EXAMPLE, "--tasks", TASKS)
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    # One line per task as it finishes (worker types run side by side), then the summary.
    assert 'task-1  greet  COMPLETED  {"greeting":"Hello, Ada!"}' in lines
    assert any(line.startswith("task-3  fetch_length  COMPLETED  ") for line in lines)  # async
    assert len(lines) == 5 and lines[-1] == "4 task(s): 4 completed, 0 failed"


def test_local_accepts_a_file_path_and_an_attribute(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"input": {"name": "Lin"}}]))  # one worker: no task_type needed
    done = taskfleet("local", "examples/quickstart/workers.py:greet", "--tasks", str(tasks))
    assert done.returncode == cli.EXIT_OK, done.stderr
    assert 'COMPLETED  {"greeting":"Hello, Lin!"}' in done.stdout


def test_local_warns_about_unknown_keys_in_the_tasks_file_naming_file_and_entry(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"input": {"name": "Lin"}, "inputs": {}, "taskId": "x"}]))
    done = taskfleet("local", "examples/quickstart/workers.py:greet", "--tasks", str(tasks))
    assert done.returncode == cli.EXIT_OK, done.stderr
    assert done.stderr.splitlines() == [
        f"taskfleet: warning: {tasks}: task 1: unknown key(s) 'inputs', 'taskId' ignored"
        " (the keys are task_type, input, task_id)"
    ]


def test_local_exits_1_and_prints_reasons_when_tasks_fail():
    done = taskfleet("local", EXAMPLE, "--tasks", "examples/quickstart/failing-tasks.json")
    assert done.returncode == cli.EXIT_TASKS_FAILED
    assert "divide  FAILED_WITH_TERMINAL_ERROR  cannot divide by zero" in done.stdout
    assert "missing required parameter 'name'" in done.stdout
    assert done.stdout.strip().endswith("2 task(s): 0 completed, 2 failed")


def test_local_retries_a_failing_task_up_to_max_attempts(tmp_path):
    (tmp_path / "flaky_mod.py").write_text(
        "from taskfleet import worker_task\n"
        "calls = []\n"
        "@worker_task('flaky')\n"
        "def flaky(x: int) -> dict:\n"
        "    calls.append(x)\n"
        "    if len(calls) < 3:\n"
        "        raise RuntimeError(f'attempt {len(calls)} failed')\n"
        "    return {'calls': len(calls)}\n"
    )
    (tmp_path / "t.json").write_text('[{"input": {"x": 1}}]')
    done = taskfleet("local", "flaky_mod", "--tasks", "t.json", "--max-attempts", "3", cwd=tmp_path)
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert 'flaky  COMPLETED  {"calls":3}' in done.stdout
    done = taskfleet("local", "flaky_mod", "--tasks", "t.json", "--max-attempts", "2", cwd=tmp_path)
    assert done.returncode == cli.EXIT_TASKS_FAILED
    assert "flaky  FAILED  RuntimeError: attempt 2 failed" in done.stdout


def test_local_a_segfault_in_native_code_fails_that_task_naming_the_signal_and_the_rest_run(
    tmp_path, native_libs
):
    (tmp_path / "crashing_mod.py").write_text(
        "from examples.native.workers import segfault\n"
        "from taskfleet import worker_task\n"
        "@worker_task('maybe_crash')\n"
        "def maybe_crash(n: int, crash: bool = False) -> dict:\n"
        "    if crash:\n"
        "        segfault()\n"
        "    return {'n': n}\n"
    )
    tasks = [{"input": {"n": n, "crash": n == 3}} for n in range(1, 7)]
    (tmp_path / "t.json").write_text(json.dumps(tasks))
    done = taskfleet(
        "local", str(tmp_path / "crashing_mod.py"), "--tasks", str(tmp_path / "t.json")
    )
    assert done.returncode == cli.EXIT_TASKS_FAILED, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert "task-3  maybe_crash  FAILED  worker process killed by SIGSEGV" in lines
    for n in (1, 2, 4, 5, 6):
        assert f'task-{n}  maybe_crash  COMPLETED  {{"n":{n}}}' in lines
    assert lines[-1] == "6 task(s): 5 completed, 1 failed"
    assert "Segmentation fault" not in done.stderr


def test_local_bad_json_names_the_file_and_position(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text('[\n  {"task_type": "greet",, }\n]')
    line = one_line_error(taskfleet("local", EXAMPLE, "--tasks", str(tasks)), cli.EXIT_USAGE)
    assert f"{tasks}:2:" in line and "invalid JSON" in line


def test_local_missing_tasks_file_is_a_usage_error(tmp_path):
    line = one_line_error(
        taskfleet("local", EXAMPLE, "--tasks", str(tmp_path / "nope.json")), cli.EXIT_USAGE
    )
    assert "nope.json" in line


def test_local_unknown_task_type_is_a_usage_error(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"task_type": "resize", "input": {}}]))
    line = one_line_error(taskfleet("local", EXAMPLE, "--tasks", str(tasks)), cli.EXIT_USAGE)
    assert "unknown task type 'resize'" in line and "greet" in line


# -- loading modules ------------------------------------------------------------------------


def test_unknown_module_is_one_line_and_a_usage_error():
    line = one_line_error(taskfleet("local", "no_such_pkg.workers", "--tasks", TASKS), 2)
    assert "no module named 'no_such_pkg.workers'" in line


def test_unknown_attribute_is_one_line(tmp_path):
    line = one_line_error(taskfleet("local", f"{EXAMPLE}:nope", "--tasks", TASKS), 2)
    assert "has no attribute 'nope'" in line


def test_a_module_without_workers_is_a_usage_error(tmp_path):
    (tmp_path / "empty_mod.py").write_text("X = 1\n")
    line = one_line_error(
        taskfleet("local", "empty_mod", "--tasks", str(ROOT / TASKS), cwd=tmp_path), 2
    )
    assert "defines no workers" in line


def test_a_module_that_raises_on_import_prints_its_traceback_and_exits_3(tmp_path):
    (tmp_path / "broken_mod.py").write_text(
        "import json\nraise RuntimeError('boom in user code')\n"
    )
    done = taskfleet("run", "broken_mod", cwd=tmp_path)
    assert done.returncode == cli.EXIT_IMPORT_FAILED
    assert "Traceback" in done.stderr and "RuntimeError: boom in user code" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("taskfleet: importing 'broken_mod'")


def test_an_invalid_worker_option_is_one_line_at_the_users_line(tmp_path):
    (tmp_path / "zero_threads.py").write_text(
        "from taskfleet import worker_task\n\n\n"
        "@worker_task('resize_image', threads=0)\n"
        "def resize(x: int) -> dict:\n"
        "    return {'y': x}\n"
    )
    line = one_line_error(taskfleet("run", "zero_threads", cwd=tmp_path), cli.EXIT_USAGE)
    assert line == (
        "taskfleet: zero_threads.py:4: resize_image.threads: expected an integer >= 1, got 0"
    )


def test_a_missing_dependency_of_the_user_module_counts_as_its_import_failing(tmp_path):
    (tmp_path / "needs_dep.py").write_text("import surely_not_installed_pkg\n")
    done = taskfleet("run", "needs_dep", cwd=tmp_path)
    assert done.returncode == cli.EXIT_IMPORT_FAILED
    assert "surely_not_installed_pkg" in done.stderr


# -- settings ---------------------------------------------------------------------------------


def test_config_prints_every_setting_with_secrets_redacted():
    done = taskfleet(
        "config", env={"NATS_URL": "nats://u:hunter2@h:4222", "NATS_TOKEN": "s3cret-token"}
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout and "s3cret-token" not in done.stdout
    for var in ("TASKFLEET_SOURCE", "NATS_URL", "TASKFLEET_DRAIN_TIMEOUT", "TASKFLEET_LOG_FORMAT"):
        assert var in done.stdout
    assert '"***"' in done.stdout


def test_config_json_is_one_object():
    done = taskfleet("config", "--json", "--drain-timeout", "5")
    assert done.returncode == 0
    assert json.loads(done.stdout)["drain_timeout"] == 5.0


def test_an_invalid_setting_from_the_environment_is_named():
    line = one_line_error(
        taskfleet("config", env={"TASKFLEET_DRAIN_TIMEOUT": "soon"}), cli.EXIT_USAGE
    )
    assert "TASKFLEET_DRAIN_TIMEOUT" in line and "'soon'" in line


def test_run_with_a_progress_interval_that_is_not_positive_stops_in_one_line_naming_it():
    env = {**QUIET_START, "TASKFLEET_PROGRESS_INTERVAL": "0"}
    line = one_line_error(taskfleet("run", EXAMPLE, env=env), cli.EXIT_USAGE)
    assert "TASKFLEET_PROGRESS_INTERVAL" in line and "'0'" in line


def test_an_invalid_flag_value_names_the_setting_and_the_flag():
    line = one_line_error(taskfleet("run", EXAMPLE, "--nats-url", "localhost:4222"), 2)
    assert "NATS_URL (from --nats-url)" in line


def test_a_bad_metrics_address_stops_run_before_anything_starts():
    line = one_line_error(taskfleet("run", EXAMPLE, "--metrics-address", "nowhere"), 2)
    assert "TASKFLEET_METRICS_ADDRESS" in line


# -- status ---------------------------------------------------------------------------------


def test_status_with_a_bad_url_is_a_usage_error():
    line = one_line_error(taskfleet("status", "localhost:9464"), cli.EXIT_USAGE)
    assert "invalid URL" in line


def test_status_of_an_unreachable_pool_exits_4():
    line = one_line_error(taskfleet("status", f"http://127.0.0.1:{free_port()}"), 4)
    assert "cannot reach" in line


@pytest.fixture
def pool_with_token() -> Iterator[str]:
    """A pool's HTTP endpoint (a stand-in pool behind it) requiring the token ``s3cret``."""
    from taskfleet._admin import AdminServer
    from taskfleet._config import Configuration

    class Pool:
        def workers_status(self) -> list[dict[str, object]]:
            return [{"name": "greet#0", "pid": 7, "state": "running"}]

        def queues_status(self) -> dict[str, dict[str, object]]:
            return {
                "greet": {"processes": 1, "min": 1, "max": 3, "depth": 7, "waiting": 5, "held": 2},
                "shout": {"processes": 2, "min": 2, "max": 2},
            }

    config = Configuration.from_env({}, metrics_address="127.0.0.1:0", metrics_token="s3cret")
    server = AdminServer(Pool(), config)  # type: ignore[arg-type]
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_status_reads_its_token_from_the_environment_or_a_file(pool_with_token, tmp_path):
    one_line_error(taskfleet("status", pool_with_token), cli.EXIT_UNAVAILABLE)
    by_env = taskfleet("status", pool_with_token, env={"TASKFLEET_METRICS_TOKEN": "s3cret"})
    assert by_env.returncode == 0 and "greet#0" in by_env.stdout, by_env.stderr
    # The backlog per type, and the range a type autoscales in; unknown is not zero.
    assert "queue greet: 5 waiting (+2 held by workers); 1 process(es), autoscaling 1-3" in (
        by_env.stdout
    )
    assert "queue shout: backlog unknown; 2 process(es)\n" in by_env.stdout
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    by_file = taskfleet("status", pool_with_token, "--token-file", str(token_file))
    assert by_file.returncode == 0 and "greet#0" in by_file.stdout, by_file.stderr


def test_status_refuses_a_token_on_the_command_line(pool_with_token):
    # Any user on the host sees a process's arguments (ps): a token there is a leaked token.
    line = one_line_error(taskfleet("status", pool_with_token, "--token", "s3cret"), 2)
    assert "TASKFLEET_METRICS_TOKEN" in line and "s3cret" not in line


def test_status_table_shows_each_process_and_its_last_error():
    table = cli.status_table(
        [
            {"name": "a#0", "pid": 10, "state": "running", "in_flight": 1, "completed": 5,
             "restarts": 0, "last_exit": "", "last_error": ""},
            {"name": "b#0", "pid": None, "state": "backoff", "in_flight": 0, "completed": 0,
             "restarts": 2, "last_exit": "killed by SIGSEGV", "last_error": "boom"},
        ]
    )  # fmt: skip
    header, first, second = table.splitlines()
    assert header.split()[:3] == ["NAME", "PID", "STATE"]
    assert first.split() == ["a#0", "10", "running", "1", "5", "0"]
    assert second.endswith("killed by SIGSEGV / boom")


def test_status_shows_the_spool_and_the_results_it_gave_up_on():
    spool = {
        "waiting": 2,
        "dead": {"a": 1},
        "recent_dead": [{"task_id": "t1", "task_type": "a", "reason": "refused by the server"}],
    }
    assert cli.spool_lines(spool) == [
        "spool: 2 result(s) waiting, 1 given up (a: 1)",
        "  t1  a  refused by the server",
    ]
    assert cli.spool_lines({"error": "OperationalError: disk I/O error"}) == [
        "spool: unreadable (OperationalError: disk I/O error)"
    ]


# -- submit --------------------------------------------------------------------------------


def test_submit_with_invalid_input_json_is_a_usage_error():
    line = one_line_error(taskfleet("submit", "greet", "--input", "{name: Ada}"), 2)
    assert "--input" in line and "invalid JSON" in line


def test_submit_with_a_conductor_server_configured_says_it_speaks_nats_only():
    done = taskfleet(
        "submit", "greet", "--input", "{}", env={"CONDUCTOR_SERVER_URL": "http://127.0.0.1:9/api"}
    )
    line = one_line_error(done, cli.EXIT_USAGE)
    assert "speak NATS only, and CONDUCTOR_SERVER_URL is set" in line
    assert "TASKFLEET_SOURCE=nats" in line


def test_status_of_a_pool_whose_endpoint_is_off_asks_for_its_url():
    done = taskfleet("status", env={"TASKFLEET_METRICS_ADDRESS": "off"})
    assert "TASKFLEET_METRICS_ADDRESS is off" in one_line_error(done, cli.EXIT_USAGE)


def test_submit_to_an_unreachable_server_exits_4():
    done = taskfleet(
        "submit",
        "greet",
        "--nats-url",
        f"nats://127.0.0.1:{free_port()}",
        env={"TASKFLEET_NATS_CONNECT_TIMEOUT": "1"},
    )
    assert "connection refused" in one_line_error(done, cli.EXIT_UNAVAILABLE)


def test_run_against_a_refused_conductor_server_is_one_line_saying_so(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    done = taskfleet(
        "run",
        EXAMPLE,
        env={
            "CONDUCTOR_SERVER_URL": url,
            "TASKFLEET_METRICS_ADDRESS": "off",
            **QUIET_START,
            "TASKFLEET_STATE_DIR": str(tmp_path),
        },
    )
    assert one_line_error(done, cli.EXIT_UNAVAILABLE) == (
        f"taskfleet: cannot reach the Conductor server at {url}: connection refused (nothing"
        " listens there); check CONDUCTOR_SERVER_URL and that the server is running"
    )


def test_run_against_a_refused_nats_server_is_one_line_saying_so(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    done = taskfleet(
        "run",
        EXAMPLE,
        env={
            "NATS_URL": url,
            "TASKFLEET_NATS_CONNECT_TIMEOUT": "1",
            "TASKFLEET_METRICS_ADDRESS": "off",
            **QUIET_START,
            "TASKFLEET_STATE_DIR": str(tmp_path),
        },
    )
    assert one_line_error(done, cli.EXIT_UNAVAILABLE) == (
        f"taskfleet: cannot connect to NATS at {url} within 1 s: connection refused (nothing"
        " listens there); check NATS_URL and that the server is running"
    )


# -- real pools and servers ------------------------------------------------------------------


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    return {"TASKFLEET_STATE_DIR": str(tmp_path / "state")}


def _as_typed_in_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: a suite run
    # in the background would start every command deaf to Ctrl-C. A command typed in a terminal
    # has SIGINT at its default, and that is what these tests stand for.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TASKFLEET_", "NATS_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "taskfleet", *args],
        cwd=ROOT,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_typed_in_a_terminal,  # noqa: PLW1509 - one signal call, no locks taken
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; SIGINT then SIGKILL at teardown, also when it failed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.slow
def test_nats_server_prints_its_url_and_stops_on_ctrl_c(processes, state_env):
    proc = start("nats-server", "--port", str(free_port()), env=state_env)
    processes.append(proc)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("nats://127.0.0.1:")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == cli.EXIT_OK


@pytest.mark.slow
def test_run_submit_wait_results_and_status_against_a_real_pool(processes, state_env):
    port = free_port()
    env = {**state_env, "TASKFLEET_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    pool = start("run", EXAMPLE, "--threads", "2", env=env)
    processes.append(pool)

    def pool_up() -> bool:
        assert pool.poll() is None, pool.communicate()[1]
        status = taskfleet("status", f"http://127.0.0.1:{port}")
        return status.returncode == 0 and "running" in status.stdout

    # /workers answers while the worker process still starts: wait for what a user waits for.
    wait_for(pool_up, 30, "the pool's /workers showing a running process")
    # No URL: the address comes from the same setting the pool used.
    status = taskfleet("status", env={"TASKFLEET_METRICS_ADDRESS": f"127.0.0.1:{port}"})
    assert "greet#0" in status.stdout and "running" in status.stdout

    typo = taskfleet("submit", "gret", "--wait", "--timeout", "1", env=state_env)
    assert typo.returncode == cli.EXIT_TASKS_FAILED
    assert typo.stderr.splitlines() == [
        "taskfleet: no result for 1 task(s) within 1 s: no worker has ever consumed 'gret' on"
        " this server (is the type spelt as the worker's? is the pool on another server or state"
        " directory?)"
    ]

    done = taskfleet("submit", "greet", "--input", '{"name": "Ada"}', "--count", "3", "--wait",
                     "--timeout", "30", env=state_env)  # fmt: skip
    assert done.returncode == cli.EXIT_OK, done.stderr
    assert done.stdout.count('greet  COMPLETED  {"greeting":"Hello, Ada!"}') == 3

    failed = taskfleet("submit", "divide", "--input", '{"a": 1, "b": 0}', "--wait", env=state_env)
    assert failed.returncode == cli.EXIT_TASKS_FAILED
    assert "cannot divide by zero" in failed.stdout

    results = taskfleet("results", "greet", "--idle", "1", env=state_env)
    assert results.returncode == 0 and results.stdout.count("COMPLETED") == 3

    pool.send_signal(signal.SIGINT)
    assert pool.wait(30) == cli.EXIT_OK  # a drain is a clean stop

    # The pool was the embedded server's last user: a producer now starts a server of its own
    # and says so, and says why no result comes.
    late = taskfleet("submit", "greet", "--input", "{}", "--wait", "--timeout", "1", env=state_env)
    assert late.returncode == cli.EXIT_TASKS_FAILED
    note, missing = late.stderr.splitlines()
    assert note.startswith("taskfleet: note: no pool's embedded server was running (state dir ")
    assert note.endswith("; tasks wait there until a pool runs with that state directory")
    assert missing == (
        "taskfleet: no result for 1 task(s) within 1 s: no worker is consuming 'greet' now;"
        " 1 task(s) wait for a pool to run"
    )


# -- the metrics address ---------------------------------------------------------------------


def test_run_with_its_metrics_address_in_use_is_one_line_and_exit_5(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = taskfleet(
            "run",
            EXAMPLE,
            env={
                "TASKFLEET_METRICS_ADDRESS": address,
                "TASKFLEET_STATE_DIR": str(tmp_path),
                **QUIET_START,
            },
        )
    line = one_line_error(done, cli.EXIT_ADDRESS_IN_USE)
    assert line == (
        f"taskfleet: TASKFLEET_METRICS_ADDRESS: {address} is in use (another pool?): set it"
        " (or --metrics-address) to a free host:port, or to off"
    )
    # Nothing was started before the address was checked: no embedded server was left behind.
    assert not (tmp_path / "nats" / "server.json").exists()


# -- the same mistakes through the Python API ------------------------------------------------

MAIN_WITH_ZERO_THREADS = """\
from taskfleet import TaskHandler, worker_task


@worker_task("resize_image", threads=0)
def resize(x: int) -> dict:
    return {"y": x}


with TaskHandler([resize]) as handler:
    handler.start_processes()
"""


def test_a_script_with_an_invalid_worker_option_ends_with_one_line(tmp_path):
    (tmp_path / "main.py").write_text(MAIN_WITH_ZERO_THREADS)
    done = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "taskfleet: main.py:4: resize_image.threads: expected an integer >= 1, got 0"
    ]


def test_the_traceback_is_there_at_debug_level(tmp_path):
    (tmp_path / "main.py").write_text(MAIN_WITH_ZERO_THREADS)
    done = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env={**os.environ, "TASKFLEET_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigurationError: resize_image.threads" in done.stderr


def test_a_script_whose_metrics_address_is_taken_ends_with_one_line(tmp_path):
    (tmp_path / "main.py").write_text(
        "from taskfleet import Configuration, TaskHandler\n"
        "from examples.quickstart.workers import greet\n"
        "\n"
        "with TaskHandler([greet], Configuration.from_env()) as handler:\n"
        "    handler.start_processes()\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "main.py"],
            cwd=tmp_path,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "TASKFLEET_METRICS_ADDRESS": address,
                **QUIET_START,
                "TASKFLEET_STATE_DIR": str(tmp_path / "state"),
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"taskfleet: main.py:5: TASKFLEET_METRICS_ADDRESS: {address} is in use (another pool?):"
        " set it (or --metrics-address) to a free host:port, or to off"
    ]
