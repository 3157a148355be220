"""What the admin API answers, as models: the OpenAPI description shows each response, and
FastAPI checks every answer against its model before it leaves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class EventView(BaseModel):
    time: float
    change: str
    cause: str


class MemberView(BaseModel):
    pool: str
    name: str
    host: str
    address: str
    port: int
    weight: int
    health: Literal["up", "down", "unknown"]
    admin_state: Literal["ready", "drain", "maint"]
    admin_origins: dict[str, str]
    host_health: Literal["up", "down", "unknown"]
    ejected: bool
    reason: str                 # why it takes no new request, or "ready" (Member.why_not)
    eligible: bool
    drained: bool
    in_flight: int
    requests: int
    failures: int
    retries: int
    mean_response_ms: float | None
    history: list[EventView]


class HostView(BaseModel):
    name: str
    address: str
    health: Literal["up", "down", "unknown"]
    admin_state: Literal["ready", "drain", "maint"]
    admin_origins: dict[str, str]
    members: list[str]
    history: list[EventView]


class PoolView(BaseModel):
    name: str
    algorithm: str
    eligible: int
    members: list[MemberView]


class ListenerView(BaseModel):
    name: str
    listen: str
    mode: str
    pool: str
    routes: list[dict[str, str]]
    open_connections: int


class WindowView(BaseModel):
    id: str
    target: str
    start: float
    end: float
    lead: float
    origin: str
    reason: str
    status: Literal["upcoming", "draining", "in maintenance"]


class WorkerView(BaseModel):
    index: int
    pid: int | None
    ready: bool
    digest: str                 # the config it said it serves
    requests: dict[str, int]    # by member key, as this worker counts them


class ConfigView(BaseModel):
    path: str
    digest: str


class StatusView(BaseModel):
    config: ConfigView
    listeners: list[ListenerView]
    pools: list[PoolView]
    hosts: list[HostView]
    schedules: list[WindowView]
    workers: list[WorkerView]


class TargetView(BaseModel):
    target: str
    host: HostView | None
    members: list[MemberView]
    drained: bool
    # With a fleet: the revision of the shared state that holds the change (every instance
    # that has applied it or a later one has the change; GET /api/v1/fleet says which)
    revision: int | None = None


class FleetInstanceView(BaseModel):
    name: str
    version: str | None = None
    config_digest: str | None = None
    admin: str | None = None
    applied: int = 0
    connected: bool = False
    members: dict[str, dict[str, str | int]] = {}


class FleetView(BaseModel):
    instance: str                       # the one that answers
    prefix: str
    connected: bool                     # it reaches etcd now
    applied: int                        # the revision of the shared state it has applied
    resyncs: int                        # whole reads after a compaction
    instances: list[FleetInstanceView]  # every live one (their leases run)
    config_digests_differ: bool
    # member -> instance -> "health/admin", for the members the instances do not agree on
    disagreements: dict[str, dict[str, str]]
    skipped_keys: list[str]             # keys under the prefix that do not parse, with why


class RemovedView(BaseModel):
    removed: str
    in_flight: int


class WorkerServes(BaseModel):
    index: int
    pid: int | None
    digest: str


class ReopenView(BaseModel):
    reopened: int               # access log files opened again (in every worker)


class ReloadView(BaseModel):
    reloaded: bool
    errors: list[str] = []      # why not, when it was refused: file, key or listener
    digest: str | None = None
    listeners: list[str] = []
    pools: list[str] = []
    members: int | None = None
    # Sections that changed but take effect only at a restart (the admin listener, the fleet)
    needs_restart: list[str] = []
    workers: list[WorkerServes] | None = None
