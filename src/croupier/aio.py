"""asyncio helpers the control plane's parts share (the lowest layer: it imports nothing of
croupier's)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any, and still running) and wait until it has stopped: its cleanup
    runs before the caller goes on. Whatever else it raised on the way out is for it to log."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
