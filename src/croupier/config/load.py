"""Read a TOML file into a validated `Config`, or fail with errors that name the file and key."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from croupier.config.certificates import (
    CertificateError,
    check_client_ca,
    load_certificate,
    member_context,
)
from croupier.config.schema import Config, MemberConfig, is_address, split_address


class ConfigError(Exception):
    """A config that must not start. `problems` holds (key, reason) pairs."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.path}: {key}: {reason}" for key, reason in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """A member with its host resolved: what the runtime model is built from."""

    pool: str
    name: str          # how people and the admin API name it: "host:port" or "address:port"
    host: str          # the host's name; a member that names an address gets a host of that name
    address: str
    port: int
    weight: int
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    path: Path
    config: Config
    members: dict[str, list[MemberSpec]]   # pool name -> members, in config order
    # The TOML as it was read (what workers are sent: they never read the file) and its
    # SHA-256, which says which config a process serves.
    text: str = ""
    digest: str = ""
    # The SHA-256 of what the instances of a fleet must agree on: the pools, hosts and
    # windows its shared state names. Not the rest, which is each instance's own by right
    # (its name, addresses, workers, certificates, logs).
    fleet_digest: str = ""

    def beside(self, name: str) -> Path:
        """A path the config names (token, state file): relative ones are beside the config
        file (beside the working directory for a config that is no file)."""
        path = Path(name)
        if path.is_absolute():
            return path
        base = self.path.parent if self.path.name.endswith(".toml") else Path()
        return base / path


def _key(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """('pools', 0, 'members', 2, 'port') -> 'pools[0] (classes).members[2].port'."""
    out = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    out += f" ({node['name']})"
            except (IndexError, KeyError, TypeError):
                node = None
        elif part in ("str", "MemberConfig", "function-after[_listen(), str]"):
            continue   # pydantic's union-branch labels are noise to a user
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, data: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append((_key(tuple(e["loc"]), data), msg))
    # A member written in short form fails both union branches; keep the clearer message.
    seen: dict[str, str] = {}
    for key, msg in problems:
        if key not in seen or "expected" in msg or "port" in msg:
            seen[key] = msg
    return list(seen.items())


def load_config(path: Path | str) -> LoadedConfig:
    """Parse and validate; raise ConfigError naming every problem found."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [("(file)", e.strerror or str(e))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, [("(syntax)", str(e))]) from None
    return load_text(text, path)


def load_text(text: str, path: Path | str) -> LoadedConfig:
    """A config from its TOML text (read from `path`, or sent by the supervisor)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [("(syntax)", str(e))]) from None
    loaded = validate_config(data, path)
    return replace(loaded, text=text, digest=hashlib.sha256(text.encode()).hexdigest())


def _unwritable(path: Path) -> str | None:
    """Why croupier could not append to `path`, or None (nothing is created to find out)."""
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    parent = path.absolute().parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    return None if os.access(parent, os.W_OK) else f"directory {parent} is not writable"


