"""The other spellings of the per-worker variables that the Conductor Python SDK reads
(``conductor.worker.<task>.<property>``, ``conductor_worker_<task>_<property>``, ...): read in the
SDK's order, the SDK's property names mapped, bad values failing with one line naming the
variable, and spellings nothing reads warned about (docs/workers.md#overriding-options-with-
environment-variables)."""

from __future__ import annotations

import pytest

from taskfleet import ConfigurationError, TaskHandler, worker_task
from taskfleet._options import OPTIONS, WorkerOptions, options_from_env, unread_worker_variables

CONFIG_ENV: dict[str, str] = {"TASKFLEET_SOURCE": "memory", "TASKFLEET_METRICS_ADDRESS": "off"}

#: The Conductor SDK's property names for taskfleet's ``lease_extend`` and ``poll_interval``.
SDK_ALIASES = ["lease_extend_enabled", "polling_interval"]

#: Every spelling that sets the thread count of ``resize_image``, the one that wins first.
ORDER = [
    "conductor.worker.resize_image.thread_count",
    "conductor_worker_resize_image_thread_count",
    "CONDUCTOR_WORKER_RESIZE_IMAGE_THREAD_COUNT",
    "CONDUCTOR_WORKER_resize_image_THREAD_COUNT",
    "conductor.worker.all.thread_count",
    "CONDUCTOR_WORKER_ALL_THREAD_COUNT",
    "conductor_worker_thread_count",
    "CONDUCTOR_WORKER_THREAD_COUNT",
]


@worker_task("resize_image", thread_count=2)
def resize_image(path: str) -> str:
    return path


#: Read before these spellings were: tests/unit/test_options.py.
UPPER = {"CONDUCTOR_WORKER_RESIZE_IMAGE_THREAD_COUNT", "CONDUCTOR_WORKER_ALL_THREAD_COUNT"}


@pytest.mark.parametrize("var", [var for var in ORDER if var not in UPPER])
def test_each_spelling_the_sdk_reads_sets_the_option(var):
    options = options_from_env("resize_image", WorkerOptions(threads=2), {var: "7"})
    assert options.threads == 7


def test_the_spellings_are_read_in_the_sdks_order_one_task_type_before_all():
    env = {var: str(rank + 2) for rank, var in enumerate(ORDER)}
    for rank, var in enumerate(ORDER):
        assert options_from_env("resize_image", WorkerOptions(), env).threads == rank + 2, var
        del env[var]
    assert options_from_env("resize_image", WorkerOptions(), env).threads == 1


def test_lower_case_spellings_take_the_task_type_as_written():
    env = {"conductor.worker.RESIZE_IMAGE.thread_count": "7", "conductor.worker.all.DOMAIN": "x"}
    assert options_from_env("resize_image", WorkerOptions(), env) == WorkerOptions()
    env = {
        "conductor.worker.image-resize.processes": "3",
        "conductor_worker_image-resize_paused": "on",
    }
    options = options_from_env("image-resize", WorkerOptions(), env)
    assert (options.processes, options.paused) == (3, True)


def test_the_sdks_property_names_map_to_the_options_in_every_spelling():
    env = {
        "conductor.worker.all.polling_interval": "250",
        "conductor_worker_resize_image_lease_extend_enabled": "false",
        "conductor.worker.resize_image.poll_timeout": "500.9",
        "conductor.worker.all.time_limit": "60",  # taskfleet's own properties, lower-cased
        "conductor.worker.resize_image.worker_id": "deploy-7",
    }
    options = options_from_env("resize_image", WorkerOptions(), env)
    assert (options.poll_interval, options.lease_extend, options.poll_timeout) == (250, False, 500)
    assert (options.time_limit, options.worker_id) == (60, "deploy-7")


def test_one_task_types_alias_wins_over_every_types_property():
    env = {
        "conductor.worker.all.poll_interval": "500",
        "conductor.worker.resize_image.polling_interval": "300",
    }
    assert options_from_env("resize_image", WorkerOptions(), env).poll_interval == 300
    env = {
        "conductor.worker.resize_image.polling_interval": "300",
        "conductor.worker.resize_image.poll_interval": "200",
    }
    assert options_from_env("resize_image", WorkerOptions(), env).poll_interval == 200


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("conductor.worker.resize_image.thread_count", "many", "an integer >= 1"),
        ("conductor.worker.all.poll_interval", "soon", "milliseconds >= 0"),
        ("conductor_worker_paused", "maybe", "true/false"),
        ("CONDUCTOR_WORKER_LEASE_EXTEND_ENABLED", "sometimes", "true/false or seconds > 0"),
    ],
)
def test_a_bad_value_stops_the_pool_at_start_up_with_one_line_naming_the_variable(
    var, value, expected
):
    with pytest.raises(ConfigurationError) as err:
        TaskHandler([resize_image], env={**CONFIG_ENV, var: value})
    assert err.value.setting == var
    assert str(err.value) == f"{var}: expected {expected}, got {value!r}"


def test_spellings_nothing_reads_are_warned_about_naming_the_one_to_use():
    env = {
        "conductor.worker.resize.thread_count": "4",  # read
        "conductor_worker_domain": "blue",  # read
        "CONDUCTOR_WORKER_resize_PAUSED": "true",  # read
        "CONDUCTOR_WORKER_POLL_INTERVAL": "500",  # read
        "conductor.worker.all.THREAD_COUNT": "4",
        "conductor.worker.RESIZE.thread_count": "4",
        "conductor.worker.thread_count": "4",
        "conductor_worker_all_domain": "blue",
        "Conductor.Worker.All.Paused": "true",
        "CONDUCTOR_WORKER_ALL_thread_count": "4",
        "conductor.worker.resize.threads": "4",
        "conductor.worker.resiz.thread_count": "4",
        "conductor.worker.all.register_task_def": "true",
        "conductor.worker.resize.poll_interval_millis": "250",  # in the SDK's guide, not its code
        "conductor.workers.all.paused": "true",  # another prefix: not a worker variable
    }
    use = "ignored: the Conductor SDK does not read this spelling; use"
    assert unread_worker_variables(env, ["resize", "thumb"]) == [
        f"CONDUCTOR_WORKER_ALL_thread_count: {use} CONDUCTOR_WORKER_ALL_THREAD_COUNT",
        f"Conductor.Worker.All.Paused: {use} CONDUCTOR_WORKER_ALL_PAUSED",
        f"conductor.worker.RESIZE.thread_count: {use} CONDUCTOR_WORKER_RESIZE_THREAD_COUNT",
        f"conductor.worker.all.THREAD_COUNT: {use} CONDUCTOR_WORKER_ALL_THREAD_COUNT",
        "conductor.worker.all.register_task_def: ignored: taskfleet registers no task"
        " definitions or schemas",
        "conductor.worker.resiz.thread_count: ignored: 'resiz' is no worker type of this pool"
        " (CONDUCTOR_WORKER_<TYPE>_THREAD_COUNT for resize, thumb)",
        "conductor.worker.resize.poll_interval_millis: ignored: the Conductor SDK does not read"
        " this property; use CONDUCTOR_WORKER_RESIZE_POLL_INTERVAL",
        "conductor.worker.resize.threads: unknown worker property, ignored; the properties are "
        + ", ".join(sorted([o.env.lower() for o in OPTIONS if o.env] + SDK_ALIASES)),
        f"conductor.worker.thread_count: {use} CONDUCTOR_WORKER_ALL_THREAD_COUNT",
        f"conductor_worker_all_domain: {use} CONDUCTOR_WORKER_ALL_DOMAIN",
    ]
