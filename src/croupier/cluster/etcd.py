"""etcd through its gRPC-JSON gateway (etcd 3.4+, `/v3/...`), over httpx, as Patroni does.

The small interface the fleet needs and no more: read a prefix, compare-and-swap one key,
delete one, watch a prefix from a revision, and leases. Another store (Consul) would offer the
same five. What the gateway does that a client must know (DESIGN.md, "pitfalls"):
- keys and values are base64 in JSON; 64-bit fields (revisions, lease IDs, TTLs) come back as
  strings; a field at its default is left out (a failed transaction has no `succeeded`, an
  empty range no `kvs`, revision 0 no `mod_revision`);
- a watch is one long response of JSON lines, the first `{"result": {"created": true}}`; one
  from a compacted revision is cancelled with `compact_revision`: the caller reloads the prefix
  and watches again (`Compacted`).
Endpoints are tried in turn; a connection error on one moves to the next, and `Unavailable`
says that none answered.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from croupier.config.schema import ClusterConfig


class EtcdError(Exception):
    """etcd answered, with an error (a bad request, a lease that is gone, auth refused)."""


class Unavailable(EtcdError):
    """No endpoint answered."""


class Compacted(EtcdError):
    """The watch's start revision has been compacted away: reload, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """A change under a watched prefix: a put (value set) or a delete (value None)."""

    key: str
    value: bytes | None
    mod_revision: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range of every key starting with `prefix` (etcd's rule:
    the prefix with its last byte incremented)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")          # every key


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(item["key"]).decode("utf-8", "replace"),
                    value=_unb64(item.get("value", "")),
                    mod_revision=int(item.get("mod_revision", 0)),
                    create_revision=int(item.get("create_revision", 0)),
                    lease=int(item.get("lease", 0)))


