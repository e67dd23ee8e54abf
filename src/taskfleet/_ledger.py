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
answer being recorded).

The ledger is the only way a worker process tells which tasks it holds. A task too big for a
record (huge ids or headers) is **spilled**: its payload goes to a side file next to the ledger
(``<ledger>.<record>``, written whole and renamed into place, stamped with the record's next
sequence number) *before* the record is written, so the record never points at a file that is
not there yet; the record then says "spilled" instead of holding the payload. Clearing the
record comes before removing the file. A reader whose side file is missing or stamped for
another sequence number treats the record as being written.

Record layout (little-endian): ``u32 seq, u32 length, f64 started (time.monotonic)``, then
``length`` bytes: the pickled :func:`pack_task` tuple. ``length`` equal to
``SPILLED`` marks a spilled record (the side file holds ``u32 seq`` and the payload).
"""

from __future__ import annotations

import dataclasses
import mmap
import operator
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._task import Task

__all__ = ["RECORD_SIZE", "SPILLED", "Ledger", "ledger_dir", "pack_task", "unpack_task"]

#: Bytes per slot record, header included. Larger tasks (huge ids or headers) are spilled.
RECORD_SIZE = 4096
#: The ``length`` of a record whose payload is in its side file.
SPILLED = 0xFFFF_FFFF
_HEADER = struct.Struct("<IId")
_SEQ = struct.Struct("<I")
_PAYLOAD_MAX = RECORD_SIZE - _HEADER.size


# A held task is recorded in the ledger as a plain tuple of its fields without the payload
# (``input_data``, ``raw``): pickling a dataclass per task costs several times more.
_FIELDS = [f.name for f in dataclasses.fields(Task)]
assert _FIELDS[2] == "input_data" and _FIELDS[-1] == "raw", _FIELDS
pack_task: Callable[[Task], tuple[Any, ...]] = operator.attrgetter(
    *(name for name in _FIELDS if name not in ("input_data", "raw"))
)


def unpack_task(packed: Sequence[Any]) -> Task:
    """The slim :class:`Task` (no ``input_data``, no ``raw``) that :func:`pack_task` packed."""
    return Task(packed[0], packed[1], {}, *packed[2:])


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
        self._spilled: set[int] = set()  # writer side: records whose side file exists

    @classmethod
    def create(cls, path: str | Path, slots: int) -> Ledger:
        """Create the file, zero-filled (every record empty), and map it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.truncate(slots * RECORD_SIZE)
        return cls(path, slots)

    # -- the worker process's side (one writer: the runner's loop thread) ----------------------

    def put(self, index: int, packed: tuple[Any, ...], started: float) -> None:
        """Record that slot ``index`` holds the task ``packed`` (spilled when it is too big).

        Raises:
            OSError: a spilled payload could not be written (the record is left as it was).
        """
        payload = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) <= _PAYLOAD_MAX:
            self._write(index, payload, started)
            return
        final = self._seqs[index] + 2  # the sequence number the record will have
        side = self.side_file(index)
        tmp = f"{side}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.write(_SEQ.pack(final) + payload)
        os.replace(tmp, side)
        self._spilled.add(index)
        self._write(index, b"", started, length=SPILLED)

    def clear(self, index: int) -> None:
        """Slot ``index`` holds nothing (its task was reported)."""
        self._write(index, b"", 0.0)
        if index in self._spilled:
            self._spilled.discard(index)
            _unlink(self.side_file(index))

    def side_file(self, index: int) -> str:
        """Where record ``index``'s payload goes when it is spilled."""
        return f"{self.path}.{index}"

    def _write(self, index: int, payload: bytes, started: float, length: int | None = None) -> None:
        offset = index * RECORD_SIZE
        seq = self._seqs[index] + 1  # odd: being written
        mm = self._map
        _SEQ.pack_into(mm, offset, seq)
        mm[offset + _HEADER.size : offset + _HEADER.size + len(payload)] = payload
        _HEADER.pack_into(mm, offset, seq, len(payload) if length is None else length, started)
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
            if seq & 1 or (length > _PAYLOAD_MAX and length != SPILLED):
                out.append(None)
                continue
            payload: bytes | None
            if length == SPILLED:
                payload = self._read_spilled(index, seq)
            else:
                payload = mm[offset + _HEADER.size : offset + _HEADER.size + length]
            if payload is None or _SEQ.unpack_from(mm, offset)[0] != seq:
                out.append(None)
                continue
            out.append((seq, started, payload))
        return out

    def _read_spilled(self, index: int, seq: int) -> bytes | None:
        try:
            with open(self.side_file(index), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) < _SEQ.size or _SEQ.unpack_from(data)[0] != seq:
            return None  # the file of an earlier or later task in this slot
        return data[_SEQ.size :]

    def close(self, *, remove: bool = False) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass
        if remove:
            _unlink(self.path)
            for index in range(self.slots):
                _unlink(self.side_file(index))
                _unlink(f"{self.side_file(index)}.tmp")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
