"""The Conductor Python SDK's names for worker definitions: aliases that work, and arguments that
fail with one line naming what to do (docs/migrating-from-conductor-python.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from taskfleet import (
    Configuration,
    ConfigurationError,
    Task,
    TaskHandler,
    WorkerInterface,
    _worker,
    worker_task,
)
from taskfleet._options import OPTIONS, options_from_env, unread_worker_variables

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from sdk_readme_workers import SimplePythonWorker

CONFIG_ENV: dict[str, str] = {"TASKFLEET_SOURCE": "memory", "TASKFLEET_METRICS_ADDRESS": "off"}


def test_the_sdk_readme_class_worker_builds_its_result_and_its_polling_interval_is_honoured():
    worker = SimplePythonWorker(task_definition_name="python_task_example")
    assert worker.options().poll_interval == 500
    result = worker.execute(Task("t-1", "python_task_example", {}))
    assert result.status == "COMPLETED" and result.task_id == "t-1"
    assert result.output_data == {
        "worker_style": "class",
        "secret_number": 1234,
        "is_it_true": False,
    }
    assert result.worker_id == worker.get_identity()


class SdkStyle(WorkerInterface):
    lease_extend_enabled = False  # a class attribute, as the SDK's workers may set it

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.thread_count = 4

    def execute(self, task: Task):
        return self.get_task_result_from_task(task)

    def get_domain(self) -> str:
        return "staging"

    def get_identity(self) -> str:
        return "worker-7"

    def paused(self) -> bool:
        return True


def test_the_sdk_attribute_names_and_methods_set_the_options():
    options = SdkStyle("sdk_style").options()
    assert (options.threads, options.lease_extend) == (4, False)
    assert (options.domain, options.worker_id, options.paused) == ("staging", "worker-7", True)
    assert SdkStyle("sdk_style").execute(Task("t-2", "sdk_style", {})).worker_id == "worker-7"


def test_a_class_worker_asking_to_register_its_task_definition_fails_naming_what_to_do():
    worker = SdkStyle("sdk_style")
    worker.register_task_def = True  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError) as err:
        worker.options()
    assert str(err.value) == (
        "sdk_style.register_task_def: taskfleet registers no task definitions: register them"
        " with your deployment tooling (Conductor's API or UI) and remove this argument"
    )


def test_worker_task_takes_the_sdk_argument_names():
    @worker_task(
        task_definition_name="sdk_named",
        thread_count=3,
        lease_extend_enabled=False,
        poll_interval_millis=250,
        register_task_def=False,
    )
    def sdk_named(x: int) -> int:
        return x

    assert sdk_named.task_type == "sdk_named"
    options = sdk_named.options
    assert (options.threads, options.lease_extend, options.poll_interval) == (3, False, 250)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"register_task_def": True},
            "t.register_task_def: taskfleet registers no task definitions: register them with"
            " your deployment tooling (Conductor's API or UI) and remove this argument",
        ),
        (
            {"threads": 2, "thread_count": 2},
            "t.thread_count: give threads= or thread_count=, not both",
        ),
        ({"thread": 2}, "t.thread: is not a worker option; the options are threads, processes,"),
    ],
)
def test_worker_task_arguments_without_a_use_fail_with_one_line(arguments, message):
    with pytest.raises(ConfigurationError) as err:
        worker_task("t", **arguments)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_sdk_lease_extend_enabled_property_is_read_from_the_environment():
    env = {"CONDUCTOR_WORKER_RESIZE_LEASE_EXTEND_ENABLED": "false"}
    assert options_from_env("resize", SdkStyle("resize").options(), env).lease_extend is False
    env = {"CONDUCTOR_WORKER_ALL_LEASE_EXTEND_ENABLED": "20"}
    assert options_from_env("resize", SdkStyle("resize").options(), env).lease_extend == 20


def test_scan_for_annotated_workers_runs_every_worker_task_declared(monkeypatch):
    monkeypatch.setattr(_worker, "DECLARED", [])  # only the workers this test declares

    @worker_task("scanned_type")
    def scanned(x: int) -> int:
        return x

    @worker_task("other_type")
    def other(x: int) -> int:
        return x

    handler = TaskHandler([], scan_for_annotated_workers=True, env=CONFIG_ENV)
    assert [w.task_type for w in handler.workers] == ["scanned_type", "other_type"]
    handler = TaskHandler([scanned], scan_for_annotated_workers=True, env=CONFIG_ENV)
    assert [w.task_type for w in handler.workers] == ["scanned_type", "other_type"]
    assert [w.task_type for w in TaskHandler([other], env=CONFIG_ENV).workers] == ["other_type"]


def test_no_workers_and_no_scan_says_what_to_pass():
    with pytest.raises(ConfigurationError) as err:
        TaskHandler([], env=CONFIG_ENV)
    assert str(err.value) == (
        "workers: no workers given: pass @worker_task functions or WorkerInterface objects, or"
        " scan_for_annotated_workers=True to run every @worker_task declared"
    )


def test_import_modules_that_cannot_be_imported_fail_naming_the_module():
    with pytest.raises(ConfigurationError) as err:
        TaskHandler([SdkStyle("t")], import_modules=["no_such_workers_module"], env=CONFIG_ENV)
    assert str(err.value).startswith("import_modules: cannot import 'no_such_workers_module'")


def test_worker_variables_no_worker_reads_are_warned_about_naming_the_known_properties():
    env = {
        "CONDUCTOR_WORKER_RESIZE_THREAD_COUNT": "4",  # read
        "CONDUCTOR_WORKER_ALL_LEASE_EXTEND_ENABLED": "false",  # read
        "CONDUCTOR_WORKER_RESIZE_THREADS": "4",
        "CONDUCTOR_WORKER_RESIZ_THREAD_COUNT": "4",
        "CONDUCTOR_WORKER_POLL_INTERVAL": "500",  # read: every type, as the SDK reads it
        "CONDUCTOR_WORKER_RESIZE_REGISTER_TASK_DEF": "true",
        "PATH": "/bin",
    }
    assert unread_worker_variables(env, ["resize", "thumb"]) == [
        "CONDUCTOR_WORKER_RESIZE_REGISTER_TASK_DEF: ignored: taskfleet registers no task"
        " definitions or schemas",
        "CONDUCTOR_WORKER_RESIZE_THREADS: unknown worker property, ignored; the properties are "
        + ", ".join(
            sorted({o.env for o in OPTIONS if o.env} | {"LEASE_EXTEND_ENABLED", "POLLING_INTERVAL"})
        ),
        "CONDUCTOR_WORKER_RESIZ_THREAD_COUNT: ignored: 'RESIZ' is no worker type of this pool"
        " (CONDUCTOR_WORKER_<TYPE>_THREAD_COUNT for resize, thumb)",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"event_listeners": []}, "event_listeners: use hooks=[...] (taskfleet.hooks.HookBase)"),
        ({"monitor_processes": True}, "monitor_processes: taskfleet always supervises"),
        ({"restart_on_failure": True}, "restart_on_failure: taskfleet always supervises"),
        ({"worker_count": 4}, "worker_count: is not an argument of TaskHandler (it takes workers,"),
    ],
)
def test_task_handler_arguments_it_does_not_take_fail_with_one_line(arguments, message):
    @worker_task("sdk_handler_args")
    def noop() -> None:
        return None

    with pytest.raises(ConfigurationError) as info:
        TaskHandler([noop], Configuration.from_env(CONFIG_ENV), **arguments)
    assert str(info.value).startswith(message)
