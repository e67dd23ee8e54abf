"""taskfleet.native against real libraries compiled from examples/native during the run."""

from __future__ import annotations

import array
import base64
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from taskfleet import InputError, NonRetryableError, Task, TaskError, TaskResult, TaskStatus
from taskfleet import _runner as runner_module
from taskfleet._outcome import result_from_exception, to_result
from taskfleet._runner import Runner, run_inline
from taskfleet._sources.memory import MemorySource
from taskfleet._worker import Worker
from taskfleet.native import (
    NativeCallError,
    NativeLibrary,
    NativeLibraryError,
    native_worker,
    output_buffer,
)


@pytest.fixture(scope="module")
def checksum_lib(native_libs: Any) -> NativeLibrary:
    return NativeLibrary(native_libs.checksum)


@pytest.fixture(scope="module")
def image_lib(native_libs: Any) -> NativeLibrary:
    return NativeLibrary(native_libs.imagekernel)


def execute(worker: Worker, task: Task) -> TaskResult:
    """What a worker process does with one task: bind, call, report (or report the failure)."""
    try:
        return to_result(task, worker.handler(**worker.bind(task)), "test")
    except Exception as exc:
        return result_from_exception(task, exc, "test")


def reference_convolve3(
    kernel: list[int], divisor: int, image: bytes, width: int, height: int
) -> bytes:
    """Pure-Python 3x3 convolution with clamped edges, rounding half away from zero."""

    def clamp(v: int, hi: int) -> int:
        return min(max(v, 0), hi)

    out = bytearray()
    for y in range(height):
        for x in range(width):
            total = sum(
                kernel[(dy + 1) * 3 + dx + 1]
                * image[clamp(y + dy, height - 1) * width + clamp(x + dx, width - 1)]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
            rounded = (abs(total) + divisor // 2) // divisor * (1 if total >= 0 else -1)
            out.append(clamp(rounded, 255))
    return bytes(out)


# ---- loading --------------------------------------------------------------------------------


def test_a_library_is_not_loaded_until_its_first_call(native_libs):
    lib = NativeLibrary(native_libs.checksum)
    crc32 = lib.function("tf_crc32", ["buffer+len"], "uint32")
    assert not lib.loaded
    crc32(b"x")
    assert lib.loaded


def test_a_missing_library_fails_the_call_naming_the_path_and_the_loader_error():
    lib = NativeLibrary("/nonexistent/libnothing.so")
    func = lib.function("f")
    with pytest.raises(NativeLibraryError) as caught:
        func()
    assert "/nonexistent/libnothing.so" in str(caught.value)
    assert "No such file or directory" in str(caught.value)


def test_the_env_var_overrides_the_path_and_is_named_when_it_is_wrong(native_libs, monkeypatch):
    lib = NativeLibrary("/nonexistent/libnothing.so", env_var="TF_TEST_CHECKSUM_LIB")
    monkeypatch.setenv("TF_TEST_CHECKSUM_LIB", str(native_libs.checksum))
    assert lib.function("tf_count_primes", ["uint64"], "uint64")(10) == 4

    other = NativeLibrary(native_libs.checksum, env_var="TF_TEST_MISSING_LIB")
    monkeypatch.setenv("TF_TEST_MISSING_LIB", "/elsewhere/libgone.so")
    with pytest.raises(NativeLibraryError, match=r"libgone\.so.*\$TF_TEST_MISSING_LIB"):
        other.function("tf_crc32", ["buffer+len"], "uint32")(b"")


def test_a_bare_name_is_found_like_the_linker_finds_it():
    strlen = NativeLibrary("c").function("strlen", ["str"], "size_t")
    assert strlen("héllo") == 6  # UTF-8 bytes, not characters


def test_a_missing_function_fails_naming_the_function(checksum_lib):
    with pytest.raises(NativeLibraryError, match="tf_no_such_function"):
        checksum_lib.function("tf_no_such_function")()


def test_an_unknown_type_name_fails_at_declaration(checksum_lib):
    with pytest.raises(ValueError, match="unknown argument type"):
        checksum_lib.function("tf_crc32", ["pointer"], "uint32")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_handle(checksum_lib):
    count_primes = checksum_lib.function("tf_count_primes", ["uint64"], "uint64")
    assert count_primes(100) == 25
    pid = os.fork()
    if pid == 0:  # child: the parent's handle is not reused, and a fresh one works
        ok = not checksum_lib.loaded and count_primes(100) == 25 and checksum_lib.loaded
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_library_pickles_as_its_path_not_its_handle(checksum_lib):
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    crc32(b"load it")
    copy = pickle.loads(pickle.dumps(crc32))
    assert copy.library.spec == checksum_lib.spec
    assert not copy.library.loaded
    assert copy(b"hello") == zlib.crc32(b"hello")


# ---- values, strings, buffers ----------------------------------------------------------------


def test_checksums_match_zlib_for_every_kind_of_buffer(checksum_lib):
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    adler32 = checksum_lib.function("tf_adler32", ["buffer+len"], "uint32")
    data = bytes(range(256)) * 40
    numbers = array.array("d", [1.5, -2.25, 1e300])
    for buffer in (data, bytearray(data), memoryview(data), memoryview(bytearray(data)), b""):
        assert crc32(buffer) == zlib.crc32(bytes(buffer))
        assert adler32(buffer) == zlib.adler32(bytes(buffer))
    assert crc32(numbers) == zlib.crc32(numbers.tobytes())


def test_a_numeric_loop_counts_primes(checksum_lib):
    count_primes = checksum_lib.function("tf_count_primes", ["uint64"], "uint64")
    assert [count_primes(n) for n in (0, 2, 10, 100, 10_000)] == [0, 1, 4, 25, 1229]


def test_strings_go_in_as_utf8_and_come_back_as_str(checksum_lib):
    version = checksum_lib.function("tf_checksum_version", [], "str")
    assert version() == "taskfleet-checksum 1.0"
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128
    )
    with pytest.raises(NativeCallError, match="unknown algorithm 'crc32é'"):
        checksum("crc32é", b"", output_buffer(4))


def test_output_buffers_are_written_in_place_without_copying(checksum_lib):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128
    )
    whole = bytearray(b"........")
    checksum("crc32", b"abc", memoryview(whole)[2:6])  # a window in the middle of a bytearray
    assert whole[:2] == b".." and whole[6:] == b".."
    assert bytes(whole[2:6]) == zlib.crc32(b"abc").to_bytes(4, "big")


