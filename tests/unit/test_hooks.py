"""Event hooks: before-hooks in order, after-hooks in reverse, a failing hook is never fatal;
poll events wait for a slow poll hook only up to a bound, beyond it they are dropped and counted."""

from __future__ import annotations

import logging
import threading

import pytest
from helpers import wait_until

from taskfleet import Task, TaskResult
from taskfleet import _metrics as metrics
from taskfleet._hookrun import POLL_EVENTS_MAX, HookRunner
from taskfleet.hooks import HOOK_NAMES, HookBase, call_hooks


class Recorder(HookBase):
    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name = name
        self.calls = calls

    def before_execute(self, task: Task) -> None:
        self.calls.append((self.name, "before_execute"))

    def after_execute(self, task: Task, result: TaskResult) -> None:
        self.calls.append((self.name, "after_execute"))


class Broken(HookBase):
    def before_execute(self, task: Task) -> None:
        raise RuntimeError("reporter is down")

    def after_execute(self, task: Task, result: TaskResult) -> None:
        raise RuntimeError("reporter is down")


TASK = Task("t-1", "resize")
RESULT = TASK.result()


def test_before_hooks_run_in_the_order_given():
    calls: list[tuple[str, str]] = []
    call_hooks([Recorder("a", calls), Recorder("b", calls)], "before_execute", TASK)
    assert calls == [("a", "before_execute"), ("b", "before_execute")]


def test_after_hooks_run_in_reverse_order():
    calls: list[tuple[str, str]] = []
    call_hooks([Recorder("a", calls), Recorder("b", calls)], "after_execute", TASK, RESULT)
    assert calls == [("b", "after_execute"), ("a", "after_execute")]


def test_a_failing_hook_is_logged_and_the_others_still_run(caplog):
    calls: list[tuple[str, str]] = []
    hooks = [Recorder("a", calls), Broken(), Recorder("b", calls)]
    with caplog.at_level(logging.ERROR, logger="taskfleet.hooks"):
        call_hooks(hooks, "before_execute", TASK)
        call_hooks(hooks, "after_execute", TASK, RESULT)
    assert calls == [
        ("a", "before_execute"),
        ("b", "before_execute"),
        ("b", "after_execute"),
        ("a", "after_execute"),
    ]
    failures = [r for r in caplog.records if "Broken" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info for r in failures)


def test_objects_without_a_hook_method_are_skipped():
    calls: list[tuple[str, str]] = []
    call_hooks([object(), Recorder("a", calls)], "before_execute", TASK)
    assert calls == [("a", "before_execute")]


def test_an_unknown_hook_name_is_a_caller_error():
    with pytest.raises(ValueError, match="before_exec"):
        call_hooks([HookBase()], "before_exec", TASK)


def test_keyboard_interrupt_in_a_hook_is_not_swallowed():
    class Interrupting(HookBase):
        def before_poll(self, task_type: str) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_hooks([Interrupting()], "before_poll", "resize")


def test_hook_base_has_a_no_op_method_for_every_hook():
    base = HookBase()
    arguments = {
        "before_poll": ("resize",),
        "after_poll": ("resize", [TASK]),
        "before_execute": (TASK,),
        "after_execute": (TASK, RESULT),
        "before_report": (TASK, RESULT),
        "after_report": (TASK, RESULT, None),
    }
    assert set(arguments) == set(HOOK_NAMES)
    for name, args in arguments.items():
        assert getattr(base, name)(*args) is None


# -- the poll hooks' queue ---------------------------------------------------------------------


class BlockingPollHook(HookBase):
    """Blocks in its first before_poll until released; records the after_poll markers."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[str] = []
        self.markers: list[object] = []

    def before_poll(self, task_type: str) -> None:
        self.events.append("before_poll")
        self.entered.set()
        self.release.wait(60)

    def after_poll(self, task_type: str, tasks: list) -> None:
        self.events.append("after_poll")
        self.markers.extend(tasks)


def _dropped(task_type: str) -> float:
    value = metrics.get().registry.get_sample_value(
        "taskfleet_poll_hook_events_dropped_total", {"taskType": task_type}
    )
    return value or 0.0


def test_a_blocked_poll_hook_holds_at_most_the_bound_drops_whole_pairs_and_catches_up(caplog):
    hook = BlockingPollHook()
    runner = HookRunner([hook], 1, "test")
    polls = 5 * POLL_EVENTS_MAX
    try:
        with caplog.at_level(logging.INFO, logger="taskfleet.hooks"):
            runner.poll_event("before_poll", "bounded")
            runner.poll_event("after_poll", "bounded", [-1])
            assert hook.entered.wait(10)  # the hook thread is stuck in the first event
            for i in range(polls):
                runner.poll_event("before_poll", "bounded")
                runner.poll_event("after_poll", "bounded", [i])
                assert runner._polls.qsize() <= POLL_EVENTS_MAX
            waiting = runner._polls.qsize()
            assert waiting >= POLL_EVENTS_MAX - 1
            # Every event offered either runs (the stuck one), waits, or was dropped and counted.
            assert _dropped("bounded") == 2 * (polls + 1) - 1 - waiting
            drops = [r for r in caplog.records if "dropped until" in r.getMessage()]
            assert [r.levelno for r in drops] == [logging.WARNING]

            hook.release.set()
            wait_until(
                lambda: any("caught up" in r.getMessage() for r in caplog.records),
                what="the recovery is logged",
            )
            runner.poll_event("before_poll", "bounded")
            runner.poll_event("after_poll", "bounded", ["after release"])
            wait_until(lambda: "after release" in hook.markers, what="the hook sees new events")
    finally:
        hook.release.set()
        runner.close()
    recovered = [r for r in caplog.records if "caught up" in r.getMessage()]
    assert [r.levelno for r in recovered] == [logging.WARNING]
    # Pairs stay whole: what ran alternates before/after, and the markers are those accepted.
    assert hook.events == ["before_poll", "after_poll"] * (len(hook.events) // 2)
    accepted = (waiting - 1) // 2  # the pairs queued behind the stuck one
    assert hook.markers == [-1, *range(accepted), "after release"]
