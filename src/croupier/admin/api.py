"""The admin API (FastAPI, served by uvicorn on croupier's own event loop).

Every endpoint is `async def` on purpose: FastAPI runs plain `def` endpoints in a thread
pool, and the model may only be touched from the event loop's thread.

Reading needs no token; every change needs `Authorization: Bearer <token>`, checked from the
headers before any body is read (`guard.AdminGuard`), and bodies are small (413 past 64 KiB).
It binds loopback by default ([admin].listen), and answers only requests whose Host is one of
its own names or addresses (a page elsewhere that rebinds its DNS name to 127.0.0.1 would
otherwise read it from the operator's browser). The OpenAPI description is at /openapi.json,
docs at /docs; the dashboard is at / (admin/dashboard.py, admin/static/).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from croupier import __version__
from croupier.admin import ops, views
from croupier.admin.dashboard import Dashboard
from croupier.admin.guard import NEEDS_TOKEN, AdminGuard, token_matches
from croupier.admin.metrics import render_metrics
from croupier.config.schema import MAX_EPOCH, Address, Duration, Name, Port, Text, Weight, When

if TYPE_CHECKING:
    from collections.abc import Callable

    from croupier.admin.schedule import Scheduler
    from croupier.config.load import LoadedConfig
    from croupier.model.state import Host, Member, Pool
    from croupier.proxy.listener import Listener


class Instance(Protocol):
    """What the admin API reads and changes of a running instance (the runtime's own object
    satisfies it; the API never imports the runtime)."""

    pools: dict[str, Pool]
    hosts: dict[str, Host]
    listeners: list[Listener]
    scheduler: Scheduler
    workers_view: Callable[[], list[dict[str, Any]]] | None
    loaded: LoadedConfig

    def add_member(self, pool_name: str, host_name: str | None, address: str | None,
                   port: int, weight: int) -> Member: ...

    def remove_member(self, member: Member) -> None: ...

    def set_weight(self, member: Member, weight: int) -> None: ...

    def save_state(self) -> None: ...

    async def fleet_ready(self) -> None: ...

    async def commit_change(self, local: bool = False) -> int | None: ...

    async def fleet_view(self) -> dict[str, Any]: ...

    def fleet_metrics(self) -> dict[str, float] | None: ...

    async def reload(self) -> dict[str, Any]: ...

    def reopen_logs(self) -> int: ...

    def access_log_counts(self) -> tuple[int, int]: ...

    def certificate_ends(self) -> list[tuple[str, str, float]]: ...

    def tls_failures(self) -> dict[str, int]: ...


# The bodies the API takes: the config's own types (croupier.config.schema), so that what the
# API accepts and what a config may say are checked by the same validators.


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StateChange(_Body):
    state: Literal["ready", "drain", "maint"]
    reason: Text = ""
    # This instance alone, origin "local" (with a fleet: not shared, and possible while etcd
    # does not answer)
    local: bool = False


class NewMember(_Body):
    host: Name | None = None
    address: Address | None = None
    port: Port
    weight: Weight = 1


class WeightChange(_Body):
    weight: Weight


class NewWindow(_Body):
    target: Text = Field(min_length=1)
    start: When = Field(description="ISO 8601 time with its offset, or epoch seconds")
    end: When | None = None
    duration: Duration | None = None
    lead: Duration = 0.0
    reason: Text = ""
    id: Name | None = None


# The page loads only croupier's own files and talks only to croupier: no inline script, no
# other origin, not framed by another site.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

# Module level: annotations are strings here (PEP 563), and FastAPI resolves them against the
# module's names, never a function's locals.
_bearer = HTTPBearer(auto_error=False)


def status_view(instance: Instance) -> dict[str, Any]:
    return {
        "config": {"path": str(instance.loaded.path), "digest": instance.loaded.digest},
        "listeners": [{"name": lst.name, "listen": lst.config.listen, "mode": lst.mode,
                       "pool": lst.default_pool.name,
                       "routes": [r.model_dump(exclude_none=True) for r in lst.config.routes],
                       "open_connections": lst.open_connections}
                      for lst in instance.listeners],
        "pools": [{"name": p.name, "algorithm": p.algorithm,
                   "eligible": len(p.eligible), "members": [ops.member_view(m) for m in p.members]}
                  for p in instance.pools.values()],
        "hosts": [ops.host_view(h) for h in instance.hosts.values()],
        "schedules": instance.scheduler.listing(),
        "workers": instance.workers_view() if instance.workers_view is not None else [],
    }


STATIC = Path(__file__).parent / "static"


def own_names(listen: str, extra: list[str]) -> list[str]:
    """The Host values the admin API answers: loopback's names, the address it listens on,
    this machine's name and addresses, and the names the config adds ([admin].allowed_hosts:
    what operators type, needed when it listens on a wildcard address)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    names = {"localhost", "127.0.0.1", "[::1]", socket.gethostname(), *extra}
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host else host)
    try:
        for *_, addr in socket.getaddrinfo(socket.gethostname(), None):
            ip = str(addr[0])
            names.add(f"[{ip}]" if ":" in ip else ip)
    except OSError:
        pass
    return sorted(names)