def test_read_only_output_buffers_are_refused(checksum_lib):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128
    )
    with pytest.raises(TypeError, match=r"argument 3.*writable"):
        checksum("crc32", b"abc", b"four")


def test_a_blur_matches_a_pure_python_reference(image_lib):
    convolve3 = image_lib.function(
        "tf_convolve3", ["str", "buffer+len", "out+len", "int", "int"], "status", error_buffer=256
    )
    width, height = 7, 5
    image = bytes((x * 37 + y * 91 + x * y * 13) % 256 for y in range(height) for x in range(width))
    for name, kernel, divisor in (
        ("box", [1] * 9, 9),
        ("sharpen", [0, -1, 0, -1, 5, -1, 0, -1, 0], 1),
        ("edge", [-1, -1, -1, -1, 8, -1, -1, -1, -1], 1),
    ):
        out = output_buffer(len(image))
        convolve3(name, image, out, width, height)
        assert bytes(out) == reference_convolve3(kernel, divisor, image, width, height), name


# ---- errors ----------------------------------------------------------------------------------


def test_a_status_code_becomes_a_retryable_task_error_naming_function_code_and_message(
    checksum_lib,
):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128
    )
    with pytest.raises(TaskError) as caught:
        checksum("crc32", b"abc", output_buffer(2))
    error = caught.value
    assert isinstance(error, NativeCallError) and not error.non_retryable
    assert (error.function, error.code, error.detail) == (
        "tf_checksum",
        2,
        "output buffer needs 4 bytes",
    )
    assert str(error) == "tf_checksum failed with code 2: output buffer needs 4 bytes"


