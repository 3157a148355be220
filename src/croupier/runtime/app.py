"""The composition root: what a `croupier run` process is, built in one place.

It takes the validated config, holds the instance lock, decides how many processes serve
(one, or a supervisor and its workers), builds what serves (`build`: the model, the member
sources, the policies, the checks, the schedules, the data plane's context, the admin API,
put together as runtime.server's Balancer or one of workers.py's two types), installs the
signals, tells systemd where it is, and stops gracefully. Everything below receives what it
needs; nothing below imports this.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, TypeVar

from croupier.admin.api import build_app
from croupier.admin.schedule import Scheduler
from croupier.balancing import make_policy
from croupier.config.load import LoadedConfig
from croupier.health.checks import Checker
from croupier.health.outlier import Outlier
from croupier.model.state import Model
from croupier.proxy.context import ProxyContext
from croupier.runtime import state_file
from croupier.runtime.notify import notify
from croupier.runtime.process import (
    cores_available,
    freeze_startup_objects,
    install_signals,
    until_stopped,
)
from croupier.runtime.server import Balancer, Parts
from croupier.sources.admin_api import AdminApi
from croupier.sources.config_file import ConfigFile

log = logging.getLogger("croupier")

B = TypeVar("B", bound=Balancer)


def build(kind: type[B], loaded: LoadedConfig, loop: asyncio.AbstractEventLoop,
          saved: dict[str, Any] | None = None,
          inherited: dict[str, socket.socket] | None = None) -> B:
    """One instance of `kind` (Balancer, or a supervisor's or worker's model) serving
    `loaded`. `saved`: what operators changed at run time; read from the state file when
    not given (a worker is sent it instead). `inherited`: listening sockets handed down."""
    admin = loaded.config.admin
    path = loaded.beside(admin.state_file) if admin.enabled and kind.controls else None
    if saved is None:
        saved = state_file.read(path) if path is not None else state_file.empty()
    model = Model()
    outlier = Outlier(loop)
    parts = Parts(model=model, context=ProxyContext(loop, outlier.failure),
                  checker=Checker(model, loop), scheduler=Scheduler(model, loop),
                  make_policy=make_policy, config_members=ConfigFile(loaded),
                  api_members=AdminApi(state_file.api_members(saved)), admin_app=build_app,
                  state_file=path)
    return kind(loaded, parts, saved, inherited)


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
            run_supervised(loaded, workers, build, log_args, [lock])
    finally:
        lock.close()


def run(loaded: LoadedConfig) -> None:
    """One process that serves and controls: until SIGTERM or SIGINT, then a graceful stop;
    SIGHUP reloads the config."""
    from croupier.runtime import eventloop

    async def main() -> None:
        balancer = build(Balancer, loaded, asyncio.get_running_loop())
        stop, started = install_signals(balancer.reload, balancer.reopen_logs)
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


def run_worker(channel_fd: int, index: int) -> None:
    """`croupier worker`: one of a supervisor's workers (runtime/workers.py)."""
    from croupier.runtime import workers

    workers.run_worker(channel_fd, index, build)
