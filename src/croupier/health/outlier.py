"""Passive ejection (outlier detection): live traffic that keeps failing takes a member out.

`consecutive_failures` connect failures, resets, timeouts or (by default) 5xx answers in a row
eject a member for `base_ejection`, doubled on each repeat up to `max_ejection`; a member that
then stays out of trouble for `max_ejection` starts again from `base_ejection`. Never more than
`max_ejected_percent` of a pool is ejected at once, so an outage shared by every member (a
database down behind them all) does not empty the pool.

The data plane calls `failure()` on the rare failing request and clears
`member.consecutive_failures` itself on success: one attribute test per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croupier.model.state import Member

log = logging.getLogger("croupier.outlier")


class Outlier:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._returned_at: dict[Member, float] = {}

    def failure(self, member: Member, why: str) -> None:
        cfg = member.pool.config.outlier if member.pool.config is not None else None
        if cfg is None or not cfg.enabled:
            return
        member.consecutive_failures += 1
        if member.consecutive_failures >= cfg.consecutive_failures and not member.ejected:
            self.eject(member, why)

    def eject(self, member: Member, why: str) -> None:
        pool = member.pool
        cfg = pool.config.outlier  # type: ignore[union-attr]
        now = self.loop.time()
        ejected = sum(1 for m in pool.members if m.ejected)
        if (ejected + 1) * 100 > cfg.max_ejected_percent * len(pool.members):
            if member.consecutive_failures == cfg.consecutive_failures:   # say it once
                log.warning("pool %s member %s: not ejected (%d consecutive failures): "
                            "%d of %d members already ejected, the limit is %d%%", pool.name,
                            member.name, member.consecutive_failures, ejected,
                            len(pool.members), cfg.max_ejected_percent)
            return
        if now - self._returned_at.get(member, -1e18) > cfg.max_ejection:
            member.ejections = 0          # well behaved for long enough: forgive the past
        duration = min(cfg.base_ejection * (2 ** member.ejections), cfg.max_ejection)
        member.ejections += 1
        member.ejected_until = now + duration
        member.record("ejected", f"{member.consecutive_failures} consecutive failures, last: "
                                 f"{why}; out for {duration:g}s")
        pool.refresh()
        if member.upstream is not None:
            member.upstream.close_idle()
        self.loop.call_later(duration, self._return, member, member.ejected_until)

    def _return(self, member: Member, until: float) -> None:
        if member.ejected_until != until:
            return                          # cleared or re-ejected since
        member.ejected_until = 0.0
        member.consecutive_failures = 0
        self._returned_at[member] = self.loop.time()
        member.record("back from ejection", f"ejection #{member.ejections} ended")
        member.pool.refresh()
