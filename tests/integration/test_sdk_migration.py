"""Code written for the Conductor Python SDK, its imports changed, run by a real pool against
the Conductor test server (docs/migrating-from-conductor-python.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from helpers import metric_total, running_script, wait_until
from sdk_readme_workers import SimplePythonWorker

from taskfleet import AuthenticationSettings, Configuration, MetricsSettings, TaskHandler
from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


#: The SDK README's main(), imports changed; run as a script as a user would.
README_MAIN = """
import sys
sys.path.insert(0, {workers_dir!r})

from taskfleet import Configuration, TaskHandler
from sdk_readme_workers import SimplePythonWorker


def main():
    configuration = Configuration()
    workers = [SimplePythonWorker(task_definition_name='python_task_example')]
    task_handler = TaskHandler(workers, configuration, scan_for_annotated_workers=True)
    task_handler.start_processes()
    task_handler.join_processes()


if __name__ == '__main__':
    main()
"""


@contextlib.contextmanager
def sdk_script(
    tmp_path: Path,
    source: str,
    server: ConductorTestServer,
    deployment_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Run ``source`` as a user's ``main.py`` with the deployment's environment (the server's URL
    as the SDK reads it, and ``deployment_env``); killed at the end if it is still running."""
    script = tmp_path / "main.py"
    script.write_text(source.format(workers_dir=str(Path(__file__).parent)))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CONDUCTOR_SERVER_URL": server.url,
        "TASKFLEET_STATE_DIR": str(tmp_path / "state"),
        "TASKFLEET_METRICS_ADDRESS": "off",
        **(deployment_env or {}),
    }
    if "PYTHONPATH" in os.environ:  # the taskfleet under test
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with running_script(script, env=env) as proc:
        yield proc


def test_the_sdk_readme_workers_run_unchanged_apart_from_imports(tmp_path):
    with ConductorTestServer() as server:
        class_ids = server.enqueue_many("python_task_example", [{}] * 5)
        function_ids = server.enqueue_many(
            "python_annotated_task", [{"name": "Ada"}, {"name": "Bob", "greeting": "Hi"}]
        )
        with sdk_script(tmp_path, README_MAIN, server) as proc:
            done = server.wait_for(class_ids + function_ids, timeout=60)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        assert done, stderr
        assert proc.returncode == 0, stderr
        jobs = [server.job(i) for i in class_ids]
        assert {j.status for j in jobs} == {"COMPLETED"}
        assert jobs[0].output == {
            "worker_style": "class",
            "secret_number": 1234,
            "is_it_true": False,
        }
        messages = [server.job(i).output for i in function_ids]
        assert messages == [{"message": "Hello Ada"}, {"message": "Hi Bob"}]


def test_the_sdks_dotted_worker_variables_configure_the_readme_workers(tmp_path):
    deployment_env = {
        # The SDK reads the dotted spelling first: it wins over the upper-case one.
        "conductor.worker.python_annotated_task.thread_count": "3",  # the code says 2
        "CONDUCTOR_WORKER_PYTHON_ANNOTATED_TASK_THREAD_COUNT": "5",
        "conductor.worker.all.worker_id": "deploy-7",
        "conductor.worker.all.THREAD_COUNT": "9",  # not read by the SDK either: warned about
    }
    with ConductorTestServer() as server:
        ids = server.enqueue_many("python_annotated_task", [{"name": "Ada"}])
        with sdk_script(tmp_path, README_MAIN, server, deployment_env) as proc:
            done = server.wait_for(ids, timeout=60)
            wait_until(lambda: server.request_count("/tasks/poll/batch/python_task_example") > 0)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        assert done, stderr
        assert proc.returncode == 0, stderr
        polls = {
            task_type: [
                parse_qs(r.query) for r in server.requests if r.path.endswith("/" + task_type)
            ]
            for task_type in ("python_annotated_task", "python_task_example")
        }
    # An idle worker asks for as many tasks as it has threads.
    assert max(int(q["count"][0]) for q in polls["python_annotated_task"]) == 3
    assert max(int(q["count"][0]) for q in polls["python_task_example"]) == 1
    assert {q["workerid"][0] for qs in polls.values() for q in qs} == {"deploy-7"}
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, stderr
    assert warnings[0].endswith(
        "conductor.worker.all.THREAD_COUNT: ignored: the Conductor SDK does not read this"
        " spelling; use CONDUCTOR_WORKER_ALL_THREAD_COUNT"
    )


def test_a_configuration_built_with_the_sdk_argument_names_reaches_the_server(tmp_path):
    with ConductorTestServer(auth=("key", "secret")) as server:
        ids = server.enqueue_many("python_task_example", [{}])
        configuration = Configuration(
            server_api_url=server.url,
            debug=True,
            authentication_settings=AuthenticationSettings(key_id="key", key_secret="secret"),
            state_dir=str(tmp_path / "state"),
            metrics_address="off",
        )
        worker = SimplePythonWorker("python_task_example")
        with TaskHandler([worker], configuration, install_signal_handlers=False) as handler:
            handler.start_processes()
            assert server.wait_for(ids, timeout=60)
        assert server.job(ids[0]).status == "COMPLETED"


def test_the_sdk_metrics_settings_write_the_metrics_file_with_the_http_endpoint_off(tmp_path):
    metrics_dir = tmp_path / "metrics"
    with ConductorTestServer() as server:
        ids = server.enqueue_many("python_task_example", [{}] * 3)
        configuration = Configuration.from_env(
            {}, server_api_url=server.url, state_dir=str(tmp_path / "state"), metrics_address="off"
        )
        metrics_settings = MetricsSettings(
            directory=str(metrics_dir), file_name="metrics.log", update_interval=0.2
        )
        worker = SimplePythonWorker("python_task_example")
        with TaskHandler(
            [worker], configuration, metrics_settings, install_signal_handlers=False
        ) as handler:
            handler.start_processes()
            assert server.wait_for(ids, timeout=60)
            assert handler.metrics_url is None
            textfile = metrics_dir / "metrics.log"

            def executions() -> float:
                text = textfile.read_text() if textfile.exists() else ""
                return metric_total(
                    text, "task_execute_time_seconds_count", taskType="python_task_example"
                )

            wait_until(lambda: executions() == 3, what="3 executions in the metrics file")


#: The other common shape of an SDK main(): start the processes and let main() return.
MAIN_WITHOUT_JOIN = """
import sys
sys.path.insert(0, {workers_dir!r})

from taskfleet import Configuration, TaskHandler
import sdk_readme_workers  # declares the annotated worker


def main():
    handler = TaskHandler(configuration=Configuration(), scan_for_annotated_workers=True)
    handler.start_processes()


if __name__ == '__main__':
    main()
"""


def test_a_pool_whose_main_returns_after_start_keeps_running_whole_until_sigterm(tmp_path):
    with ConductorTestServer() as server, sdk_script(tmp_path, MAIN_WITHOUT_JOIN, server) as proc:
        # Tasks that come after main() has returned are run all the same.
        wait_until(lambda: server.request_count("/tasks/poll/batch/python_annotated_task") > 3)
        ids = server.enqueue_many("python_annotated_task", [{"name": "Ada"}] * 3)
        done = server.wait_for(ids, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert done, stderr
    assert proc.returncode == 0, stderr
    # The supervisor kept its thread pools (spool, hooks): nothing failed for want of them.
    assert "cannot schedule new futures" not in stderr
    assert " WARNING " not in stderr and " ERROR " not in stderr, stderr
    assert "the program's main code ended; the pool runs until SIGTERM or SIGINT" in stderr
    assert "pool stopped" in stderr
