"""The fleet's shared admin state in etcd (cluster/shared.py): the overlay as one key an item,
read back whole, with what does not parse skipped and named."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from helpers import Etcd

from croupier.cluster.etcd import EtcdClient
from croupier.cluster.shared import overlay_keys, read_overlay, shared_part
from croupier.config.overlay import empty as full_empty


def empty() -> dict[str, Any]:
    return shared_part(full_empty())


START = time.time() + 3600
OVERLAY = empty() | {
    "member_admin": {"classes/127.0.0.1:9001": "drain"},
    "host_admin": {"rack1-a": "maint"},
    "added": [{"pool": "classes", "name": "10.0.0.5:9001", "host": "10.0.0.5",
               "address": "10.0.0.5", "port": 9001, "weight": 2}],
    "removed": ["classes/127.0.0.1:9002"],
    "weights": {"classes/127.0.0.1:9003": 5},
    "windows": [{"id": "kernel", "target": "host:rack1-a", "start": START,
                 "end": START + 600, "lead": 30.0, "reason": "kernel update"}],
}


def test_the_overlay_goes_into_etcd_a_key_an_item_and_reads_back_whole(etcd: Etcd):
    prefix = f"/test/{uuid.uuid4().hex}"
    keys = overlay_keys(prefix, OVERLAY)
    assert sorted(k[len(prefix):] for k in keys) == [
        "/state/added/classes/10.0.0.5:9001", "/state/host/rack1-a",
        "/state/member/classes/127.0.0.1:9001", "/state/removed/classes/127.0.0.1:9002",
        "/state/weight/classes/127.0.0.1:9003", "/state/window/kernel"]

    async def main() -> None:
        client = EtcdClient([etcd.url])
        for key, value in keys.items():
            await client.put(key, value)
        bad = {
            "/state/member/classes/127.0.0.1:9004": b'{"state": "asleep"}',
            "/state/member/no-pool": b'{"state": "drain"}',
            "/state/weight/classes/x:1": b"{not json",
            "/state/added/classes/y:1": b'{"pool": "classes", "name": "z:1", "host": "z", '
                                        b'"address": "10.0.0.9", "port": 1, "weight": 1}',
            "/state/tea/kettle": b"{}",
            "/state/window/other": keys[prefix + "/state/window/kernel"],
        }
        for key, value in bad.items():
            await client.put(prefix + key, value)
        _, kvs = await client.get_prefix(prefix + "/")
        overlay, skipped = read_overlay(prefix, kvs)
        assert overlay == OVERLAY                  # the good keys, whole; nothing half read
        assert sorted(s.split(": ")[0][len(prefix):] for s in skipped) == sorted(bad)
        assert any("asleep" in s or "drain" in s for s in skipped)
        await client.close()
    asyncio.run(main())
