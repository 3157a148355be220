"""The config contract (DESIGN.md, "What users see"): TOML -> validated pydantic models.

Every model forbids unknown keys, so a typo is an error that names the key rather than a
setting that silently does nothing. Cross-references (a route to a pool, a member on a host)
are checked in `croupier.config.load`, where the error can name the key that refers.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from importlib.metadata import entry_points
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3}


# The longest duration anything takes (a timeout, a maintenance window): past it a number is
# a typo, and far enough past it, a time no clock can print.
MAX_DURATION = 366 * 86400.0
# The latest time a window may name (the end of year 9999, as datetime can hold it).
MAX_EPOCH = 253402300799.0


def parse_duration(value: object) -> float:
    """"500ms", "2s", "5m", "1h" -> seconds. A bare number is refused: the unit is the point."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            if seconds > MAX_DURATION:
                raise ValueError(f"duration {value!r} is over the longest allowed (366 days)")
            return seconds
    raise ValueError(
        f"bad duration {value!r}: expected a number with a unit (ms, s, m, h), such as \"2s\""
    )


def is_address(value: str) -> bool:
    """An IP address (v4 or v6), or localhost: what a member's address may be."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value == "localhost"
    return True


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def is_host_name(value: str) -> bool:
    """A DNS host name (RFC 1123): labels of letters, digits and inner hyphens."""
    return bool(_HOST_NAME.match(value))


def _address(value: object) -> str:
    if isinstance(value, str) and len(value) <= 64 and is_address(value):
        return value
    shown = value[:64] + "..." if isinstance(value, str) and len(value) > 64 else value
    raise ValueError(f"address {shown!r} is not an IP address")


def parse_size(value: object) -> int:
    """A byte count: an integer, or a string such as "16KiB" or "1MiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(
        f"bad size {value!r}: expected a byte count such as 16384, \"16KiB\" or \"1MiB\""
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]
# A timeout or an interval: zero would make every request a 504, or a check loop spin.
Timeout = Annotated[float, BeforeValidator(parse_duration),
                    Field(gt=0, description="a duration over zero")]
Size = Annotated[int, BeforeValidator(parse_size)]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(min_length=1, max_length=128,
                            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Weight = Annotated[int, Field(ge=0, le=1000)]
Address = Annotated[str, BeforeValidator(_address)]
# Free text people write (a reason in a history, a target): one line, printable, short, so
# that it can go into logs, the state file and a terminal as it is.
Text = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
# A Strict-Transport-Security value: max-age, then directives (includeSubDomains, preload).
Hsts = Annotated[str, Field(max_length=200, pattern=r"^max-age=\d+(; ?[A-Za-z]+)*$")]

def parse_when(value: object) -> float:
    """A point in time -> epoch seconds: an ISO 8601 time with its offset
    ("2026-12-01T02:00:00Z"), a datetime with one, or epoch seconds; between 1970 and 9999."""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"bad time {text[:40]!r}: expected ISO 8601 such as "
                             f"\"2026-12-01T02:00:00Z\", or epoch seconds") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time needs its offset, such as 2026-12-01T02:00:00Z")
        value = value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if 0.0 <= seconds <= MAX_EPOCH:     # NaN compares false: refused too
            return seconds
    raise ValueError(f"bad time {value!r}: expected a time between 1970 and the year 9999")


