"""The composition root: what a `croupier run` process is, built in one place.

It takes the validated config, holds the instance lock, decides how many processes serve
(one, or a supervisor and its workers), builds the model that serves (runtime.server's
Balancer, or workers.py's two types), installs the signals, tells systemd where it is, and
stops gracefully. Everything below receives what it needs; nothing below imports this.
"""

from __future__ import annotations

import asyncio
import logging

from croupier.config.load import LoadedConfig
from croupier.runtime import state_file
from croupier.runtime.notify import notify
from croupier.runtime.process import (
    cores_available,
    freeze_startup_objects,
    install_signals,
    until_stopped,
)
from croupier.runtime.server import Balancer

log = logging.getLogger("croupier")


def serve(loaded: LoadedConfig, log_args: tuple[str, ...] = ()) -> None:
    """Serve `loaded` until SIGTERM, with as many processes as it says (OSError: it could
    not start, with a message that names what). `log_args`: how workers log."""
    from croupier import __version__, data_plane_build

    workers = cores_available() if loaded.config.workers == "auto" else loaded.config.workers
    log.info("croupier %s, data plane %s, %d worker(s)", __version__, data_plane_build(),
             workers)
    lock = state_file.hold_lock(state_file.lock_path(loaded))
    try:
        if workers == 1:
            run(loaded)
        else:
            from croupier.runtime.workers import run_supervised
            run_supervised(loaded, workers, log_args)
    finally:
        lock.close()


def run(loaded: LoadedConfig) -> None:
    """One process that serves and controls: until SIGTERM or SIGINT, then a graceful stop;
    SIGHUP reloads the config."""
    from croupier.runtime import eventloop

    async def main() -> None:
        balancer = Balancer(loaded, asyncio.get_running_loop())
        stop, started = install_signals(balancer.reload)
        await balancer.start()
        started.set()
        notify("READY=1")
        freeze_startup_objects()
        for listener in balancer.listeners:
            log.info("listener %s on %s (%s) -> pool %s", listener.name, listener.config.listen,
                     listener.mode, listener.default_pool.name)
        if balancer.admin_port is not None:
            log.info("admin API on %s", loaded.config.admin.listen)
        await until_stopped(stop, balancer.stop)

    eventloop.run(main())
