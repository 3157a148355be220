"""The dashboard's data: what the page at `/` shows, computed once a tick for every viewer.

A sampler reads each member's counters once a second, whether anyone watches or not, and
keeps what the page draws: requests a second for the last SPARK seconds (the sparklines, so
that a page opened now shows the last five minutes), and the counters of the last WINDOW
seconds (requests a second, the share of each status class, p50 and p99 from the duration
histogram's buckets). While at least one viewer is connected, each tick also builds one frame
(the status, those figures, the recent state changes, the fleet) and encodes it once; every
viewer's stream sends that same string, so ten open tabs cost what one does, plus the writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from croupier.admin.ops import OpError
from croupier.aio import cancelled
from croupier.config.schema import HostCheckConfig
from croupier.model.state import DURATION_BOUNDS, Pool

log = logging.getLogger("croupier.admin")

TICK = 1.0          # seconds between frames (and samples)
SPARK = 300         # seconds of requests a second a sparkline shows
WINDOW = 10         # seconds the rates, status shares and percentiles are taken over
CHANGES = 40        # recent state changes shown


class _Series:
    """One member's samples: (time, responses by status class, duration buckets)."""

    __slots__ = ("samples", "spark")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, list[int], list[int]]] = deque(maxlen=WINDOW + 1)
        self.spark: deque[float] = deque(maxlen=SPARK)


def quantile(q: float, buckets: list[int]) -> float | None:
    """The `q` quantile of durations counted in `buckets` (DURATION_BOUNDS, then +Inf), in
    seconds, interpolated within its bucket as Prometheus' histogram_quantile does; None
    when nothing was counted."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for i, n in enumerate(buckets):
        if i == len(DURATION_BOUNDS):           # +Inf: the last bound is all one can say
            return DURATION_BOUNDS[-1]
        upper = DURATION_BOUNDS[i]
        if n and seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        lower = upper
    return DURATION_BOUNDS[-1]


class Dashboard:
    def __init__(self, pools: Callable[[], dict[str, Pool]],
                 host_checks: Callable[[], dict[str, HostCheckConfig]],
                 status: Callable[[], dict[str, Any]],
                 fleet: Callable[[], Awaitable[dict[str, Any]]] | None,
                 about: dict[str, Any], tick: float = TICK) -> None:
        self.pools = pools              # read at every sample: a reload replaces them
        self.host_checks = host_checks
        self.status = status
        self.fleet = fleet
        self.about = about              # what does not change: the instance's name, version
        self.tick = tick
        self.series: dict[str, _Series] = {}
        self.viewers = 0
        self.frame = ""                 # the last frame, encoded
        self.frames = 0
        self._new_frame = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # ---- the sampler ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """End every viewer's stream (they reconnect to whatever answers next), then the
        sampler."""
        self._closing = True
        self._publish()
        await cancelled(self._task)
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            try:
                self.sample(time.time())
                if self.viewers:
                    self.frame = json.dumps(await self.build(time.time()),
                                            separators=(",", ":"))
                    self.frames += 1
                    self._publish()
            except Exception:               # a frame lost is shown as late, never a crash
                log.exception("dashboard: a tick failed")
            next_tick = max(next_tick + self.tick, loop.time())
            await asyncio.sleep(next_tick - loop.time())

    def _publish(self) -> None:
        self._new_frame.set()
        self._new_frame = asyncio.Event()

    def sample(self, now: float) -> None:
        """Every member's counters, and each pool's for what it answered with no member
        (keyed "POOL/": no member's key ends so)."""
        seen = set()
        for pool in self.pools().values():
            tallies = [(m.key, m.tally) for m in pool.members]
            tallies.append((f"{pool.name}/", pool.unserved))
            for key, t in tallies:
                seen.add(key)
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = _Series()
                codes, buckets = t.codes, list(t.buckets)
                if series.samples:
                    then, old_codes, _ = series.samples[-1]
                    done = sum(codes) - sum(old_codes)
                    # Counters start again when a member is made anew (a reload): no rate.
                    series.spark.append(max(done, 0) / max(now - then, 1e-3))
                series.samples.append((now, codes, buckets))
        for key in set(self.series) - seen:
            del self.series[key]

    # ---- a frame --------------------------------------------------------------------------

    def figures(self, key: str) -> dict[str, Any]:
        """Requests a second, status shares and percentiles over the last WINDOW seconds."""
        series = self.series.get(key)
        if series is None or len(series.samples) < 2:
            return {"rps": 0.0, "errors": {}, "p50_ms": None, "p99_ms": None}
        (t0, codes0, buckets0), (t1, codes1, buckets1) = series.samples[0], series.samples[-1]
        codes = [max(b - a, 0) for a, b in zip(codes0, codes1, strict=True)]
        buckets = [max(b - a, 0) for a, b in zip(buckets0, buckets1, strict=True)]
        done = sum(codes)
        shares = {name: round(codes[i] / done, 4) for i, name in
                  ((0, "none"), (4, "4xx"), (5, "5xx")) if done and codes[i]}
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        return {"rps": round(done / max(t1 - t0, 1e-3), 2), "errors": shares,
                "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
                "p99_ms": round(p99 * 1000, 2) if p99 is not None else None}

    async def build(self, now: float) -> dict[str, Any]:
        status = self.status()
        members = {m.key: m for pool in self.pools().values() for m in pool.members}
        for pool in status["pools"]:
            pool["unserved"] = self.figures(f"{pool['name']}/")
            for view in pool["members"]:
                key = f"{view['pool']}/{view['name']}"
                m = members.get(key)
                del view["history"]            # the frame's `changes` merges them
                view["key"] = key
                if m is not None:
                    view |= self.figures(key)
                    spark = self.series.get(key)
                    view["spark"] = spark.spark[-1] if spark and spark.spark else 0.0
        changes: list[dict[str, Any]] = [{"target": key} | e.as_dict()
                                         for key, m in members.items() for e in m.history]
        checks = self.host_checks()
        for host in status["hosts"]:
            changes += [{"target": f"host:{host['name']}"} | e for e in host.pop("history")]
            check = checks.get(host["name"])
            host["check"] = None if check is None else (
                (f"tcp port {check.port}" if check.type == "tcp" else f"GET {check.url}")
                + f", every {check.interval:g}s")
        changes.sort(key=lambda c: float(c["time"]), reverse=True)
        fleet = None
        if self.fleet is not None:
            try:
                fleet = await self.fleet()
            except OpError as e:
                fleet = {"error": e.message}
        return status | {"time": now, "about": self.about, "viewers": self.viewers,
                         "changes": changes[:CHANGES], "fleet": fleet}

    # ---- a viewer's stream ----------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict[str, str]]:
        """One viewer's server-sent events: `hello` (every sparkline's history and the latest
        frame), then `frame` once a tick, until the viewer leaves or the dashboard stops."""
        self.viewers += 1
        try:
            # Its own first frame: the last one built may be from before anyone watched.
            frame = json.dumps(await self.build(time.time()), separators=(",", ":"))
            history = {key: [round(v, 2) for v in s.spark] for key, s in self.series.items()}
            yield {"event": "hello", "data": json.dumps(
                {"tick": self.tick, "spark_seconds": SPARK, "history": history},
                separators=(",", ":"))}
            yield {"event": "frame", "data": frame}
            while not self._closing:
                await self._new_frame.wait()
                if self._closing:
                    break
                yield {"event": "frame", "data": self.frame}
        finally:
            self.viewers -= 1
