"""The in-flight ledger: which tasks a worker process holds, in memory its supervisor can read.

The supervisor must know every task a process holds, so that a crash, a hard time limit or a
drain can report them at once and leases can be extended while a handler holds the GIL. Telling
it over the control pipe cost a message per poll and per settlement, each waking the supervisor:
on a busy pool that was a tenth of a worker's CPU and most of the supervisor's (``scripts/bench``,
docs/benchmarks.md). The ledger replaces those messages with plain memory writes:

- one fixed-size record per execution slot in a file the supervisor created (on ``/dev/shm``
  when there is one) and both processes map;
- the worker process writes a slot's record *before* its task starts and clears it after the
  task is reported: no system call, no wake-up;
- the supervisor reads the records on its own clock (every monitor tick, and once more after the
  process died — a dead process's memory writes are all visible, even after ``kill -9``).

Each record is guarded by a sequence number (a seqlock): odd while the writer is inside, bumped
to even after. A reader that sees an odd number, or a different number after reading, treats
the record as "being written" and keeps what it knew; a process killed in the middle of writing
a record had not started that task (the same window as dying between a poll and its
announcement). A task whose record would not fit travels over the pipe as before.

Record layout (little-endian): ``u32 seq, u32 length, f64 started (time.monotonic)``, then
``length`` bytes: the pickled :func:`~taskfleet._control.pack_task` tuple.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from pathlib import Path
from typing import Any

__all__ = ["RECORD_SIZE", "Ledger", "ledger_dir"]

#: Bytes per slot record, header included. Larger tasks (huge ids or headers) use the pipe.
RECORD_SIZE = 4096
_HEADER = struct.Struct("<IId")
_SEQ = struct.Struct("<I")
_PAYLOAD_MAX = RECORD_SIZE - _HEADER.size


def ledger_dir() -> str | None:
    """Where ledger files go: shared memory when the machine has it (None: a temp dir)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


class Ledger:
    """The records of one worker process's slots.

    Args:
        path: the file (created by the supervisor with :meth:`create`).
        slots: number of records.
    """

    def __init__(self, path: str | Path, slots: int) -> None:
        self.path = str(path)
        self.slots = slots
        with open(self.path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), slots * RECORD_SIZE)
        self._seqs = [0] * slots  # writer side: the last sequence number written per record

    @classmethod
    def create(cls, path: str | Path, slots: int) -> Ledger:
        """Create the file, zero-filled (every record empty), and map it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.truncate(slots * RECORD_SIZE)
        return cls(path, slots)

    # -- the worker process's side (one writer: the runner's loop thread) ----------------------

    def put(self, index: int, packed: tuple[Any, ...], started: float) -> bool:
        """Record that slot ``index`` holds the task ``packed``; False when it does not fit."""
        payload = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > _PAYLOAD_MAX:
            return False
        self._write(index, payload, started)
        return True

    def clear(self, index: int) -> None:
        """Slot ``index`` holds nothing (its task was reported)."""
        self._write(index, b"", 0.0)

    def _write(self, index: int, payload: bytes, started: float) -> None:
        offset = index * RECORD_SIZE
        seq = self._seqs[index] + 1  # odd: being written
        mm = self._map
        _SEQ.pack_into(mm, offset, seq)
        mm[offset + _HEADER.size : offset + _HEADER.size + len(payload)] = payload
        _HEADER.pack_into(mm, offset, seq, len(payload), started)
        _SEQ.pack_into(mm, offset, seq + 1)  # even: complete
        self._seqs[index] = seq + 1

    # -- the supervisor's side ----------------------------------------------------------------

    def read(self) -> list[tuple[int, float, bytes] | None]:
        """Every record as ``(seq, started, payload)`` (empty payload: slot free), or None for a
        record that is being written right now."""
        mm = self._map
        out: list[tuple[int, float, bytes] | None] = []
        for index in range(self.slots):
            offset = index * RECORD_SIZE
            seq, length, started = _HEADER.unpack_from(mm, offset)
            if seq & 1 or length > _PAYLOAD_MAX:
                out.append(None)
                continue
            payload = mm[offset + _HEADER.size : offset + _HEADER.size + length]
            if _SEQ.unpack_from(mm, offset)[0] != seq:
                out.append(None)
                continue
            out.append((seq, started, payload))
        return out

    def close(self, *, remove: bool = False) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
