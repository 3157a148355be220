"""What every croupier process does alike, supervisor, worker or single: its signals, keeping
what it built at start out of the cyclic collector's walks, and how many cores it may use."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from croupier.runtime.notify import notify

log = logging.getLogger("croupier")


def install_signals(reload: Any, reopen: Callable[[], Any] | None = None
                    ) -> tuple[asyncio.Event, asyncio.Event]:
    """SIGTERM and SIGINT set `stop`; SIGHUP runs `reload()` once `started` is set; SIGUSR1
    runs `reopen()` (the access logs, after logrotate).
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
    if reopen is not None:
        loop.add_signal_handler(signal.SIGUSR1, reopen)
    else:       # nothing to reopen: never the default action, which ends the process
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
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


def cores_available() -> int:
    """What `workers = "auto"` means: the cores this process may run on (its CPU affinity, as
    HAProxy counts them, not the machine's), fewer if a cgroup CPU quota allows less."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs' worth of time a cgroup allows (v2 cpu.max, or v1 cfs quota/period), if capped."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                                     "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            fields = Path(quota_file).read_text().split()
            if period_file is not None:
                fields.append(Path(period_file).read_text().strip())
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            return int(fields[0]) / int(fields[1])
        except (ValueError, ZeroDivisionError):
            return None
    return None
