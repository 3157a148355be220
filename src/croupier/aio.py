"""asyncio helpers the control plane's parts share (the lowest layer: it imports nothing of
croupier's)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("croupier")


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has stopped: its cleanup runs before the
    caller goes on. A task that had died of an error is logged with it, not passed over: a
    part that stopped working must not stop quietly."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("%s had stopped on an error", task.get_name())