When = Annotated[float, BeforeValidator(parse_when)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_address(value: str) -> tuple[str, int]:
    """"127.0.0.1:8080" or "[::1]:8080" -> (address, port), or ValueError saying why."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"bad address {value!r}: expected \"address:port\"")
    host = host.strip("[]")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(f"bad address {value!r}: port {port} is out of range 1-65535")
    return host, port


class AdminConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9900"
    token_file: str = "admin.token"     # beside the config; created (mode 0600) if missing
    # Admin states, added and removed members, weights and windows set at run time are kept
    # here (beside the config) so that they survive a restart.
    state_file: str = "croupier.state.json"
    # Host names the admin API and dashboard answer to besides loopback's, the listen address
    # and this machine's own ("lb-1.example.com", "*.lb.example.com"): any other Host is
    # refused (DNS rebinding).
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_address(v)
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        for name in v:
            bracketed = name.startswith("[") and name.endswith("]")
            if bracketed and is_address(name[1:-1]) and ":" in name:
                continue                    # an IPv6 address, as a Host header writes it
            if "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")) \
                    or any(c in name for c in "/: @[]"):
                raise ValueError(f"{name!r}: a host name, an address ([...] for IPv6), "
                                 f"or *.DOMAIN")
        return [name.lower() for name in v]


class RouteConfig(_Strict):
    path_prefix: str | None = None
    host: str | None = None
    pool: Name

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"path_prefix {v!r} must start with \"/\"")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return v.lower() if v is not None else None


class AccessLogConfig(_Strict):
    """Where and how the access log is written: one line an exchange (proxy/access_log.py)."""

    path: Text                          # a file (appended to), or "-" for standard output
    format: Literal["text", "json"] = "text"
    enabled: bool = True                # false: a listener writes none, whatever the top says


class CertificateConfig(_Strict):
    """A certificate (PEM, leaf first, then its chain) and its private key (PEM)."""

    cert: Text
    key: Text


class ListenerTlsConfig(_Strict):
    """TLS for clients (proxy/tls.py): the certificate is chosen by the name the client asks
    for (SNI) among the names each certificate carries; the first is the default."""

    certificates: list[CertificateConfig] = Field(min_length=1, max_length=1000)
    min_version: Literal["1.2", "1.3"] = "1.2"
    handshake_timeout: Timeout = 10.0   # a client that does not finish its handshake is cut
    client_ca: Text | None = None       # ask clients for a certificate this CA issued
    client_verify: Literal["require", "optional"] = "require"
    # Strict-Transport-Security for every response, e.g. "max-age=31536000; includeSubDomains"
    hsts: Hsts | None = None


class ListenerConfig(_Strict):
    name: Name
    listen: str
    mode: Literal["proxy", "redirect", "lookup"] = "proxy"
    pool: Name
    routes: list[RouteConfig] = []
    # Client-side limits and timeouts: the defaults are those a careful operator would pick.
    header_timeout: Timeout = 10.0      # first byte of a request head to its end (slowloris)
    body_timeout: Timeout = 60.0        # longest silence while a request body is arriving
    keepalive_timeout: Timeout = 60.0   # idle time between requests on one connection
    send_timeout: Timeout = 60.0        # longest time a client may leave our writes unread
    tunnel_timeout: Timeout = 3600.0    # longest silence both ways on an upgraded connection
    max_header_size: Size = 16384        # request line + headers; 431 past it
    max_body_size: Size = 0              # 413 past it; 0 = no limit
    max_pipelined: int = Field(default=16, ge=1, le=1024)
    access_log: AccessLogConfig | None = None   # the top level's [access_log] when absent
    # Peers whose X-Forwarded-For, -Proto, -Host and X-Request-ID are believed (networks, as
    # "10.0.0.0/8" or one address); from anyone else they are replaced.
    trusted_proxies: list[str] = Field(default=[], max_length=1000)
    tls: ListenerTlsConfig | None = None    # HTTPS for clients; plain HTTP when absent
    # A plain listener that answers every request with a 308 to the same target on this
    # TLS listener.
    redirect_to_https: Name | None = None
    # Connections open with a PROXY protocol header (v1 or v2) from an L4 balancer among
    # trusted_proxies, naming the client.
    proxy_protocol: bool = False

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not a network (\"10.0.0.0/8\") nor an IP "
                                 "address") from None
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_address(v)
        return v


class HostCheckConfig(_Strict):
    """A host's own check: a TCP connect to a port, or an HTTP GET of a URL."""

    type: Literal["tcp", "http"] = "tcp"
    port: Port | None = None            # tcp: the port to connect to
    url: str | None = None              # http: the URL to GET; 2xx/3xx passes
    interval: Timeout = 2.0
    timeout: Timeout = 1.0
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _target(self) -> HostCheckConfig:
        if self.type == "tcp" and self.port is None:
            raise ValueError("a tcp host check needs port")
        if self.type == "http" and not (self.url or "").startswith("http://"):
            raise ValueError("an http host check needs url = \"http://...\"")
        return self


class HostConfig(_Strict):
    name: Name
    address: str = Field(min_length=1)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not (is_address(v) or is_host_name(v)):
            raise ValueError(f"address {v[:64]!r} is neither an IP address nor a host name")
        return v
    check: HostCheckConfig | None = None


class MemberConfig(_Strict):
    host: Name | None = None
    address: str | None = None
    port: Port
    weight: Weight = 1
    name: str | None = None
    # Where clients reach the member themselves (redirect and lookup modes), when that is
    # not its address as croupier sees it: "https://shop-1.example.com".
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/?#\s]+$", v):
            raise ValueError(f"public_url {v!r} must be scheme://host[:port], no path")
        return v


class StickyConfig(_Strict):
    """Cookie affinity on top of the pool's algorithm."""

    cookie: str = Field(default="croupier_sticky", pattern=r"^[A-Za-z0-9_.-]+$")
    max_age: Duration = 0.0             # 0: a session cookie


def _status_set(value: object) -> frozenset[int]:
    """200, "200-399", or a list of those -> the set of statuses that pass."""
    items = value if isinstance(value, list) else [value]
    out: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            out.add(item)
            continue
        m = re.match(r"^\s*(\d{3})\s*-\s*(\d{3})\s*$", item) if isinstance(item, str) else None
        if m and 100 <= int(m.group(1)) <= int(m.group(2)) <= 599:
            out.update(range(int(m.group(1)), int(m.group(2)) + 1))
            continue
        raise ValueError(f"bad status {item!r}: expected a status such as 200 or a range "
                         f"such as \"200-399\"")
    return frozenset(out)


StatusSet = Annotated[frozenset[int], BeforeValidator(_status_set)]


class HealthConfig(_Strict):
    """Active checks of every member of a pool."""

    type: Literal["http", "tcp"] = "http"
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    path: str = "/"
    host: str | None = None             # the Host header; default: the member's address:port
    port: Port | None = None            # check another port than the member's
    expect_status: StatusSet = frozenset(range(200, 400))
    body_regex: str | None = None
    interval: Timeout = 2.0
    fast_interval: Timeout | None = None   # while a member is changing state; default interval/2
    timeout: Timeout = 1.0
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)   # +- share of the interval
    # How a member counts before its first check: members present at start default to "up"
    # (a restart must not black out a pool), members added later to "down".
    initial: Literal["up", "down"] | None = None

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from None
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path {v!r} must start with \"/\"")
        return v


