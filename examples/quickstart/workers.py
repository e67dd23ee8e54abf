"""Quick-start workers: a plain function, an ``async def`` one, and one that can fail.

Try them with no server at all, from the repository root::

    taskfleet local examples.quickstart.workers --tasks examples/quickstart/tasks.json

or run them in a pool (an embedded NATS server starts by itself) and feed it::

    taskfleet run examples.quickstart.workers
    taskfleet submit greet --input '{"name": "Ada"}' --wait
"""

from __future__ import annotations

import asyncio

from taskfleet import NonRetryableError, add_log, worker_task


@worker_task("greet", threads=2)
def greet(name: str, punctuation: str = "!") -> dict[str, str]:
    """Input is bound to parameters by name; the returned dict is the task's output."""
    return {"greeting": f"Hello, {name}{punctuation}"}


@worker_task("fetch_length", threads=8)
async def fetch_length(text: str, delay: float = 0.01) -> dict[str, int]:
    """``async def`` handlers run on the worker's event loop, ``threads`` of them at a time."""
    await asyncio.sleep(delay)  # stands in for an HTTP call or a database query
    add_log(f"measured {len(text)} characters")
    return {"length": len(text)}


@worker_task("divide")
def divide(a: float, b: float) -> dict[str, float]:
    """Raising fails the task; ``NonRetryableError`` says a retry cannot help."""
    if b == 0:
        raise NonRetryableError("cannot divide by zero")
    return {"quotient": a / b}