def test_declared_terminal_codes_raise_non_retryable_errors(checksum_lib):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128, terminal={1}
    )
    with pytest.raises(NonRetryableError, match="code 1: unknown algorithm 'md5'"):
        checksum("md5", b"abc", output_buffer(4))
    with pytest.raises(NativeCallError) as caught:  # not in the terminal set: retryable
        checksum("crc32", b"abc", output_buffer(1))
    assert not caught.value.non_retryable


def test_a_status_without_an_error_buffer_still_names_the_code(checksum_lib):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len", "int64", "size_t"], "status"
    )  # err=NULL, errlen=0 passed by hand: the library writes no message
    with pytest.raises(NativeCallError, match=r"^tf_checksum failed with code 1$"):
        checksum("md5", b"", output_buffer(4), 0, 0)


def test_a_cpp_exception_is_caught_at_the_boundary_and_becomes_the_failure_reason(image_lib):
    throw = image_lib.function("tf_test_aid_throw", ["str"], "status", error_buffer=256)
    with pytest.raises(NativeCallError) as caught:
        throw("disk on fire")
    assert caught.value.code == 4
    assert caught.value.detail == "thrown inside C++: disk on fire"

    convolve3 = image_lib.function(
        "tf_convolve3",
        ["str", "buffer+len", "out+len", "int", "int"],
        "status",
        error_buffer=256,
        terminal={1, 2},
    )
    with pytest.raises(NonRetryableError, match="code 2: map::at"):  # std::out_of_range
        convolve3("gaussian", b"\0" * 4, output_buffer(4), 2, 2)
    with pytest.raises(NonRetryableError, match="code 1: width and height must be >= 1, got 0x2"):
        convolve3("box", b"\0" * 4, output_buffer(4), 0, 2)


# ---- workers ---------------------------------------------------------------------------------


def test_a_native_worker_runs_a_task_with_base64_input(checksum_lib):
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    worker = native_worker("crc32", crc32, inputs=["data"], output="crc", threads=2)
    assert worker.options.threads == 2
    data = b"taskfleet" * 100
    task = Task("t-1", "crc32", {"data": base64.b64encode(data).decode()})
    result = execute(worker, task)
    assert result.status is TaskStatus.COMPLETED
    assert result.output_data == {"crc": zlib.crc32(data)}


def test_a_native_worker_runs_its_calls_in_slot_threads_however_short(checksum_lib, monkeypatch):
    # A native call releases the GIL so that slot threads run calls in parallel; a short one
    # must not be moved onto the event loop like a cheap Python handler (docs/workers.md).
    monkeypatch.setattr(runner_module, "CHEAP_STREAK", 8)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_OVER", 4)
    monkeypatch.setattr(runner_module, "CHEAP_CALL", 0.05)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_CLIP", 0.5)
    on_loop: list[str] = []
    call_on_loop = Runner._call_on_loop

    def spy(self, task, ctx):
        on_loop.append(task.task_id)
        return call_on_loop(self, task, ctx)

    monkeypatch.setattr(Runner, "_call_on_loop", spy)
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    data = base64.b64encode(b"short").decode()

    def run(worker: Worker) -> None:
        source = MemorySource()
        ids = [source.add(worker.task_type, {"data": data}).task_id for _ in range(40)]
        run_inline(worker, source, max_tasks=40)
        assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)

    run(native_worker("crc32", crc32, inputs=["data"], output="crc", threads=2))
    assert on_loop == []
    # Asked for explicitly, its calls may run on the loop (and this test can see it).
    run(native_worker("crc32", crc32, inputs=["data"], output="crc", cheap_on_loop=True))
    assert on_loop