class EtcdClient:
    def __init__(self, endpoints: list[str], *, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._username = username
        self._password = password
        self._token: str | None = None
        verify: ssl.SSLContext | bool = True
        if ca_file or cert_file:
            verify = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                verify.load_cert_chain(cert_file, key_file)
        self.timeout = timeout
        self._http = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    # ---- the interface ------------------------------------------------------------------

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, and the store's revision they were read at."""
        body = await self._call("/v3/kv/range", {"key": _b64(prefix),
                                                 "range_end": prefix_end(prefix)})
        return int(body["header"]["revision"]), [_kv(i) for i in body.get("kvs", [])]

    async def revision(self) -> int:
        """The store's current revision (a read of one key's existence: the cheapest)."""
        body = await self._call("/v3/kv/range", {"key": _b64("\0"), "count_only": True})
        return int(body["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        body = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = body.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Set `key` whatever it holds; the revision of the write."""
        req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            req["lease"] = str(lease)
        body = await self._call("/v3/kv/put", req)
        return int(body["header"]["revision"])

    async def compare_and_swap(self, key: str, value: bytes | None,
                               mod_revision: int) -> tuple[bool, int]:
        """Write `value` to `key` (None: delete it) only if the key was last written at
        `mod_revision` (0: only if it does not exist). (succeeded, the store's revision)."""
        return await self.transaction({key: mod_revision}, {key: value})

    async def transaction(self, expected: dict[str, int],
                          writes: dict[str, bytes | None]) -> tuple[bool, int]:
        """Apply `writes` (None: delete the key) together, only if every key of `expected`
        was last written at its revision (0: does not exist). (succeeded, the revision)."""
        compares = [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                     "mod_revision": str(rev)} if rev else
                    {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                     "create_revision": "0"}
                    for key, rev in expected.items()]
        ops = [{"request_delete_range": {"key": _b64(key)}} if value is None else
               {"request_put": {"key": _b64(key), "value": _b64(value)}}
               for key, value in writes.items()]
        body = await self._call("/v3/kv/txn", {"compare": compares, "success": ops})
        return bool(body.get("succeeded", False)), int(body["header"]["revision"])

    async def delete(self, key: str) -> int:
        body = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(body["header"]["revision"])

    async def lease_grant(self, ttl: float) -> int:
        body = await self._call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        if body.get("error"):
            raise EtcdError(body["error"])
        return int(body["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Renew `lease`; its TTL now. 0: it has expired (a new one is needed)."""
        body = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = body.get("result", body)
        return int(result.get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """The changes under `prefix` from `start_revision` on, a batch at a time (one
        revision's events arrive together); first an empty batch, once etcd has taken the
        watch. Ends with Compacted, Unavailable or when the connection drops (the caller
        watches again from the last revision it saw + 1)."""
        req = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                  "start_revision": str(start_revision)}}
        url = self.endpoints[self._current] + "/v3/watch"
        try:
            if self._username and self._token is None:
                await self._authenticate(self.endpoints[self._current])
            async with self._http.stream("POST", url, json=req, headers=self._headers(),
                                         timeout=httpx.Timeout(self.timeout, read=None)) as r:
                if r.status_code != 200:
                    raise EtcdError(f"watch refused: HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        raise EtcdError(f"watch: not JSON: {line[:200]!r}") from None
                    if "error" in msg:
                        raise EtcdError(str(msg["error"].get("message", msg["error"])))
                    result = msg.get("result", {})
                    if result.get("compact_revision") and result.get("canceled"):
                        raise Compacted(int(result["compact_revision"]))
                    if result.get("canceled"):
                        raise EtcdError(result.get("cancel_reason", "watch cancelled"))
                    if result.get("created"):
                        yield []
                        continue
                    events = [Event(key=_unb64(e["kv"]["key"]).decode("utf-8", "replace"),
                                    value=(None if e.get("type") == "DELETE"
                                           else _unb64(e["kv"].get("value", ""))),
                                    mod_revision=int(e["kv"].get("mod_revision", 0)))
                              for e in result.get("events", [])]
                    if events:
                        yield events
        except httpx.TransportError as e:
            self._current = (self._current + 1) % len(self.endpoints)
            raise Unavailable(f"etcd watch at {url}: {e}") from e

    # ---- transport -----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, base: str) -> None:
        r = await self._http.post(base + "/v3/auth/authenticate",
                                  json={"name": self._username, "password": self._password})
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 200 or "token" not in body:
            raise EtcdError(f"etcd refused the credentials: {body.get('message', r.status_code)}")
        self._token = body["token"]

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for i in range(len(self.endpoints)):
            index = (self._current + i) % len(self.endpoints)
            base = self.endpoints[index]
            try:
                if self._username and self._token is None:
                    await self._authenticate(base)
                r = await self._http.post(base + path, json=payload, headers=self._headers())
                if r.status_code == 401 and self._username:      # the token expired
                    self._token = None
                    await self._authenticate(base)
                    r = await self._http.post(base + path, json=payload,
                                              headers=self._headers())
            except httpx.TransportError as e:
                errors.append(f"{base}: {e.__class__.__name__}")
                continue
            self._current = index
            try:
                body: dict[str, Any] = r.json()
            except ValueError:
                raise EtcdError(f"{path}: HTTP {r.status_code}, not JSON: {r.text[:200]!r}") \
                    from None
            if r.status_code != 200:
                raise EtcdError(f"{path}: {body.get('message', body)}")
            return body
        raise Unavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")


def client_for(cluster: ClusterConfig, beside: Callable[[str], Path]) -> EtcdClient:
    """The client a config's [cluster] describes; `beside` finds the files it names."""
    def path(name: str | None) -> str | None:
        return str(beside(name)) if name else None
    return EtcdClient(
        cluster.etcd, username=cluster.username,
        password=(beside(cluster.password_file).read_text().strip()
                  if cluster.password_file else None),
        ca_file=path(cluster.ca), cert_file=path(cluster.cert), key_file=path(cluster.key),
        timeout=cluster.timeout)
