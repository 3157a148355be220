"""Scheduled maintenance windows: drain ahead of time, maintain during, restore after.

A window names a target, a start and an end, and a lead time. From `start - lead` the target
drains (no new requests; what is in flight finishes); from `start` it is in maint; at `end`
the schedule's hold is cleared. The schedule holds its own origin ("schedule"), so ending a
window never clears a drain an operator set by hand, and an operator's `ready` never cancels
a window (delete the window for that).

The evaluator runs every quarter second (control plane), derives the state every target
should have from the windows alone, and applies only the differences.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from croupier.admin.ops import OpError, resolve, set_state
from croupier.aio import cancelled
from croupier.model.state import strongest

if TYPE_CHECKING:
    from collections.abc import Callable

    from croupier.admin.ops import Model

log = logging.getLogger("croupier.schedule")

TICK = 0.25


@dataclass
class Window:
    id: str
    target: str
    start: float        # epoch seconds
    end: float
    lead: float         # seconds of drain before start
    origin: str         # "config" or "api": api windows are kept in the state file
    reason: str = ""

    def phase(self, now: float) -> str | None:
        if self.start <= now < self.end:
            return "maint"
        if self.start - self.lead <= now < self.start:
            return "drain"
        return None

    def view(self, now: float) -> dict[str, Any]:
        phase = self.phase(now)
        return asdict(self) | {
            "status": {"maint": "in maintenance", "drain": "draining"}.get(phase or "",
                                                                          "upcoming")}


class Scheduler:
    def __init__(self, model: Model, loop: asyncio.AbstractEventLoop,
                 persist: Callable[[], None] | None = None) -> None:
        self.model = model
        self.loop = loop
        self.persist = persist or (lambda: None)    # keeps the API's windows (the state file)
        self.windows: list[Window] = []
        self._applied: dict[str, str] = {}     # target text -> state the schedule holds on it
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def add(self, target: str, start: float, end: float, lead: float, origin: str,
            reason: str = "", window_id: str | None = None) -> Window:
        if end <= start:
            raise OpError(422, "a window must end after it starts")
        if lead < 0:
            raise OpError(422, "lead must not be negative")
        if end <= time.time():
            raise OpError(422, "that window has already ended")
        resolve(self.model, target)         # the target must exist now
        if window_id is None:
            taken = {w.id for w in self.windows}
            window_id = next(i for i in (f"w{n}" for n in self._ids) if i not in taken)
        window = Window(window_id, target, start, end, lead, origin, reason)
        if any(w.id == window.id for w in self.windows):
            raise OpError(409, f"a window with id {window.id!r} exists")
        self.windows.append(window)
        log.info("maintenance window %s for %s: %s to %s (drain %gs before)", window.id,
                    target, _fmt(start), _fmt(end), lead)
        self.evaluate()
        return window

    def remove(self, window_id: str) -> Window:
        for w in self.windows:
            if w.id == window_id:
                self.windows.remove(w)
                self.evaluate()
                return w
        raise OpError(404, f"no maintenance window {window_id!r}")

    def listing(self) -> list[dict[str, Any]]:
        now = time.time()
        return [w.view(now) for w in sorted(self.windows, key=lambda w: w.start)]

    def evaluate(self) -> None:
        now = time.time()
        wanted: dict[str, str] = {}
        for w in self.windows:
            phase = w.phase(now)
            if phase is not None:
                wanted[w.target] = strongest({"a": wanted.get(w.target, "ready"), "b": phase})
        ended = [w for w in self.windows if w.end <= now]
        for w in ended:
            self.windows.remove(w)
            log.info("maintenance window %s for %s ended", w.id, w.target)
        for target in set(self._applied) | set(wanted):
            state = wanted.get(target, "ready")
            if self._applied.get(target, "ready") == state:
                continue
            try:
                resolved = resolve(self.model, target)
            except OpError as e:
                log.warning("maintenance window target %s: %s", target, e.message)
                self._applied.pop(target, None)
                continue
            set_state(resolved, state, "schedule", "maintenance window")
            if state == "ready":
                self._applied.pop(target, None)
            else:
                self._applied[target] = state
        if ended:
            self.persist()

    def start(self) -> None:
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.evaluate()
            except Exception:
                log.exception("maintenance schedule evaluation failed")
            await asyncio.sleep(TICK)

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None


def _fmt(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
