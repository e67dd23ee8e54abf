"""Imported only by the multiprocessing fork server of a pool, as one of its preloaded modules
(``TaskHandler._preload``): the fork server ignores SIGTERM, as it already ignores SIGINT.

A stop signal sent to the whole process group (systemd's ``KillMode=control-group``,
``timeout``, ``kill -- -PGID``) reaches the fork server too. The supervisor drains on it, and
the worker processes, children of the fork server, must be able to go on meanwhile; the fork
server ends by itself once the supervisor and every worker process are gone. Worker processes
forked from it install their own SIGTERM handler first thing (``_child.py``). The resource
tracker ignores both signals on its own. See docs/reliability.md.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
