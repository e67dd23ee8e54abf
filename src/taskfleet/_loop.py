"""An asyncio event loop on a thread of its own, for synchronous callers.

The supervisor's agent (``_agent.py``) and ``TaskClient`` (``_client.py``) both keep async clients
alive for synchronous code: the loop runs forever in a daemon thread, and any thread hands it
coroutines with :meth:`BackgroundLoop.call` (wait for the result) or :meth:`BackgroundLoop.submit`
(do not wait).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundLoop", "CallTimedOut"]

T = TypeVar("T")


class CallTimedOut(TimeoutError):
    """A :meth:`BackgroundLoop.call` did not finish in time (the coroutine was cancelled)."""


class BackgroundLoop:
    """A new event loop, running in a daemon thread named ``name`` from construction on."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self.loop.is_running()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        Raises:
            CallTimedOut: ``timeout`` seconds passed first; the coroutine is cancelled. (A
                ``TimeoutError`` the coroutine raises itself passes through as it is.)
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the coroutine's own TimeoutError
            future.cancel()
            raise CallTimedOut(f"did not finish within {timeout:g} s") from None

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop's thread, soon."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and wait up to ``timeout`` for its thread; close it once the thread has
        ended. Pending coroutines are not awaited: finish them first."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
