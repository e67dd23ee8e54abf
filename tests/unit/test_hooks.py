"""Event hooks: before-hooks in order, after-hooks in reverse, a failing hook is never fatal."""

from __future__ import annotations

import logging

import pytest

from taskfleet import Task, TaskResult
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