def validate_config(data: dict[str, Any], path: Path | str = "<config>") -> LoadedConfig:
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, _pydantic_problems(e, data)) from None

    problems: list[tuple[str, str]] = []
    pools = {p.name for p in config.pools}
    hosts: dict[str, str] = {}
    host_addresses: dict[str, str] = {}
    for i, h in enumerate(config.hosts):
        key = f"hosts[{i}] ({h.name}).name"
        if h.name in hosts:
            problems.append((key, f"a host named {h.name!r} is already defined"))
        hosts[h.name] = h.address
        host_addresses.setdefault(h.address, h.name)

    seen_pools: set[str] = set()
    for i, p in enumerate(config.pools):
        if p.name in seen_pools:
            problems.append((f"pools[{i}] ({p.name}).name",
                             f"a pool named {p.name!r} is already defined"))
        seen_pools.add(p.name)

    logs = [("access_log", config.access_log)] + [
        (f"listeners[{i}] ({lst.name}).access_log", lst.access_log)
        for i, lst in enumerate(config.listeners)]
    for key, log_config in logs:
        if log_config is not None and log_config.enabled and log_config.path != "-":
            why = _unwritable(Path(path).parent / log_config.path)
            if why:
                problems.append((f"{key}.path", why))

    listen_seen: dict[tuple[str, int], str] = {}
    names_seen: set[str] = set()
    admin_addr = split_address(config.admin.listen)
    for i, lst in enumerate(config.listeners):
        base = f"listeners[{i}] ({lst.name})"
        if lst.name in names_seen:
            problems.append((f"{base}.name", f"a listener named {lst.name!r} is already defined"))
        names_seen.add(lst.name)
        addr = split_address(lst.listen)
        if addr in listen_seen:
            problems.append((f"{base}.listen",
                             f"{lst.listen} is already used by listener {listen_seen[addr]!r}"))
        elif addr == admin_addr:
            problems.append((f"{base}.listen", f"{lst.listen} is already used by [admin].listen"))
        listen_seen[addr] = lst.name
        if lst.pool not in pools:
            problems.append((f"{base}.pool", f"no pool named {lst.pool!r}"))
        for j, r in enumerate(lst.routes):
            if r.pool not in pools:
                problems.append((f"{base}.routes[{j}].pool", f"no pool named {r.pool!r}"))
            if r.path_prefix is None and r.host is None:
                problems.append((f"{base}.routes[{j}]",
                                 "a route needs path_prefix, host, or both"))
        if lst.proxy_protocol and not lst.trusted_proxies:
            problems.append((f"{base}.proxy_protocol",
                             "needs trusted_proxies: the balancers allowed to send the header"))
        if lst.redirect_to_https is not None:
            target = next((t for t in config.listeners if t.name == lst.redirect_to_https), None)
            if target is None:
                problems.append((f"{base}.redirect_to_https",
                                 f"no listener named {lst.redirect_to_https!r}"))
            elif target.tls is None:
                problems.append((f"{base}.redirect_to_https",
                                 f"listener {target.name!r} has no [listeners.tls]"))
        if lst.tls is not None:
            # Loaded as `run` loads them: a file check passes is one run can serve.
            for j, c in enumerate(lst.tls.certificates):
                cert_file, key_file = Path(path).parent / c.cert, Path(path).parent / c.key
                try:
                    load_certificate(cert_file, key_file)
                except CertificateError as e:
                    field = "key" if e.file == key_file else "cert"
                    problems.append((f"{base}.tls.certificates[{j}].{field}", str(e)))
            if lst.redirect_to_https is not None:
                problems.append((f"{base}.redirect_to_https",
                                 "a TLS listener has nothing to redirect: set it on a plain one"))
            if lst.tls.client_ca is not None:
                try:
                    check_client_ca(Path(path).parent / lst.tls.client_ca)
                except CertificateError as e:
                    problems.append((f"{base}.tls.client_ca", str(e)))

    members: dict[str, list[MemberSpec]] = {}
    for i, p in enumerate(config.pools):
        if p.tls is not None:
            t, here = p.tls, Path(path).parent
            missing = [(f, here / n) for f, n in (("ca", t.ca), ("cert", t.cert), ("key", t.key))
                       if n is not None and not (here / n).is_file()]
            for field, file in missing:
                problems.append((f"pools[{i}] ({p.name}).tls.{field}", f"{file}: no such file"))
            if (t.cert is None) != (t.key is None):
                problems.append((f"pools[{i}] ({p.name}).tls",
                                 "a client certificate needs both cert and key"))
            elif not missing:
                try:
                    member_context(here / t.ca if t.ca else None, t.verify,
                                   here / t.cert if t.cert else None,
                                   here / t.key if t.key else None)
                except (OSError, ssl.SSLError) as e:
                    problems.append((f"pools[{i}] ({p.name}).tls", f"cannot be used: {e}"))
    for i, p in enumerate(config.pools):
        specs: list[MemberSpec] = []
        names: set[str] = set()
        for j, m in enumerate(p.members):
            key = f"pools[{i}] ({p.name}).members[{j}]"
            try:
                spec = _member_spec(p.name, m, hosts, host_addresses)
            except ValueError as e:
                problems.append((key, str(e)))
                continue
            if spec.name in names:
                problems.append((key, f"member {spec.name} is listed twice"))
            names.add(spec.name)
            specs.append(spec)
        members[p.name] = specs

    all_specs = [spec for specs in members.values() for spec in specs]
    host_names = set(hosts) | {spec.host for spec in all_specs}
    for i, mc in enumerate(config.maintenance):
        if not names_target(mc.target, all_specs, host_names):
            problems.append((f"maintenance[{i}].target",
                             f"{mc.target!r} names no member or host of this config (give "
                             f"pool/member, a member's address:port, or host:NAME)"))

    for i, p in enumerate(config.pools):
        if p.discovery is not None and config.cluster is None:
            problems.append((f"pools[{i}] ({p.name}).discovery",
                             "needs [cluster]: the etcd the members register in"))
    cluster = config.cluster
    if cluster is not None:
        here = Path(path).parent
        for field in ("ca", "cert", "key", "password_file"):
            name = getattr(cluster, field)
            if name is not None and not (here / name).is_file():
                problems.append((f"cluster.{field}", f"{here / name}: no such file"))
        files_ok = not any(k.startswith("cluster.") for k, _ in problems)
        if files_ok and (cluster.ca is not None or cluster.cert is not None):
            try:        # as run will load them
                context = ssl.create_default_context(
                    cafile=str(here / cluster.ca) if cluster.ca else None)
                if cluster.cert is not None and cluster.key is not None:
                    context.load_cert_chain(here / cluster.cert, here / cluster.key)
            except (OSError, ssl.SSLError) as e:
                problems.append(("cluster", f"the etcd TLS files cannot be used: {e}"))

    if problems:
        raise ConfigError(path, problems)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    shared = config.model_dump(mode="json", include={"pools", "hosts", "maintenance"})
    fleet_digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()
    return LoadedConfig(Path(path), config, members, digest=digest, fleet_digest=fleet_digest)