def test_a_native_worker_survives_pickling_and_runs_in_the_copy(checksum_lib):
    count_primes = checksum_lib.function("tf_count_primes", ["uint64"], "uint64")
    worker = native_worker("primes", count_primes, inputs=["n"], output="primes", time_limit=5)
    copy = pickle.loads(pickle.dumps(worker))
    assert copy.options == worker.options
    assert execute(copy, Task("t-2", "primes", {"n": "1000"})).output_data == {"primes": 168}


@pytest.mark.slow
def test_a_native_worker_runs_in_a_spawned_process(checksum_lib):
    # spawn (like forkserver) sends the worker by pickle to a fresh interpreter: the library
    # travels as its path and is opened there.
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    worker = native_worker("crc32", crc32, inputs=["data"], output="crc")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        assert pool.submit(worker, data=b"far away").result(timeout=60) == {
            "crc": zlib.crc32(b"far away")
        }


def test_a_native_worker_fails_bad_input_terminally_without_calling(checksum_lib):
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    worker = native_worker("crc32", crc32, inputs=["data"], output="crc")
    result = execute(worker, Task("t-3", "crc32", {"data": "not base64!"}))
    assert result.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert result.exception == InputError.__name__
    assert "base64" in (result.reason_for_incompletion or "")


def test_a_native_status_error_fails_the_task_with_its_reason(checksum_lib):
    checksum = checksum_lib.function(
        "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=128, terminal={1}
    )

    def handler(algorithm: str, data: bytes) -> dict:
        out = output_buffer(4)
        checksum(algorithm, data, out)
        return {"checksum": out.hex()}

    worker = Worker("checksum", handler)
    ok = execute(worker, Task("t-4", "checksum", {"algorithm": "adler32", "data": "YWJj"}))
    assert ok.output_data == {"checksum": f"{zlib.adler32(b'abc'):08x}"}
    failed = execute(worker, Task("t-5", "checksum", {"algorithm": "md5", "data": "YWJj"}))
    assert failed.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert failed.reason_for_incompletion == (
        "tf_checksum failed with code 1: unknown algorithm 'md5' (crc32, adler32)"
    )
    assert failed.exception == "TerminalNativeCallError"


def test_a_native_worker_refuses_inputs_that_do_not_match_the_arguments(checksum_lib):
    crc32 = checksum_lib.function("tf_crc32", ["buffer+len"], "uint32")
    with pytest.raises(ValueError, match="takes 1 arguments"):
        native_worker("crc32", crc32, inputs=["data", "extra"])
    checksum = checksum_lib.function("tf_checksum", ["str", "buffer+len", "out+len"], "status")
    with pytest.raises(ValueError, match=r"'out\+len'.*Python handler"):
        native_worker("checksum", checksum, inputs=["algorithm", "data", "out"])


# ---- test aids: a crash and a hang in native code --------------------------------------------


def _python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
@pytest.mark.chaos
def test_the_segfault_aid_kills_its_process_with_sigsegv(native_libs):
    done = _python(
        "from taskfleet.native import NativeLibrary\n"
        f"NativeLibrary({str(native_libs.checksum)!r}).function('tf_test_aid_segfault')()\n"
        "print('survived')\n"
    )
    assert done.returncode == -signal.SIGSEGV, done.stderr
    assert "survived" not in done.stdout


@pytest.mark.slow
def test_the_spin_aid_never_returns_but_leaves_the_gil_to_other_threads(native_libs):
    # The spinning call holds a CPU forever; the main thread still runs Python and exits,
    # which only works because the native call released the GIL.
    done = _python(
        "import threading\n"
        "from taskfleet.native import NativeLibrary\n"
        f"spin = NativeLibrary({str(native_libs.checksum)!r}).function('tf_test_aid_spin_forever')\n"
        "thread = threading.Thread(target=spin, daemon=True)\n"
        "thread.start()\n"
        "total = sum(range(2_000_000))\n"
        "thread.join(0.2)\n"
        "print('spinning' if thread.is_alive() else 'returned', total)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "spinning"