class OutlierConfig(_Strict):
    """Passive ejection: live traffic that keeps failing takes a member out for a while."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    include_5xx: bool = True            # a 5xx answer counts as a failure
    base_ejection: Timeout = 10.0      # the first ejection; doubles on each repeat
    max_ejection: Timeout = 300.0
    max_ejected_percent: int = Field(default=50, ge=0, le=100)


POLICY_GROUP = "croupier.policies"


@functools.cache
def policy_names() -> tuple[str, ...]:
    """The balancing policies installed. Each registers its name once, as an entry point of
    the group `croupier.policies` (pyproject.toml; a policy in another package registers the
    same way), so the config knows the names without importing the policies."""
    return tuple(sorted(ep.name for ep in entry_points(group=POLICY_GROUP)))


def _known_policy(v: str) -> str:
    names = policy_names()
    if v not in names:
        raise ValueError(f"unknown algorithm {v!r}: expected one of {', '.join(names)}")
    return v


Algorithm = Annotated[str, AfterValidator(_known_policy)]


class PoolTlsConfig(_Strict):
    """TLS to a pool's members (proxy/upstream.py), health checks included."""

    ca: Text | None = None              # the CAs members' certificates are checked against;
                                        # the system's store when absent
    verify: bool = True                 # false: any certificate (a test bed, never production)
    server_name: Text | None = None     # verified and sent as SNI; members' addresses if absent
    cert: Text | None = None            # a client certificate, for members that ask for one
    key: Text | None = None


class DiscoveryConfig(_Strict):
    """Members that register themselves in etcd (cluster/discovery.py), beside the listed."""

    etcd: str                           # under the [cluster] prefix, e.g. "apps/classes"

    @field_validator("etcd")
    @classmethod
    def _key(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", v) or len(v) > 200:
            raise ValueError(f"discovery key {v[:100]!r}: segments of letters, digits and "
                             f"._- joined by \"/\"")
        return v


class PoolConfig(_Strict):
    name: Name
    algorithm: Algorithm = "round_robin"
    hash_key: str = "client_ip"         # for hash: client_ip, path, header:NAME, cookie:NAME
    sticky: StickyConfig | None = None
    slow_start: Duration = 0.0          # a member that comes back ramps up over this long
    members: list[str | MemberConfig] = []     # at least one, unless discovery brings them
    discovery: DiscoveryConfig | None = None
    # The networks members may be in when they register themselves (discovery): required
    # with it, so that a key written into etcd cannot send traffic anywhere.
    allowed_networks: list[str] = []
    health: HealthConfig | None = None
    outlier: OutlierConfig = OutlierConfig()
    connect_timeout: Timeout = 3.0
    response_timeout: Timeout = 30.0    # request sent -> response, and between response reads
    # Kept below the usual backend keep-alive (uvicorn, node: 5s) so the backend never closes
    # a connection that we are about to reuse (DESIGN.md, known pitfalls).
    idle_timeout: Timeout = 4.0
    max_idle: int = Field(default=64, ge=0)
    retries: int = Field(default=2, ge=0, le=10)     # other members tried after a failure
    retry_body_limit: Size = 65536      # bodies up to this size are kept for a replay
    # Retries may add at most this share to the pool's requests of the last 10 s...
    retry_budget_percent: int = Field(default=20, ge=0, le=100)
    retry_burst: int = Field(default=10, ge=0)     # ...or this many, whichever is more
    tls: PoolTlsConfig | None = None    # HTTPS to the members; plain HTTP when absent
    # A PROXY header opens each member connection, naming the client: connections to members
    # are then each client connection's own (reused for its next requests only).
    send_proxy: Literal["v1", "v2"] | None = None

    @field_validator("hash_key")
    @classmethod
    def _hash_key(cls, v: str) -> str:
        return _check_hash_key(v)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net[:100]!r} is not a network (10.0.0.0/8, fd00::/8)") \
                    from None
        return v

    @model_validator(mode="after")
    def _membership(self) -> PoolConfig:
        if not self.members and self.discovery is None:
            raise ValueError("a pool needs members, or [pools.discovery] to bring them")
        if self.discovery is not None and not self.allowed_networks:
            raise ValueError("[pools.discovery] needs allowed_networks: the networks a "
                             "registered member may be in")
        return self


