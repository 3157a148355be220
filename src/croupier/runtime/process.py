"""What every croupier process does alike, supervisor, worker or single: its signals, and
keeping what it built at start out of the cyclic collector's walks."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from croupier.runtime.notify import notify

log = logging.getLogger("croupier")


def install_signals(reload: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """SIGTERM and SIGINT set `stop`; SIGHUP runs `reload()` once `started` is set.
    Installed before anything binds: a SIGHUP that lands while listeners bind must not take
    the default action, which would end the process."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started = asyncio.Event()

    async def reload_when_started() -> None:
        await started.wait()
        await reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: loop.create_task(reload_when_started()) and None)
    return stop, started


def freeze_startup_objects() -> None:
    """What starting made (modules, config, pools) lives as long as the process: out of the
    cyclic collector's sight, an older-generation collection does not walk it while
    requests wait (as gunicorn advises after preloading). Only in croupier's own processes:
    tests start balancers in theirs."""
    gc.collect()
    gc.freeze()


async def until_stopped(stop: asyncio.Event, shutdown: Callable[[], Awaitable[None]]) -> None:
    """Serve until SIGTERM or SIGINT, then say so (the log, systemd) and stop gracefully."""
    await stop.wait()
    log.info("stopping: letting requests in flight finish")
    notify("STOPPING=1")
    await shutdown()
