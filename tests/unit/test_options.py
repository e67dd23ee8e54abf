"""Worker options: declared once on WorkerOptions, and everything else derived from there."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from taskfleet import ConfigurationError, Task, TaskResult, WorkerInterface, worker_task
from taskfleet._options import OPTIONS, WorkerOptions, options_from_env
from taskfleet._worker import as_worker

WORKERS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "workers.md"

#: A value of the wrong form for each option (every option must have one here).
BAD_VALUES = {
    "threads": 0,
    "processes": 1.5,
    "poll_interval": -1,
    "poll_timeout": "1000",
    "domain": 5,
    "worker_id": b"host",
    "lease_extend": 0,
    "time_limit": 0,
    "paused": "yes",
    "output_subject": ["a"],
    "max_attempts": -1,
    "max_tasks_per_child": True,
    "max_memory_per_child": 0.5,
    "cheap_on_loop": "no",
}


class Echo(WorkerInterface):
    output_subject = "taskfleet.tasks.next"
    max_attempts = 3

    def execute(self, task: Task) -> TaskResult:
        return self.result_for(task)


def test_the_options_are_the_fields_of_worker_options_in_order():
    assert [o.name for o in OPTIONS] == [f.name for f in dataclasses.fields(WorkerOptions)]
    assert [o.default for o in OPTIONS] == [getattr(WorkerOptions(), o.name) for o in OPTIONS]


def test_worker_task_takes_exactly_the_options_as_keyword_arguments():
    parameters = inspect.signature(worker_task).parameters
    assert list(parameters)[1:] == [o.name for o in OPTIONS]
    assert all(parameters[o.name].default == o.default for o in OPTIONS)
    with pytest.raises(ConfigurationError, match=r"^x\.bogus: is not a worker option"):
        worker_task("x", bogus=1)


def test_a_class_worker_has_every_option_as_an_attribute_and_passes_them_on():
    assert all(getattr(WorkerInterface, o.name) == o.default for o in OPTIONS)
    declared = {f.name: f.type for f in dataclasses.fields(WorkerOptions)}
    assert WorkerInterface.__annotations__ == declared  # what type checkers see, in step
    options = as_worker(Echo("echo")).options
    assert options.output_subject == "taskfleet.tasks.next"
    assert options.max_attempts == 3
    assert options.threads == 1


def test_every_option_has_a_bad_value_in_this_test():
    assert set(BAD_VALUES) == {o.name for o in OPTIONS}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_fails_at_definition_naming_the_option(name):
    with pytest.raises(ConfigurationError) as err:
        worker_task("bad", **{name: BAD_VALUES[name]})(lambda: None)
    assert err.value.setting == f"bad.{name}"
    assert str(err.value).startswith(f"bad.{name}: expected ")


def test_env_overrides_follow_conductor_sdk_names_and_precedence():
    env = {
        "CONDUCTOR_WORKER_ALL_POLL_INTERVAL": "500",
        "CONDUCTOR_WORKER_RESIZE_POLL_INTERVAL": "250",
        "CONDUCTOR_WORKER_ALL_THREAD_COUNT": "8",
        "CONDUCTOR_WORKER_RESIZE_DOMAIN": "blue",
        "CONDUCTOR_WORKER_RESIZE_PAUSED": "yes",
        "CONDUCTOR_WORKER_RESIZE_TIME_LIMIT": "none",
        "CONDUCTOR_WORKER_ALL_LEASE_EXTEND": "12.5",
    }
    options = options_from_env("resize", WorkerOptions(time_limit=30), env)
    assert options.poll_interval == 250
    assert options.threads == 8
    assert options.domain == "blue"
    assert options.paused is True
    assert options.time_limit is None
    assert options.lease_extend == 12.5


def test_a_task_type_with_other_characters_also_matches_with_underscores():
    env = {"CONDUCTOR_WORKER_IMAGE_RESIZE_PROCESSES": "3"}
    assert options_from_env("image-resize", WorkerOptions(), env).processes == 3


def test_invalid_env_override_names_the_variable_and_the_form():
    with pytest.raises(ConfigurationError) as err:
        options_from_env(
            "resize", WorkerOptions(), {"CONDUCTOR_WORKER_RESIZE_THREAD_COUNT": "many"}
        )
    assert err.value.setting == "CONDUCTOR_WORKER_RESIZE_THREAD_COUNT"
    assert str(err.value) == (
        "CONDUCTOR_WORKER_RESIZE_THREAD_COUNT: expected an integer >= 1, got 'many'"
    )


def test_the_workers_page_lists_every_option_with_its_default():
    section = WORKERS_PAGE.read_text().split("### Options", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE)
    assert [name for name, _ in rows] == [o.name for o in OPTIONS]
    for (name, shown), option in zip(rows, OPTIONS, strict=True):
        expected = (
            "host name"
            if name == "worker_id"
            else ("none" if option.default is None else f"`{option.default}`")
        )
        assert shown.strip() == expected, name
