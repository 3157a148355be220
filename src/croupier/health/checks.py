"""Active health checks of members and hosts (control plane: tasks and awaits are fine here).

- One loop per target; the first check of each fires at a random point of its interval, and
  every interval is jittered, so a thousand members are not checked in the same millisecond.
- `rise` passes in a row bring a target up, `fall` failures in a row take it down; while a
  target is between the two (changing state), it is checked at `fast_interval`.
- `unknown` (no check has finished yet) becomes up on the first pass, and down after `fall`
  failures when it counted as up (or on the first failure when it counted as down).
- A member in `maint` is not checked; `drain` is. Checks open their own connections and never
  borrow the data plane's kept-alive ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import h11

if TYPE_CHECKING:
    from croupier.config.schema import HealthConfig, HostCheckConfig
    from croupier.model.state import Host, Member, Pool

log = logging.getLogger("croupier.health")

_BODY_LIMIT = 65536      # bytes of a check's body matched against body_regex

# What opens a check's connection to a member behind send_proxy (by version): a check speaks
# for no client, so v2's LOCAL command and v1's UNKNOWN, which the member takes as "use the
# connection's own addresses" (HAProxy's check-send-proxy does the same).
PROXY_CHECK_HEADERS: Final = {1: b"PROXY UNKNOWN\r\n",
                              2: b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"}


class Streak:
    """Consecutive passes and failures of one target."""

    __slots__ = ("fails", "passes")

    def __init__(self) -> None:
        self.passes = 0
        self.fails = 0

    def add(self, ok: bool) -> None:
        if ok:
            self.passes += 1
            self.fails = 0
        else:
            self.fails += 1
            self.passes = 0


def next_health(current: str, counts_as_up: bool, streak: Streak, rise: int, fall: int) -> str:
    """The health a target moves to after its latest check (the rules in the module doc)."""
    if current == "unknown":
        if streak.passes >= 1:
            return "up"
        if streak.fails >= (fall if counts_as_up else 1):
            return "down"
        return current
    if current == "up" and streak.fails >= fall:
        return "down"
    if current == "down" and streak.passes >= rise:
        return "up"
    return current


class Watched(Protocol):
    """What the checks read of a running instance (model.state's Model): its pools and
    hosts, and the hosts' own checks."""

    pools: dict[str, Pool]
    hosts: dict[str, Host]
    host_checks: dict[str, HostCheckConfig]


class Checker:
    """Runs every configured check of one instance."""

    def __init__(self, instance: Watched, loop: asyncio.AbstractEventLoop) -> None:
        self.instance = instance
        self.loop = loop
        self.tasks: dict[object, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.running = False

    def start(self) -> None:
        self.running = True
        for pool in self.instance.pools.values():
            cfg = pool.config.health if pool.config is not None else None
            if cfg is None:
                continue
            for member in pool.members:
                self.watch_member(member, cfg)
        for host in self.instance.hosts.values():
            hcfg = self.instance.host_checks.get(host.name)
            if hcfg is not None:
                self.tasks[host] = self.loop.create_task(self._host_loop(host, hcfg))

    def watch_member(self, member: Member, cfg: HealthConfig) -> None:
        self.tasks[member] = self.loop.create_task(self._member_loop(member, cfg))

    def unwatch(self, target: object) -> None:
        task = self.tasks.pop(target, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        self.running = False
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # force_close: every check opens (and closes) its own connection, as a client would
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                auto_decompress=False)
        return self._session

    def _delay(self, interval: float, jitter: float) -> float:
        return interval * (1.0 + self._rng.uniform(-jitter, jitter))

    # ---- members ---------------------------------------------------------------------------

    async def _member_loop(self, member: Member, cfg: HealthConfig) -> None:
        streak = Streak()
        fast = cfg.fast_interval if cfg.fast_interval is not None else cfg.interval / 2
        await asyncio.sleep(self._rng.uniform(0, cfg.interval))
        while True:
            if member.admin_state == "maint":
                streak = Streak()         # a member back from maint starts counting afresh
                await asyncio.sleep(cfg.interval)
                continue
            try:
                ok, why = await self.probe_member(member, cfg)
            except Exception as e:       # a check must never die of a surprise
                ok, why = False, f"check error: {e!r}"
            streak.add(ok)
            self._apply_member(member, streak, cfg, why)
            changing = (member.health == "up" and streak.fails > 0) or (
                member.health != "up" and streak.passes > 0)
            await asyncio.sleep(self._delay(fast if changing else cfg.interval, cfg.jitter))

    def _apply_member(self, member: Member, streak: Streak, cfg: HealthConfig, why: str) -> None:
        before = member.health
        after = next_health(before, member.initial_up, streak, cfg.rise, cfg.fall)
        if after == before:
            return
        member.health = after  # type: ignore[assignment]
        if after == "down":
            member.record(f"{before} -> down", f"check failed: {why}; {streak.fails} in a row")
            if member.upstream is not None:
                member.upstream.close_idle()
        else:
            member.record(f"{before} -> up", f"{streak.passes} check(s) passed")
        member.pool.refresh()

    async def probe_member(self, member: Member, cfg: HealthConfig) -> tuple[bool, str]:
        port = cfg.port or member.port
        upstream = member.upstream
        header = PROXY_CHECK_HEADERS.get(upstream.send_proxy, b"") if upstream else b""
        if cfg.type == "tcp":
            return await self.probe_tcp(member.address, port, cfg.timeout, header)
        host = f"[{member.address}]" if ":" in member.address else member.address
        tls = upstream.tls if upstream is not None else None
        scheme = "https" if tls is not None else "http"
        url = f"{scheme}://{host}:{port}{cfg.path}"
        return await self.probe_http(url, cfg.method, cfg.host or f"{host}:{port}",
                                     cfg.timeout, cfg.expect_status, cfg.body_regex, tls,
                                     (upstream.server_name or None) if upstream else None,
                                     header)

    # ---- hosts -----------------------------------------------------------------------------

    async def _host_loop(self, host: Host, cfg: HostCheckConfig) -> None:
        streak = Streak()
        await asyncio.sleep(self._rng.uniform(0, cfg.interval))
        while True:
            try:
                if cfg.type == "tcp":
                    assert cfg.port is not None
                    ok, why = await self.probe_tcp(host.address, cfg.port, cfg.timeout)
                else:
                    assert cfg.url is not None
                    ok, why = await self.probe_http(cfg.url, "GET", None, cfg.timeout,
                                                    frozenset(range(200, 400)), None)
            except Exception as e:
                ok, why = False, f"check error: {e!r}"
            streak.add(ok)
            before = host.health
            after = next_health(before, True, streak, cfg.rise, cfg.fall)
            if after != before:
                host.health = after  # type: ignore[assignment]
                if after == "down":
                    host.record(f"{before} -> down",
                                f"host check failed: {why}; {streak.fails} in a row; "
                                f"{len(host.members)} member(s) out")
                    for m in host.members:
                        if m.upstream is not None:
                            m.upstream.close_idle()
                else:
                    host.record(f"{before} -> up", f"{streak.passes} host check(s) passed")
                for pool in host.pools():
                    pool.refresh()
            changing = (host.health == "up" and streak.fails > 0) or (
                host.health != "up" and streak.passes > 0)
            await asyncio.sleep(cfg.interval / 2 if changing else cfg.interval)

    # ---- probes ----------------------------------------------------------------------------

    async def probe_tcp(self, address: str, port: int, timeout: float,
                        proxy_header: bytes = b"") -> tuple[bool, str]:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
        except TimeoutError:
            return False, f"connect timed out after {timeout:g}s"
        except OSError as e:
            return False, f"connect failed: {e.strerror or e}"
        if proxy_header:
            writer.write(proxy_header)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "connected"

    async def probe_http(self, url: str, method: str, host_header: str | None, timeout: float,
                         expect: frozenset[int], body_regex: str | None,
                         tls: ssl.SSLContext | None = None,
                         server_name: str | None = None,
                         proxy_header: bytes = b"") -> tuple[bool, str]:
        headers = {"User-Agent": "croupier-health-check", "Connection": "close"}
        if host_header is not None:
            headers["Host"] = host_header
        if proxy_header:
            return await self._probe_after_header(url, method, headers, timeout, expect,
                                                  body_regex, tls, server_name, proxy_header)
        try:
            async with self._http().request(
                    method, url, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    ssl=tls if tls is not None else True,
                    server_hostname=server_name) as resp:
                body = await resp.content.read(_BODY_LIMIT) if body_regex else b""
                status = resp.status
        except TimeoutError:
            return False, f"no answer within {timeout:g}s"
        except aiohttp.ClientConnectorError as e:
            return False, f"connect failed: {e.os_error.strerror or e.os_error}"
        except (aiohttp.ClientError, OSError) as e:
            return False, f"{type(e).__name__}: {e}"
        return _judged(status, body, expect, body_regex)

    async def _probe_after_header(self, url: str, method: str, headers: dict[str, str],
                                  timeout: float, expect: frozenset[int],
                                  body_regex: str | None, tls: ssl.SSLContext | None,
                                  server_name: str | None, proxy_header: bytes,
                                  ) -> tuple[bool, str]:
        """probe_http for a member behind send_proxy: the PROXY header first, then (TLS and)
        one HTTP/1.1 exchange, spoken by h11."""
        parts = urlsplit(url)
        address, port = parts.hostname or "", parts.port or 80
        headers.setdefault("Host", parts.netloc)
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM)
                family, kind, proto, _, where = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, where)
                    await loop.sock_sendall(sock, proxy_header)
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=tls,
                    server_hostname=(server_name or address) if tls is not None else None)
                conn = h11.Connection(h11.CLIENT)
                writer.write(conn.send(h11.Request(method=method, target=parts.path or "/",
                                                   headers=list(headers.items()))) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                status, body = 0, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body = (body + event.data)[:_BODY_LIMIT]
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        except TimeoutError:
            return False, f"no answer within {timeout:g}s"
        except OSError as e:
            return False, f"connect failed: {e.strerror or e}"
        except h11.RemoteProtocolError as e:
            return False, f"RemoteProtocolError: {e}"
        finally:
            if writer is not None:
                writer.close()
        return _judged(status, body, expect, body_regex)


def _judged(status: int, body: bytes, expect: frozenset[int],
            body_regex: str | None) -> tuple[bool, str]:
    """A check's answer, passed or failed, and why."""
    if status not in expect:
        return False, f"status {status}"
    if body_regex is not None and not re.search(body_regex, body.decode("utf-8", "replace")):
        return False, f"body did not match {body_regex!r}"
    return True, f"status {status}"