def names_member(target: str, pool: str, name: str, address: str, port: int) -> bool:
    """Whether an operator's target ("pool/member", or a member's name or address:port in
    any pool) names this member: the one rule for the config's windows and the admin API."""
    if "/" in target:
        pool_name, _, target = target.partition("/")
        if pool_name != pool:
            return False
    return target == name or target == f"{address}:{port}"


def names_target(target: str, specs: list[MemberSpec], hosts: set[str]) -> bool:
    """Whether a target ("host:NAME" too) names something among these members and hosts."""
    if target.startswith("host:"):
        return target[5:] in hosts
    return any(names_member(target, s.pool, s.name, s.address, s.port) for s in specs)


def _member_spec(pool: str, m: str | MemberConfig, hosts: dict[str, str],
                 host_addresses: dict[str, str]) -> MemberSpec:
    if isinstance(m, str):
        where, port = split_address(m)
        if where in hosts:
            return MemberSpec(pool, m, where, hosts[where], port, 1)
        if is_address(where):
            host = host_addresses.get(where, where)
            return MemberSpec(pool, m, host, where, port, 1)
        raise ValueError(f"{where!r} is neither a host in [[hosts]] nor an IP address")
    if (m.host is None) == (m.address is None):
        raise ValueError("a member needs exactly one of host or address")
    if m.host is not None:
        if m.host not in hosts:
            raise ValueError(f"no host named {m.host!r} in [[hosts]]")
        name = m.name or f"{m.host}:{m.port}"
        return MemberSpec(pool, name, m.host, hosts[m.host], m.port, m.weight, m.public_url)
    assert m.address is not None
    if not is_address(m.address):
        raise ValueError(f"address {m.address!r} is not an IP address")
    name = m.name or f"{m.address}:{m.port}"
    return MemberSpec(pool, name, host_addresses.get(m.address, m.address), m.address,
                      m.port, m.weight, m.public_url)

