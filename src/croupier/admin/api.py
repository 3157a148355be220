"""The admin API (FastAPI, served by uvicorn on croupier's own event loop).

Every endpoint is `async def` on purpose: FastAPI runs plain `def` endpoints in a thread
pool, and the model may only be touched from the event loop's thread.

Reading needs no token; every change needs `Authorization: Bearer <token>`. It binds loopback
by default ([admin].listen). The OpenAPI description is at /openapi.json, docs at /docs.
"""

from __future__ import annotations

import hmac
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from croupier.admin import ops
from croupier.admin.metrics import render_metrics
from croupier.config.schema import Duration, Port

if TYPE_CHECKING:
    from croupier.runtime.server import Balancer


class StateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["ready", "drain", "maint"]
    reason: str = ""


class NewMember(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = None
    address: str | None = None
    port: Port
    weight: int = Field(default=1, ge=0, le=1000)


class WeightChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: int = Field(ge=0, le=1000)


class NewWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str
    start: datetime | float = Field(description="ISO 8601 time, or epoch seconds")
    end: datetime | float | None = None
    duration: Duration | None = None
    lead: Duration = 0.0
    reason: str = ""
    id: str | None = None


# Module level: annotations are strings here (PEP 563), and FastAPI resolves them against the
# module's names, never a function's locals.
_bearer = HTTPBearer(auto_error=False)


def _epoch(value: datetime | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise HTTPException(422, "times need a timezone (e.g. 2026-12-01T02:00:00Z)")
        return value.timestamp()
    return float(value)


def build_app(balancer: Balancer, token: str) -> FastAPI:
    app = FastAPI(title="croupier admin API", version="1",
                  description="State, maintenance and metrics of a running croupier.")
    async def authorized(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "a change needs the admin token: "
                                     "Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    change = [Depends(authorized)]      # every route that changes anything carries this

    @app.exception_handler(ops.OpError)
    async def op_error(request: Request, exc: ops.OpError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    def changed() -> None:
        balancer.save_state()

    def target_view(t: ops.Target) -> dict[str, Any]:
        members = list(t.host.members) if t.host else list(t.members)
        return {"target": t.text, "host": ops.host_view(t.host) if t.host else None,
                "members": [ops.member_view(m) for m in members],
                "drained": all(ops.drained(m) for m in members)}

    @app.get("/healthz", response_class=PlainTextResponse, summary="The admin API answers")
    async def healthz() -> str:
        return "ok\n"

    @app.get("/api/v1/status", summary="Listeners, pools, members, hosts and schedules")
    async def status() -> dict[str, Any]:
        return ops.status(balancer)

    @app.get("/api/v1/pools/{pool}", summary="One pool and its members")
    async def pool(pool: str) -> dict[str, Any]:
        p = balancer.pools.get(pool)
        if p is None:
            raise ops.OpError(404, f"no pool named {pool!r}")
        return {"name": p.name, "algorithm": p.algorithm, "eligible": len(p.eligible),
                "members": [ops.member_view(m) for m in p.members]}

    @app.get("/api/v1/targets/{target:path}", summary="Members (and host) a target names")
    async def target(target: str) -> dict[str, Any]:
        return target_view(ops.resolve(balancer, target))

    @app.put("/api/v1/targets/{target:path}/state", summary="Set a member's or host's admin state",
              dependencies=change)
    async def set_state(target: str, change: StateChange) -> dict[str, Any]:
        t = ops.resolve(balancer, target)
        ops.set_state(balancer, t, change.state, "api", change.reason)
        changed()
        return target_view(t)

    @app.post("/api/v1/pools/{pool}/members", status_code=201, summary="Add a member",
              dependencies=change)
    async def add_member(pool: str, new: NewMember) -> dict[str, Any]:
        member = balancer.add_member(pool, new.host, new.address, new.port, new.weight)
        changed()
        return ops.member_view(member)

    @app.delete("/api/v1/pools/{pool}/members/{member}", summary="Remove a member",
              dependencies=change)
    async def remove_member(pool: str, member: str) -> dict[str, Any]:
        t = ops.resolve(balancer, f"{pool}/{member}")
        balancer.remove_member(t.members[0])
        changed()
        return {"removed": f"{pool}/{t.members[0].name}",
                "in_flight": t.members[0].in_flight}

    @app.put("/api/v1/pools/{pool}/members/{member}/weight", summary="Change a weight",
              dependencies=change)
    async def set_weight(pool: str, member: str, change: WeightChange) -> dict[str, Any]:
        t = ops.resolve(balancer, f"{pool}/{member}")
        balancer.set_weight(t.members[0], change.weight)
        changed()
        return ops.member_view(t.members[0])

    @app.get("/api/v1/schedules", summary="Maintenance windows, soonest first")
    async def schedules() -> list[dict[str, Any]]:
        return balancer.scheduler.listing()

    @app.post("/api/v1/schedules", status_code=201, summary="Schedule a maintenance window",
              dependencies=change)
    async def add_schedule(new: NewWindow) -> dict[str, Any]:
        start = _epoch(new.start)
        if (new.end is None) == (new.duration is None):
            raise HTTPException(422, "give exactly one of end and duration")
        end = _epoch(new.end) if new.end is not None else start + (new.duration or 0.0)
        window = balancer.scheduler.add(new.target, start, end, new.lead, "api", new.reason,
                                        new.id)
        changed()
        return window.view(time.time())

    @app.delete("/api/v1/schedules/{window_id}", summary="Cancel a maintenance window",
              dependencies=change)
    async def remove_schedule(window_id: str) -> dict[str, Any]:
        window = balancer.scheduler.remove(window_id)
        changed()
        return window.view(time.time())

    @app.post("/api/v1/reload", summary="Re-read the config file",
              dependencies=change)
    async def reload() -> dict[str, Any]:
        return await balancer.reload()

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        body, content_type = render_metrics(balancer)
        return PlainTextResponse(body, media_type=content_type)

    return app
