"""The etcd gateway client (cluster/etcd.py) against a real etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import Etcd, dead_port

from croupier.cluster.etcd import Compacted, EtcdClient, Event, Unavailable, prefix_end


def run(etcd_url: str | list[str], body: Callable[[EtcdClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = EtcdClient([etcd_url] if isinstance(etcd_url, str) else etcd_url)
        try:
            return await body(client)
        finally:
            await client.close()
    return asyncio.run(main())


def fresh() -> str:
    return f"/test/{uuid.uuid4().hex}/"


def test_prefix_end_is_the_prefix_with_its_last_byte_raised():
    assert prefix_end("/a/") == "L2Ew"          # base64 of "/a0"


def test_a_prefix_reads_back_what_was_put_with_its_revisions(etcd: Etcd):
    p = fresh()

    async def body(c: EtcdClient) -> None:
        r1 = await c.put(p + "one", b"1")
        r2 = await c.put(p + "two", b"2")
        await c.put(p[:-1] + "-outside", b"x")          # shares the text, not the prefix
        rev, kvs = await c.get_prefix(p)
        assert rev >= r2 > r1
        assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
            (p + "one", b"1", r1), (p + "two", b"2", r2)]
        assert (await c.get_prefix(fresh()))[1] == []    # an empty range has no "kvs"
        assert await c.get(p + "none") is None
    run(etcd.url, body)


def test_compare_and_swap_takes_one_of_two_writers_from_the_same_revision(etcd: Etcd):
    key = fresh() + "member"

    async def body(c: EtcdClient) -> None:
        ok, rev = await c.compare_and_swap(key, b"drain", 0)        # create
        assert ok
        again, _ = await c.compare_and_swap(key, b"maint", 0)       # exists now
        assert not again
        first, rev2 = await c.compare_and_swap(key, b"maint", rev)
        second, _ = await c.compare_and_swap(key, b"ready", rev)    # a stale revision
        assert first and not second
        kv = await c.get(key)
        assert kv is not None and kv.value == b"maint" and kv.mod_revision == rev2
        gone, _ = await c.compare_and_swap(key, None, rev2)
        assert gone and await c.get(key) is None
    run(etcd.url, body)


def test_a_watch_sees_puts_and_deletes_from_its_start_revision(etcd: Etcd):
    p = fresh()

    async def body(c: EtcdClient) -> list[Event]:
        start = await c.put(p + "a", b"1")      # before the watch starts, but from its revision
        seen: list[Event] = []

        async def watch() -> None:
            async for batch in c.watch(p, start):
                seen.extend(batch)
                if len(seen) >= 3:
                    return
        task = asyncio.create_task(watch())
        await c.put(p + "b", b"2")
        await c.delete(p + "a")
        await asyncio.wait_for(task, 10)
        return seen
    seen = run(etcd.url, body)
    assert [(e.key[-1], e.value) for e in seen] == [("a", b"1"), ("b", b"2"), ("a", None)]


def test_a_watch_from_a_compacted_revision_says_so(etcd: Etcd):
    p = fresh()

    async def body(c: EtcdClient) -> None:
        old = await c.put(p + "a", b"1")
        await c.put(p + "a", b"2")
        etcd.compact()
        with pytest.raises(Compacted) as caught:
            async for _ in c.watch(p, old):
                pass
        assert caught.value.compact_revision > old
    run(etcd.url, body)


def test_a_key_under_a_lease_goes_when_the_lease_is_revoked_and_lives_while_kept(etcd: Etcd):
    key = fresh() + "instance"

    async def body(c: EtcdClient) -> None:
        lease = await c.lease_grant(5)
        await c.put(key, b"lb-1", lease=lease)
        assert await c.lease_keepalive(lease) == 5
        kv = await c.get(key)
        assert kv is not None and kv.lease == lease
        await c.lease_revoke(lease)
        assert await c.get(key) is None
        assert await c.lease_keepalive(lease) == 0          # gone: a new lease is needed
    run(etcd.url, body)


def test_a_dead_endpoint_is_passed_over_and_none_answering_is_unavailable(etcd: Etcd):
    with dead_port() as port:
        dead = f"http://127.0.0.1:{port}"

        async def body(c: EtcdClient) -> None:
            await c.put(fresh() + "k", b"v")        # the first endpoint refuses; the second
        run([dead, etcd.url], body)

        async def nobody(c: EtcdClient) -> None:
            with pytest.raises(Unavailable):
                await c.get_prefix("/x/")
        run([dead], nobody)


def test_credentials_are_exchanged_for_a_token_and_refused_without_them(tmp_path):
    import httpx

    from croupier.cluster.etcd import EtcdError
    store = Etcd(tmp_path / "etcd")
    try:
        for path, body in (("/v3/auth/user/add", {"name": "root", "password": "s3cret"}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                           ("/v3/auth/enable", {})):
            r = httpx.post(store.url + path, json=body, timeout=5)
            assert r.status_code == 200, r.text

        async def anonymous() -> None:
            c = EtcdClient([store.url])
            try:
                with pytest.raises(EtcdError):
                    await c.put("/k", b"v")
            finally:
                await c.close()
        asyncio.run(anonymous())

        async def with_password() -> None:
            c = EtcdClient([store.url], username="root", password="s3cret")
            try:
                start = await c.put("/k", b"v")
                assert (await c.get("/k")).value == b"v"    # type: ignore[union-attr]
                async for batch in c.watch("/k", start):     # a watch carries the token too
                    if batch:                                 # (the first says it is taken)
                        assert batch[0].value == b"v"
                        break
            finally:
                await c.close()
        asyncio.run(with_password())

        async def wrong_password() -> None:
            c = EtcdClient([store.url], username="root", password="nope")
            try:
                with pytest.raises(EtcdError, match="refused the credentials"):
                    await c.put("/k", b"v")
            finally:
                await c.close()
        asyncio.run(wrong_password())
    finally:
        store.stop()
