"""The fleet's list of instances (cluster/registry.py) against a real etcd."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from helpers import Etcd

from croupier.cluster.etcd import EtcdClient
from croupier.cluster.registry import Registration, instances


def names(found: tuple[list[dict[str, Any]], list[str]]) -> list[str]:
    return [e["name"] for e in found[0]]


async def until(predicate: Any, timeout: float = 10.0) -> float:
    """Poll an async predicate; the seconds it took."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_instances_register_update_their_entry_and_leave(etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"

    async def main() -> None:
        client = EtcdClient([etcd.url])
        view = {"version": "0.1.0", "applied": 7}
        a = Registration(client, prefix, "lb-a", 2, lambda: dict(view))
        b = Registration(client, prefix, "lb-b", 2, lambda: {"version": "0.1.0"})
        tasks = [asyncio.create_task(r.run()) for r in (a, b)]
        await asyncio.wait_for(asyncio.gather(a.registered.wait(), b.registered.wait()), 10)
        await client.put(f"{prefix}/instances/garbage", b"{not json")
        found = await instances(client, prefix)
        assert names(found) == ["lb-a", "lb-b"] and found[1] == [f"{prefix}/instances/garbage"]
        assert found[0][0]["applied"] == 7

        view["applied"] = 9                     # rewritten at the next turn (ttl / 3)

        async def updated() -> bool:
            return (await instances(client, prefix))[0][0].get("applied") == 9
        await until(updated, 5)

        await a.leave()                         # a clean stop: gone at once
        tasks[0].cancel()
        assert names(await instances(client, prefix)) == ["lb-b"]

        tasks[1].cancel()                       # gone without a word: its lease runs out

        async def b_gone() -> bool:
            return names(await instances(client, prefix)) == []
        assert await until(b_gone, 10) <= 2 + 1.5
        await client.close()
    asyncio.run(main())


def test_an_instance_registers_again_after_etcd_comes_back(tmp_path: Path):
    store = Etcd(tmp_path / "etcd")
    prefix = "/test/restart"
    try:
        async def main() -> None:
            client = EtcdClient([store.url], timeout=0.5)
            r = Registration(client, prefix, "lb-a", 2, lambda: {})
            task = asyncio.create_task(r.run())
            await asyncio.wait_for(r.registered.wait(), 10)
            store.stop()

            async def lost() -> bool:
                return not r.registered.is_set()
            await until(lost, 10)
            store.start()                       # its lease ran out meanwhile, or not

            async def back() -> bool:
                return r.registered.is_set() and names(await instances(client, prefix)) == [
                    "lb-a"]
            await until(back, 15)
            task.cancel()
            await client.close()
        asyncio.run(main())
    finally:
        store.stop()