def build_app(instance: Instance, token: str) -> FastAPI:
    # FastAPIOffline: /docs and /redoc load their assets from croupier, not from a CDN.
    app = FastAPIOffline(title="croupier admin API", version="1",
                         description="State, maintenance and metrics of a running croupier.")
    app.add_middleware(AdminGuard, token=token)
    admin = instance.loaded.config.admin
    app.add_middleware(TrustedHostMiddleware,   # outermost: before the token is looked at
                       allowed_hosts=own_names(admin.listen, admin.allowed_hosts))
    cluster = instance.loaded.config.cluster
    dashboard = Dashboard(
        lambda: instance.pools,
        lambda: {h.name: h.check for h in instance.loaded.config.hosts if h.check is not None},
        lambda: status_view(instance),
        instance.fleet_view if cluster is not None else None,
        {"instance": (cluster.instance if cluster and cluster.instance else
                      socket.gethostname()), "version": __version__})
    app.state.dashboard = dashboard     # started and stopped by the runtime, on its loop
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def authorized(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        # AdminGuard has checked already, by method; this declares the scheme in the OpenAPI
        # description and guards each changing route by itself, whatever its method.
        if creds is None or not token_matches(f"Bearer {creds.credentials}", token):
            raise HTTPException(401, NEEDS_TOKEN, headers={"WWW-Authenticate": "Bearer"})

    change = [Depends(authorized)]      # every route that changes anything carries this

    @app.exception_handler(ops.OpError)
    async def op_error(request: Request, exc: ops.OpError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input back, and an input of NaN or Infinity
        # (which Python's JSON reader lets in) cannot be written as JSON: a 500. The field's
        # place and what is wrong with it name the problem well enough.
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                                         "type": e.get("type", "")} for e in exc.errors()]},
                            status_code=422)

    async def changed() -> int | None:
        return await instance.commit_change()

    def target_view(t: ops.Target) -> dict[str, Any]:
        members = list(t.host.members) if t.host else list(t.members)
        return {"target": t.text, "host": ops.host_view(t.host) if t.host else None,
                "members": [ops.member_view(m) for m in members],
                "drained": all(ops.drained(m) for m in members)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html",
                            headers={"Cache-Control": "no-cache",
                                     "Content-Security-Policy": CSP})

    @app.get("/api/v1/events", summary="The dashboard's live stream (server-sent events): "
             "`hello` with the sparklines' history, then a `frame` a second", tags=["dashboard"])
    async def events() -> EventSourceResponse:
        return EventSourceResponse(dashboard.events(), ping=15, send_timeout=10,
                                   headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_class=PlainTextResponse, summary="The admin API answers")
    async def healthz() -> str:
        return "ok\n"

    @app.get("/api/v1/status", summary="Listeners, pools, members, hosts and schedules",
             response_model=views.StatusView)
    async def status() -> dict[str, Any]:
        return status_view(instance)

    @app.get("/api/v1/pools/{pool}", summary="One pool and its members",
             response_model=views.PoolView)
    async def pool(pool: str) -> dict[str, Any]:
        p = instance.pools.get(pool)
        if p is None:
            raise ops.OpError(404, f"no pool named {pool!r}")
        return {"name": p.name, "algorithm": p.algorithm, "eligible": len(p.eligible),
                "members": [ops.member_view(m) for m in p.members]}

    @app.get("/api/v1/targets/{target:path}", summary="Members (and host) a target names",
             response_model=views.TargetView)
    async def target(target: str) -> dict[str, Any]:
        return target_view(ops.resolve(instance, target))

    @app.put("/api/v1/targets/{target:path}/state", summary="Set a member's or host's admin state",
             dependencies=change, response_model=views.TargetView)
    async def set_state(target: str, change: StateChange) -> dict[str, Any]:
        if not change.local:            # first: the target is resolved on the present state
            await instance.fleet_ready()
        t = ops.resolve(instance, target)
        ops.set_state(t, change.state, "local" if change.local else "api", change.reason)
        revision = await instance.commit_change(local=change.local)
        return target_view(t) | {"revision": revision}

    @app.post("/api/v1/pools/{pool}/members", status_code=201, summary="Add a member",
              dependencies=change, response_model=views.MemberView)
    async def add_member(pool: str, new: NewMember) -> dict[str, Any]:
        await instance.fleet_ready()
        member = instance.add_member(pool, new.host, new.address, new.port, new.weight)
        await changed()
        return ops.member_view(member)

    @app.delete("/api/v1/pools/{pool}/members/{member}", summary="Remove a member",
                dependencies=change, response_model=views.RemovedView)
    async def remove_member(pool: str, member: str) -> dict[str, Any]:
        await instance.fleet_ready()
        t = ops.resolve(instance, f"{pool}/{member}")
        instance.remove_member(t.members[0])
        await changed()
        return {"removed": f"{pool}/{t.members[0].name}",
                "in_flight": t.members[0].in_flight}

    @app.put("/api/v1/pools/{pool}/members/{member}/weight", summary="Change a weight",
             dependencies=change, response_model=views.MemberView)
    async def set_weight(pool: str, member: str, change: WeightChange) -> dict[str, Any]:
        await instance.fleet_ready()
        t = ops.resolve(instance, f"{pool}/{member}")
        instance.set_weight(t.members[0], change.weight)
        await changed()
        return ops.member_view(t.members[0])

    @app.get("/api/v1/fleet", summary="The instances sharing this one's admin state (etcd), "
             "and where their views disagree", response_model=views.FleetView)
    async def fleet() -> dict[str, Any]:
        return await instance.fleet_view()

    @app.get("/api/v1/schedules", summary="Maintenance windows, soonest first",
             response_model=list[views.WindowView])
    async def schedules() -> list[dict[str, Any]]:
        return instance.scheduler.listing()

    @app.post("/api/v1/schedules", status_code=201, summary="Schedule a maintenance window",
              dependencies=change, response_model=views.WindowView)
    async def add_schedule(new: NewWindow) -> dict[str, Any]:
        start = new.start
        if (new.end is None) == (new.duration is None):
            raise HTTPException(422, "give exactly one of end and duration")
        end = new.end if new.end is not None else start + (new.duration or 0.0)
        if end > MAX_EPOCH:
            raise HTTPException(422, "the window would end after the year 9999")
        await instance.fleet_ready()
        window = instance.scheduler.add(new.target, start, end, new.lead, "api", new.reason,
                                        new.id)
        await changed()
        return window.view(time.time())

    @app.delete("/api/v1/schedules/{window_id}", summary="Cancel a maintenance window",
                dependencies=change, response_model=views.WindowView)
    async def remove_schedule(window_id: str) -> dict[str, Any]:
        await instance.fleet_ready()
        window = instance.scheduler.remove(window_id)
        await changed()
        return window.view(time.time())

    @app.post("/api/v1/reload", summary="Re-read the config file: applied everywhere, or "
              "refused everywhere with the reasons", dependencies=change,
              response_model=views.ReloadView)
    async def reload() -> dict[str, Any]:
        return await instance.reload()

    @app.post("/api/v1/reopen-logs", summary="Open the access log files again (after "
              "logrotate moved them), in every worker", dependencies=change,
              response_model=views.ReopenView)
    async def reopen_logs() -> dict[str, Any]:
        return {"reopened": instance.reopen_logs()}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        body, content_type = render_metrics(instance)
        return PlainTextResponse(body, media_type=content_type)

    return app