class MaintenanceConfig(_Strict):
    """A maintenance window: drain `lead` before `start`, maint until `end`, then back."""

    target: str = Field(min_length=1)   # "pool/member", "address:port" or "host:NAME"
    start: datetime
    end: datetime | None = None
    duration: Duration | None = None
    lead: Duration = 0.0
    reason: str = ""
    id: str | None = None

    @model_validator(mode="after")
    def _span(self) -> MaintenanceConfig:
        if self.start.tzinfo is None:
            raise ValueError("start needs a timezone offset, such as 2026-12-01T02:00:00Z")
        if (self.end is None) == (self.duration is None):
            raise ValueError("give exactly one of end and duration")
        if self.end is not None:
            if self.end.tzinfo is None:
                raise ValueError("end needs a timezone offset")
            if self.end <= self.start:
                raise ValueError("end must be after start")
        return self

    def span(self) -> tuple[float, float]:
        start = self.start.timestamp()
        end = self.end.timestamp() if self.end is not None else start + (self.duration or 0.0)
        return start, end


def _check_hash_key(v: str) -> str:
    if v in ("client_ip", "path"):
        return v
    kind, _, name = v.partition(":")
    if kind in ("header", "cookie") and re.match(r"^[A-Za-z0-9_.-]+$", name.strip()):
        return v
    raise ValueError(f"bad hash_key {v!r}: expected client_ip, path, header:NAME or "
                     "cookie:NAME")


class RuntimeConfig(_Strict):
    # How long SIGTERM lets requests in flight finish before what is left is closed.
    stop_grace: Duration = 10.0


_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ETCD_URL = re.compile(r"^(http|https)://[^/\s]+:\d{1,5}/?$")


class ClusterConfig(_Strict):
    """A fleet (DESIGN.md): the instances sharing one etcd prefix share their admin state."""

    etcd: list[str] = Field(min_length=1, max_length=16)    # the cluster's client URLs
    prefix: str = "/croupier"
    instance: str | None = None         # this instance's name in the fleet; default: host name
    username: str | None = None         # etcd's authentication, with password_file
    password_file: str | None = None    # beside the config, its whole text is the password
    ca: str | None = None               # for https:// endpoints: the CA that signed etcd's
    cert: str | None = None             # a client certificate for etcd, with key
    key: str | None = None
    timeout: Timeout = 2.0              # one call to etcd
    lease_ttl: Timeout = 5.0            # an instance gone this long leaves the fleet's list

    @field_validator("etcd")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not _ETCD_URL.match(url):
                raise ValueError(f"etcd endpoint {url[:100]!r} is not http(s)://HOST:PORT")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.match(r"^/[A-Za-z0-9._/-]{1,200}$", v) or "//" in v:
            raise ValueError(f"prefix {v[:100]!r} must start with \"/\" and hold only letters, "
                             f"digits and ._-/")
        return v.rstrip("/")

    @field_validator("instance")
    @classmethod
    def _instance(cls, v: str | None) -> str | None:
        if v is not None and not _INSTANCE.match(v):
            raise ValueError(f"instance {v[:100]!r}: 1 to 63 letters, digits and ._-")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> ClusterConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate for etcd needs both cert and key")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("etcd authentication needs both username and password_file")
        return self


class Config(_Strict):
    # Processes that serve the listeners (SO_REUSEPORT); checks, schedules and the admin API
    # run once, in a supervisor, when there is more than one. "auto": one per core.
    workers: int | Literal["auto"] = Field(default="auto", ge=1, le=64)
    admin: AdminConfig = AdminConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    access_log: AccessLogConfig | None = None   # off when absent
    listeners: list[ListenerConfig] = Field(min_length=1)
    hosts: list[HostConfig] = []
    pools: list[PoolConfig] = Field(min_length=1)
    maintenance: list[MaintenanceConfig] = []
    cluster: ClusterConfig | None = None     # a fleet sharing its admin state through etcd
