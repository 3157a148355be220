"""Two instances' sides of the fleet's shared state (cluster/fleet.py) on a real etcd: a change
made on one reaches both through the watch, conflicting changes end identical on both, a
compaction or an outage loses nothing."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import Etcd

from croupier.cluster.etcd import EtcdClient, Unavailable
from croupier.cluster.fleet import Conflict, Fleet
from croupier.cluster.shared import shared_part
from croupier.config.overlay import empty as full_empty


def empty() -> dict[str, Any]:
    return shared_part(full_empty())


M = "classes/127.0.0.1:9001"


def drained(state: str = "drain", member: str = M) -> dict[str, Any]:
    return empty() | {"member_admin": {member: state}}


class Side:
    """One instance's Fleet, and the overlays it was handed."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = EtcdClient([url], timeout=1.0)
        self.seen: list[tuple[dict[str, Any], int]] = []
        self.fleet = Fleet(self.client, prefix, lambda o, r: self.seen.append((o, r)))

    async def started(self) -> Side:
        self.fleet.start()
        await until(lambda: self.fleet.connected)
        return self

    async def close(self) -> None:
        await self.fleet.stop()
        await self.client.close()


async def until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_a_change_committed_on_one_instance_is_applied_on_both(etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"

    async def main() -> None:
        a, b = [await Side(etcd.url, prefix).started() for _ in range(2)]
        revision = await a.fleet.commit(drained())
        assert await a.fleet.wait_applied(revision, 5) and await b.fleet.wait_applied(revision, 5)
        assert a.fleet.overlay == b.fleet.overlay == drained()
        assert b.seen[-1] == (drained(), revision)
        assert await b.fleet.commit(drained()) == b.fleet.applied      # nothing differs
        cleared = await b.fleet.commit(empty())                       # ready: the key goes
        assert await a.fleet.wait_applied(cleared, 5)
        assert a.fleet.overlay == empty()
        await a.close()
        await b.close()
    asyncio.run(main())


def test_two_conflicting_changes_at_once_end_identical_on_both(etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"

    async def main() -> None:
        a, b = [await Side(etcd.url, prefix).started() for _ in range(2)]
        for round_ in range(5):
            results = await asyncio.gather(a.fleet.commit(drained("drain")),
                                           b.fleet.commit(drained("maint")),
                                           return_exceptions=True)
            # Overlapping, one is taken and the other refused; one after the other (the
            # second read the first), both are taken, the later last. Either way: one state.
            won = [r for r in results if isinstance(r, int)]
            assert won and all(isinstance(r, (int, Conflict)) for r in results), results
            assert len(won) == 2 or any(isinstance(r, Conflict) for r in results)
            last = max(won)
            assert await a.fleet.wait_applied(last, 5)
            assert await b.fleet.wait_applied(last, 5)
            expected = drained("drain") if last == results[0] else drained("maint")
            assert a.fleet.overlay == b.fleet.overlay == expected, round_
            cleared = await a.fleet.commit(empty())
            await b.fleet.wait_applied(cleared, 5)
        await a.close()
        await b.close()
    asyncio.run(main())


def test_a_change_on_an_instance_whose_watch_lags_is_made_on_the_store_s_present(etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"

    async def main() -> None:
        a, b = [await Side(etcd.url, prefix).started() for _ in range(2)]
        await a.fleet.wait_applied(await b.fleet.commit(drained()), 5)
        await a.fleet.stop()                    # a's watch lags: its copy still says drained
        a.fleet.connected = True                # (as it would while its watch is slow)
        readied = await b.fleet.commit(empty())
        assert a.fleet.overlay == drained()
        # Drained again on a: on its stale copy, nothing would differ and nothing be written,
        # while the store says ready. Refreshed first, the drain is written.
        await a.fleet.refresh()
        assert a.fleet.overlay == empty() and a.fleet.applied >= readied
        drained_again = await a.fleet.commit(drained())
        assert drained_again > readied
        assert await b.fleet.wait_applied(drained_again, 5)
        assert b.fleet.overlay == drained()
        # Its watch, started again, resumes after the read: nothing older is applied twice.
        seen = len(a.seen)
        a.fleet.start()
        await until(lambda: a.fleet.applied >= drained_again)
        assert a.fleet.overlay == drained() and len(a.seen) == seen + 1
        await a.close()
        await b.close()
    asyncio.run(main())


def test_a_compaction_while_an_instance_was_away_forces_a_full_read_that_loses_nothing(
        etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"

    async def main() -> None:
        a, b = [await Side(etcd.url, prefix).started() for _ in range(2)]
        await b.fleet.stop()                        # b away; its copy stays at its revision
        for i in range(5):
            await a.fleet.wait_applied(await a.fleet.commit(
                drained(member=f"classes/127.0.0.1:{9001 + i}")), 5)
        etcd.compact()
        b.fleet.start()                             # its watch from the old revision fails
        await until(lambda: b.fleet.overlay == a.fleet.overlay)
        assert b.fleet.resyncs == 1
        assert b.fleet.overlay == drained(member="classes/127.0.0.1:9005")
        await a.close()
        await b.close()
    asyncio.run(main())


def test_etcd_down_refuses_changes_keeps_the_state_and_resumes_after(tmp_path: Path):
    store = Etcd(tmp_path / "etcd")
    prefix = "/test/outage"

    async def main() -> None:
        a, b = [await Side(store.url, prefix).started() for _ in range(2)]
        await b.fleet.wait_applied(await a.fleet.commit(drained()), 5)
        store.stop()
        await until(lambda: not a.fleet.connected and not b.fleet.connected)
        with pytest.raises(Unavailable):
            await a.fleet.commit(empty())           # refused, not queued
        assert a.fleet.overlay == b.fleet.overlay == drained()     # the last state stands
        await b.fleet.stop()                        # b cut off longer than a
        store.start()
        await until(lambda: a.fleet.connected)
        revision = await a.fleet.commit(drained("maint"))          # set while b is away
        b.fleet.start()
        assert await b.fleet.wait_applied(revision, 15)
        assert b.fleet.overlay == drained("maint") and b.fleet.resyncs == 0   # resumed
        await a.close()
        await b.close()
    try:
        asyncio.run(main())
    finally:
        store.stop()


def test_an_etcd_that_stops_answering_without_closing_its_connections_is_noticed(
        tmp_path: Path):
    store = Etcd(tmp_path / "etcd")
    prefix = "/test/frozen"

    async def main() -> None:
        a = await Side(store.url, prefix).started()
        assert store.proc is not None
        store.proc.send_signal(signal.SIGSTOP)    # as unplugged: no FIN, no RST, no answer
        try:
            await until(lambda: not a.fleet.connected, timeout=10)
            with pytest.raises(Unavailable):
                await a.fleet.commit(drained())
        finally:
            store.proc.send_signal(signal.SIGCONT)
        await until(lambda: a.fleet.connected, timeout=15)
        assert await a.fleet.wait_applied(await a.fleet.commit(drained()), 5)
        await a.close()
    try:
        asyncio.run(main())
    finally:
        store.stop()
