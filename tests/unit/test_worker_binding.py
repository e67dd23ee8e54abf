"""Binding task input to handler parameters, and turning return values into output data."""

from __future__ import annotations

import dataclasses
import enum
import pickle
import typing
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence as AbcSequence
from typing import Any, Literal, Optional

import pytest

from taskfleet import (
    InputError,
    OutputError,
    Task,
    TaskInProgress,
    TaskResult,
    TaskStatus,
    worker_task,
)
from taskfleet._convert import Binder
from taskfleet._outcome import to_result


@dataclasses.dataclass
class Size:
    width: int
    height: int = 1


class Mode(enum.Enum):
    FAST = "fast"
    GOOD = "good"


@worker_task("resize")
def resize(path: str, size: Size, scale: float = 1.0, mode: Mode = Mode.FAST) -> dict:
    return {"path": path, "area": size.width * size.height * scale, "mode": mode}


@worker_task("whole_task")
def whole(task: Task, n: int) -> int:
    return n + task.attempt


def bind(worker, data):
    return worker.bind(Task("t-1", worker.task_type, data))


def test_input_is_bound_by_name_and_converted_to_annotations():
    kwargs = bind(resize, {"path": "a.png", "size": {"width": "3", "height": 2}, "mode": "good"})
    assert kwargs == {"path": "a.png", "size": Size(3, 2), "mode": Mode.GOOD}


def test_a_parameter_annotated_task_receives_the_whole_task():
    task = Task("t-9", "whole_task", {"n": 4}, attempt=3)
    kwargs = whole.bind(task)
    assert kwargs["task"] is task
    assert whole(**kwargs) == 7


def test_missing_required_parameter_names_it():
    with pytest.raises(InputError) as err:
        bind(resize, {"size": {"width": 1}})
    assert err.value.parameter == "path"
    assert "'path'" in str(err.value)


def test_wrong_type_names_the_parameter_and_the_value():
    with pytest.raises(InputError) as err:
        bind(resize, {"path": "a", "size": {"width": "wide"}})
    assert err.value.parameter == "size"
    assert "size.width" in str(err.value) and "'wide'" in str(err.value)


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        (int, 3.0, 3),
        (int, " 7 ", 7),
        (float, 2, 2.0),
        (bool, "yes", True),
        (list[int], ["1", 2], [1, 2]),
        (dict[str, float], {"a": 1}, {"a": 1.0}),
        (int | None, None, None),
        (Literal["a", "b"], "b", "b"),
        (bytes, "aGk=", b"hi"),
        (tuple[int, str], [1, "x"], (1, "x")),
    ],
)
def test_basic_types_convert(annotation, value, expected):
    def handler(x): ...

    handler.__annotations__ = {"x": annotation}
    worker = worker_task("conv")(handler)
    assert bind(worker, {"x": value}) == {"x": expected}


@pytest.mark.parametrize(
    ("annotation", "value"),
    [(int, True), (int, "1.5"), (str, 5), (bool, "maybe"), (list[int], "1,2"), (Literal["a"], "c")],
)
def test_values_that_do_not_fit_are_rejected(annotation, value):
    def handler(x): ...

    handler.__annotations__ = {"x": annotation}
    worker = worker_task("conv")(handler)
    with pytest.raises(InputError):
        bind(worker, {"x": value})


def test_non_object_input_is_rejected():
    with pytest.raises(InputError, match="JSON object"):
        resize.bind(Task("t", "resize", ["not", "a", "dict"]))  # type: ignore[arg-type]


def test_kwargs_receive_unbound_input():
    @worker_task("kw")
    def handler(a: int, **rest):
        return rest

    assert bind(handler, {"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_dict_return_is_the_output_and_other_values_go_under_result():
    task = Task("t-1", "x")
    assert to_result(task, {"y": 2}, "w").output_data == {"y": 2}
    assert to_result(task, 5, "w").output_data == {"result": 5}
    assert to_result(task, None, "w").output_data == {}
    assert to_result(task, Size(2), "w").output_data == {"width": 2, "height": 1}


def test_task_in_progress_becomes_an_in_progress_result():
    result = to_result(Task("t-1", "x"), TaskInProgress(30, {"step": 1}), "w")
    assert result.status is TaskStatus.IN_PROGRESS
    assert result.callback_after_seconds == 30
    assert result.output_data == {"step": 1}


def test_unserialisable_output_names_the_value():
    with pytest.raises(OutputError, match=r"output\.blob is of type object"):
        to_result(Task("t", "x"), {"blob": object()}, "w")
    with pytest.raises(OutputError, match="NaN"):
        to_result(Task("t", "x"), {"v": float("nan")}, "w")
    with pytest.raises(OutputError, match="keys must be strings"):
        to_result(Task("t", "x"), {1: "a"}, "w")


def test_class_worker_results_pass_through():
    task = Task("t-1", "x", workflow_instance_id="wf")
    given = task.result(TaskStatus.FAILED, {"a": 1}, reason="no")
    result = to_result(task, given, "host-1")
    assert result is given and result.worker_id == "host-1"
    assert isinstance(result, TaskResult)


def test_decorated_worker_is_still_a_plain_function_and_pickles_by_reference():
    assert whole(task=Task("t", "whole_task", attempt=1), n=1) == 2
    assert pickle.loads(pickle.dumps(resize)) is resize


def test_abstract_sequence_and_mapping_annotations_are_converted_and_checked():
    # (annotations resolve in the module globals, so the imports are at the top of the file)
    @worker_task("abstract_types")
    def handler(
        a: typing.Sequence[int],
        b: AbcSequence[float],
        c: typing.Mapping[str, int],
        d: AbcMapping[str, str],
    ):
        return None

    task = Task("t", "abstract_types", {"a": [1, 2], "b": [1, 2.5], "c": {"x": 1}, "d": {"k": "v"}})
    assert handler.bind(task) == {"a": [1, 2], "b": [1.0, 2.5], "c": {"x": 1}, "d": {"k": "v"}}
    bad = Task("t", "abstract_types", {"a": ["x"], "b": [], "c": {}, "d": {}})
    try:
        handler.bind(bad)
    except InputError as exc:
        assert "a[0]" in str(exc)
    else:
        raise AssertionError("a list of strings must not bind to Sequence[int]")


def test_an_absent_key_is_none_for_parameters_that_admit_none_and_fails_the_others():
    def handler(name, anything: Any, maybe: int | None, optional: Optional[str], size: int):  # noqa: UP045 - the SDK's spelling
        return name

    binder = Binder(handler)
    task = Task("t-1", "absent", {"size": 3})
    assert binder.bind(task) == {
        "name": None,
        "anything": None,
        "maybe": None,
        "optional": None,
        "size": 3,
    }
    with pytest.raises(InputError) as err:
        binder.bind(Task("t-2", "absent", {}))
    assert str(err.value) == "input is missing required parameter 'size'"
    assert err.value.parameter == "size"
