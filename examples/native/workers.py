"""Example workers backed by the native libraries in this folder.

Build the libraries first (``scripts/build-native``), then run them in a pool, e.g.::

    taskfleet run examples.native.workers

Two styles side by side:

* ``native_worker(...)``: a whole worker from one declared function, inputs mapped to arguments
  and the return value to an output key;
* a plain ``@worker_task`` function that calls declared functions itself, for anything a single
  call cannot express (output buffers sized from the input, several calls, post-processing).

Each library's location can be overridden with an environment variable, which is how a deployment
points the workers at a ``.so`` installed elsewhere.
"""

from __future__ import annotations

import base64
from pathlib import Path

from taskfleet import worker_task
from taskfleet.native import NativeLibrary, native_worker, output_buffer

BUILD = Path(__file__).resolve().parent / "build"

CHECKSUM = NativeLibrary(BUILD / "libchecksum.so", env_var="TASKFLEET_CHECKSUM_LIB")
IMAGEKERNEL = NativeLibrary(BUILD / "libimagekernel.so", env_var="TASKFLEET_IMAGEKERNEL_LIB")

# Declarations: made once, at import; the libraries load on the first call in each process.
crc32 = CHECKSUM.function("tf_crc32", ["buffer+len"], "uint32")
count_primes = CHECKSUM.function("tf_count_primes", ["uint64"], "uint64")
checksum = CHECKSUM.function(
    "tf_checksum", ["str", "buffer+len", "out+len"], "status", error_buffer=256, terminal={1}
)
convolve3 = IMAGEKERNEL.function(
    "tf_convolve3",
    ["str", "buffer+len", "out+len", "int", "int"],
    "status",
    error_buffer=256,
    terminal={1, 2},  # invalid arguments and unknown kernels: retrying cannot help
)

# Test aids: a crash and a hang inside native code, for the pool's reliability tests.
segfault = CHECKSUM.function("tf_test_aid_segfault")
spin_forever = CHECKSUM.function("tf_test_aid_spin_forever")

# ---- whole workers from one native function -----------------------------------------------

#: {"data": "<base64>"} -> {"crc": 907060870}
crc32_worker = native_worker("native_crc32", crc32, inputs=["data"], output="crc", threads=2)

#: {"n": 100000} -> {"primes": 9592}; CPU-bound, parallel across threads (the GIL is released)
count_primes_worker = native_worker(
    "native_count_primes", count_primes, inputs=["n"], output="primes", threads=2
)

#: test aids as workers: {} -> the process dies with SIGSEGV / never returns
segfault_worker = native_worker("native_test_aid_segfault", segfault, inputs=[], output=None)
spin_worker = native_worker(
    "native_test_aid_spin", spin_forever, inputs=[], output=None, time_limit=2
)

# ---- Python handlers calling native code ---------------------------------------------------


@worker_task("native_checksum", threads=2)
def checksum_task(data: bytes, algorithm: str = "crc32") -> dict:
    """{"data": "<base64>", "algorithm": "adler32"} -> {"algorithm": ..., "checksum": "<hex>"}"""
    out = output_buffer(4)
    checksum(algorithm, data, out)  # NativeCallError on a bad algorithm fails the task
    return {"algorithm": algorithm, "checksum": out.hex()}


@worker_task("native_filter_image", threads=2)
def filter_image(image: bytes, width: int, height: int, kernel: str = "box") -> dict:
    """A 3x3 kernel over an 8-bit grayscale image; the image travels base64-encoded."""
    out = output_buffer(len(image))
    convolve3(kernel, image, out, width, height)
    return {"image": base64.b64encode(out).decode("ascii"), "width": width, "height": height}


WORKERS = [crc32_worker, count_primes_worker, checksum_task, filter_image]
