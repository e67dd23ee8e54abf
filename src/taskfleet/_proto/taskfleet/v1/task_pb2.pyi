from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(_message.Message):
    __slots__ = ("id", "type", "input", "workflow_id", "correlation_id", "attempt", "created_time_ms", "response_timeout_seconds", "output_subject", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    input: bytes
    workflow_id: str
    correlation_id: str
    attempt: int
    created_time_ms: int
    response_timeout_seconds: float
    output_subject: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., input: _Optional[bytes] = ..., workflow_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., attempt: _Optional[int] = ..., created_time_ms: _Optional[int] = ..., response_timeout_seconds: _Optional[float] = ..., output_subject: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskLog(_message.Message):
    __slots__ = ("message", "created_time_ms")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    message: str
    created_time_ms: int
    def __init__(self, message: _Optional[str] = ..., created_time_ms: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "task_type", "status", "output", "reason", "logs", "worker_id", "attempt", "start_time_ms", "end_time_ms", "correlation_id")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSPECIFIED: _ClassVar[TaskResult.Status]
        COMPLETED: _ClassVar[TaskResult.Status]
        FAILED: _ClassVar[TaskResult.Status]
        FAILED_WITH_TERMINAL_ERROR: _ClassVar[TaskResult.Status]
        IN_PROGRESS: _ClassVar[TaskResult.Status]
    UNSPECIFIED: TaskResult.Status
    COMPLETED: TaskResult.Status
    FAILED: TaskResult.Status
    FAILED_WITH_TERMINAL_ERROR: TaskResult.Status
    IN_PROGRESS: TaskResult.Status
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_type: str
    status: TaskResult.Status
    output: bytes
    reason: str
    logs: _containers.RepeatedCompositeFieldContainer[TaskLog]
    worker_id: str
    attempt: int
    start_time_ms: int
    end_time_ms: int
    correlation_id: str
    def __init__(self, task_id: _Optional[str] = ..., task_type: _Optional[str] = ..., status: _Optional[_Union[TaskResult.Status, str]] = ..., output: _Optional[bytes] = ..., reason: _Optional[str] = ..., logs: _Optional[_Iterable[_Union[TaskLog, _Mapping]]] = ..., worker_id: _Optional[str] = ..., attempt: _Optional[int] = ..., start_time_ms: _Optional[int] = ..., end_time_ms: _Optional[int] = ..., correlation_id: _Optional[str] = ...) -> None: ...
