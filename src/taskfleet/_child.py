"""The entry point of a worker process: from a picklable recipe to a running :class:`Runner`.

The supervisor starts each worker process with :func:`child_main` and a :class:`ChildRecipe`
(the worker, its options, the configuration, where its ledger and metrics files are). The
process builds everything live itself — logging, metrics, its source client, the spool, its view
of the ledger — runs the loop until told to stop, and exits with a code the supervisor reads:
:data:`EXIT_OK` after a clean stop, :data:`EXIT_START_FAILED` when it could not get going (the
restart policy backs off those; ``_slots.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from . import _metrics as metrics
from . import _tracing
from ._config import Configuration
from ._control import SUPERVISOR_GONE, ControlClient
from ._errors import ConfigurationError, SourceError
from ._ledger import Ledger
from ._logs import redact
from ._options import WorkerOptions
from ._runner import Runner
from ._spool import Spool
from ._worker import Worker

__all__ = ["EXIT_OK", "EXIT_START_FAILED", "ChildRecipe", "child_main"]

log = logging.getLogger("taskfleet.runner")

#: Exit codes of a worker process (the supervisor reads them).
EXIT_OK = 0
EXIT_START_FAILED = 3
#: Seconds past the drain timeout after which a process whose supervisor is gone is ended by
#: the kernel (SIGALRM, whose default action needs nothing of the process), whatever it is
#: stuck in.
ORPHAN_MARGIN = 5


@dataclass(frozen=True)
class ChildRecipe:
    """Everything a worker process needs, picklable: it builds its own clients from this."""

    worker: Worker
    options: WorkerOptions
    index: int
    config: Configuration
    metrics_dir: str | None
    conn: Connection | None
    hooks: tuple[Any, ...] = ()
    #: the in-flight ledger file the supervisor created for this process (None: none)
    ledger_path: str | None = None
    #: give handlers' own loggers the pool's logging, unless this process configured the root
    #: logger itself (False: the application did so in the supervisor)
    root_logging: bool = True
    #: the supervisor's pid: its death, not this process's parent's, is "supervisor gone"
    supervisor: int = 0


def child_main(recipe: ChildRecipe) -> None:
    """Body of a worker process (a module-level function, so every start method can run it)."""
    from ._logs import configure_logging, root_configured, secrets_of
    from ._sources import create_source

    # The supervisor decides about Ctrl-C for the whole pool; SIGTERM means "drain".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(
        recipe.config.log_level,
        recipe.config.log_format,
        secrets=secrets_of(recipe.config),
        # The workers' module may have configured logging when it was imported (unpickling the
        # recipe imports it): then that configuration is the application's choice.
        root=recipe.root_logging and not root_configured(),
    )
    metrics.setup(recipe.metrics_dir, buffered=True)
    _raise_mmap_threshold()
    control = ControlClient(recipe.conn)
    try:
        source = create_source(recipe.config)
        spool = Spool(recipe.config.state_path / "spool.sqlite3", source.spool_key())
    except (ConfigurationError, SourceError) as exc:
        log.error("%s: cannot start: %s", recipe.worker.task_type, exc)
        control.leaving(redact(f"start failed: {exc}"))
        sys.exit(EXIT_START_FAILED)
    ledger = None
    if recipe.ledger_path:
        try:
            ledger = Ledger(recipe.ledger_path, recipe.options.threads)
        except OSError as exc:
            # Gone with its pool (this process started as the pool stopped): nobody reads it,
            # and the pipe tells this process soon enough that nobody is listening.
            log.warning("%s: no in-flight ledger: %s", recipe.worker.task_type, exc)
    runner = Runner(
        recipe.worker,
        source,
        options=recipe.options,
        spool=spool,
        control=control,
        hooks=recipe.hooks,
        ledger=ledger,
    )
    if _tracing.configure(recipe.config):
        _tracing.instrument(runner)  # handlers run inside their spans (docs/tracing.md)
    # With the supervisor gone nobody else reports for this process: it finishes what it can
    # within the drain timeout and hands back the rest itself (``Runner._drain``).
    runner.orphan_drain = recipe.config.drain_timeout
    runner.progress_interval = recipe.config.progress_interval

    def on_stop(reason: str) -> None:
        if reason == SUPERVISOR_GONE:
            signal.alarm(math.ceil(recipe.config.drain_timeout) + ORPHAN_MARGIN)
        runner.request_stop(reason)

    signal.signal(signal.SIGTERM, lambda *_: runner.request_stop("SIGTERM"))
    control.listen(on_stop, runner.set_paused, supervisor=recipe.supervisor)
    try:
        reason = asyncio.run(runner.run())
    except (ConfigurationError, SourceError) as exc:
        log.error("%s: cannot start: %s", recipe.worker.task_type, exc)
        control.leaving(redact(f"start failed: {exc}"))
        sys.exit(EXIT_START_FAILED)
    finally:
        spool.close()
        if _tracing.ACTIVE:
            _tracing.flush()  # a worker process exits without running atexit handlers
    if runner.abandoned:
        # Its handlers may still be running (stuck in a call): nothing is left to wait for.
        logging.shutdown()
        os._exit(EXIT_OK)
    control.leaving(reason)
    sys.exit(EXIT_OK)


def _raise_mmap_threshold() -> None:
    """Let glibc's allocator serve the event loop's socket reads from its heap.

    asyncio reads a socket into a fresh 256 KiB buffer and shrinks it to what arrived. glibc
    maps blocks of that size with ``mmap`` until the process has freed a larger mapped block
    (its threshold then rises to that block's size), so until then every read costs an ``mmap``,
    an ``mremap`` and a ``munmap`` (~20-50 us a read on a busy NATS worker; docs/benchmarks.md).
    Freeing one 1 MiB block once raises the threshold; elsewhere this is a harmless allocation.
    """
    block = bytearray(1 << 20)
    del block
