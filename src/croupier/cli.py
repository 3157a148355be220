"""The `croupier` command line (click)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from croupier.config import ConfigError, LoadedConfig, load_config
from croupier.config.certificates import load_certificate
from croupier.config.certificates import warnings as certificate_warnings

if TYPE_CHECKING:
    from croupier.admin.client import AdminClient

F = TypeVar("F", bound=Callable[..., Any])


def _load(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        click.echo(f"croupier: the config is not valid:\n{e.render()}", err=True)
        sys.exit(1)


@click.group()
@click.version_option(package_name="croupier")
def main() -> None:
    """croupier: an HTTP load balancer that deals each request to the next member in turn."""


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
              default=Path("croupier.toml"), show_default=True, help="The TOML config.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]), help="json: one object a line.")
def run(config_path: Path, log_level: str, log_format: str) -> None:
    """Serve the listeners of a config until SIGTERM or Ctrl-C."""
    loaded = _load(config_path)
    _setup_logging(log_level, log_format)
    from croupier.runtime.app import serve
    try:
        serve(loaded, ("--log-level", log_level, "--log-format", log_format))
    except OSError as e:
        click.echo(f"croupier: {e.strerror or e}", err=True)
        sys.exit(1)
    except ConfigError as e:
        click.echo(f"croupier: the config is not valid:\n{e.render()}", err=True)
        sys.exit(1)


@main.command(hidden=True)
@click.option("--channel-fd", required=True, type=int)
@click.option("--index", required=True, type=int)
@click.option("--log-level", default="info")
@click.option("--log-format", default="text")
def worker(channel_fd: int, index: int, log_level: str, log_format: str) -> None:
    """One worker process (started by `croupier run` when workers > 1): it is sent its
    config by the supervisor, over the channel."""
    _setup_logging(log_level, log_format)
    from croupier.runtime.app import run_worker
    run_worker(channel_fd, index)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
              default=Path("croupier.toml"), show_default=True, help="The TOML config.")
def check(config_path: Path) -> None:
    """Validate a config and print what it would serve; exit 0 if valid, 1 if not."""
    loaded = _load(config_path)
    config = loaded.config
    click.echo(f"{config_path}: valid")
    for lst in config.listeners:
        scheme = "https" if lst.tls is not None else "http"
        click.echo(f"listener {lst.name}: {scheme} {lst.listen} ({lst.mode}) -> pool {lst.pool}")
        for c in lst.tls.certificates if lst.tls is not None else ():
            cert = load_certificate(loaded.beside(c.cert), loaded.beside(c.key))
            click.echo(f"  certificate {c.cert}: {', '.join(cert.names)} "
                       f"(until {cert.not_after:%Y-%m-%d}, {cert.key_type})")
            for warning in certificate_warnings(cert):
                click.echo(f"  warning: {warning}", err=True)
        for r in lst.routes:
            what = " ".join(x for x in (f"host {r.host}" if r.host else "",
                                        f"path {r.path_prefix}" if r.path_prefix else "") if x)
            click.echo(f"  route {what} -> pool {r.pool}")
    for pool in config.pools:
        click.echo(f"pool {pool.name} ({pool.algorithm}):")
        for m in loaded.members[pool.name]:
            click.echo(f"  member {m.name} -> {m.address}:{m.port} weight {m.weight} "
                       f"(host {m.host})")
    click.echo(f"admin: {config.admin.listen}")


@main.command()
@click.option("--port", default=8080, show_default=True, help="The demo listener's port.")
@click.option("--app-port", default=9001, show_default=True,
              help="The first demo instance's port; the others follow.")
@click.option("--instances", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--admin-port", default=9900, show_default=True, help="The admin API's port.")
@click.option("--tls-port", default=8443, show_default=True,
              help="The demo's HTTPS listener's port.")
def demo(port: int, app_port: int, instances: int, admin_port: int, tls_port: int) -> None:
    """Start demo application instances and a proxy listener in front of them."""
    _setup_logging("info")
    from croupier.demo import run_demo
    run_demo(port, app_port, instances, admin_port, tls_port)


@main.command("demo-app", hidden=True)
@click.option("--name", required=True)
@click.option("--port", required=True, type=int)
def demo_app(name: str, port: int) -> None:
    """One demo application instance (started by `croupier demo`)."""
    from croupier.demo import serve_app
    serve_app(name, port)


def _setup_logging(level: str, log_format: str = "text") -> None:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level",
                                                          "asctime": "time"}))
        logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
        return
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- talking to a running instance (the admin API) ------------------------------------------

def _admin_options(fn: F) -> F:
    fn = click.option("--token", envvar="CROUPIER_TOKEN", default=None,
                      help="The admin token [env CROUPIER_TOKEN].")(fn)
    fn = click.option("--admin", "admin_url", envvar="CROUPIER_ADMIN", default=None,
                      help="The admin API's URL [env CROUPIER_ADMIN].")(fn)
    fn = click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
                      default=None, help="Find the admin API from this config's [admin].")(fn)
    return fn


def _client(config_path: Path | None, admin_url: str | None,
            token: str | None) -> AdminClient:
    from croupier.admin.client import find_admin
    return find_admin(config_path, admin_url, token)


@main.command()
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(config_path: Path | None, admin_url: str | None, token: str | None,
           as_json: bool) -> None:
    """Show listeners, members, hosts and maintenance windows of a running instance."""
    import json

    from rich.console import Console
    from rich.table import Table

    data = _client(config_path, admin_url, token).call("GET", "/api/v1/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    # Piped or captured, rich would assume 80 columns and cut member names short.
    console = Console(width=None if sys.stdout.isatty() else 200)
    for lst in data["listeners"]:
        console.print(f"listener [bold]{lst['name']}[/] {lst['listen']} ({lst['mode']}) -> "
                      f"pool {lst['pool']}, {lst['open_connections']} connection(s)")
    table = Table(title="members")
    for col in ("pool", "member", "host", "health", "admin", "eligible", "in flight",
                "requests", "failures", "mean ms"):
        table.add_column(col, justify="right" if col in (
            "in flight", "requests", "failures", "mean ms") else "left")
    for pool in data["pools"]:
        for m in pool["members"]:
            admin = m["admin_state"]
            if m["admin_origins"]:
                admin += " (" + ", ".join(f"{o}: {s}" for o, s in m["admin_origins"].items()) + ")"
            if m["admin_state"] != "ready" and m["drained"]:
                admin += " drained"
            health = m["health"] + (" ejected" if m["ejected"] else "") + (
                " host down" if m["host_health"] == "down" else "")
            table.add_row(pool["name"], m["name"], m["host"], health, admin,
                          "yes" if m["eligible"] else m.get("reason", "no"), str(m["in_flight"]),
                          str(m["requests"]), str(m["failures"]),
                          "" if m["mean_response_ms"] is None else f"{m['mean_response_ms']:.2f}")
    console.print(table)
    hosts = [h for h in data["hosts"] if h["admin_state"] != "ready" or h["health"] != "up"]
    for h in hosts:
        console.print(f"host {h['name']}: health {h['health']}, admin {h['admin_state']}")
    digest = data.get("config", {}).get("digest", "")
    console.print(f"config {data.get('config', {}).get('path', '?')} ({digest[:12]})")
    workers = data.get("workers") or []
    if workers:
        ready = sum(1 for w in workers if w["ready"])
        console.print(f"workers: {ready} of {len(workers)} ready (pids "
                      + ", ".join(str(w["pid"]) for w in workers) + ")")
        for w in workers:
            if w.get("digest") and w["digest"] != digest:
                console.print(f"worker {w['index']} (pid {w['pid']}) serves another config: "
                              f"{w['digest'][:12]}")
    for w in data["schedules"]:
        console.print(f"window {w['id']} {w['target']}: {w['status']}, "
                      f"{_when(w['start'])} to {_when(w['end'])}, drain {w['lead']:g}s before")


def _when(epoch: float) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


_LOCAL = click.option("--local", is_flag=True,
                      help="This instance alone (origin local): in a fleet, not shared, and "
                           "possible while etcd does not answer.")
_FLEET_TIMEOUT = click.option("--fleet-timeout", default=10.0, show_default=True,
                              help="Seconds every instance of a fleet may take to apply the "
                                   "change; then the ones that lag are named (exit 1).")


def _set_state(state: str, target: str, reason: str, config_path: Path | None,
               admin_url: str | None, token: str | None,
               fleet_timeout: float = 10.0, local: bool = False) -> dict[str, Any]:
    client = _client(config_path, admin_url, token)
    data = client.call("PUT", client.target_path(target, "/state"),
                       {"state": state, "reason": reason, "local": local})
    for m in data["members"]:
        still = "" if m["admin_state"] == state or (state == "ready" and m["admin_state"] == \
            "ready") else f" (still {m['admin_state']}: " + ", ".join(
                f"{o} {s}" for o, s in m["admin_origins"].items()) + ")"
        click.echo(f"{m['pool']}/{m['name']}: {m['admin_state']}{still}, "
                   f"{m['in_flight']} in flight")
    if data.get("revision") is not None:
        _fleet_applied(client, data["revision"], fleet_timeout)
    return data


def _fleet_applied(client: AdminClient, revision: int, timeout: float) -> None:
    """Return once every live instance of the fleet has applied `revision`; name the ones
    that have not when `timeout` runs out."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        view = client.call("GET", "/api/v1/fleet")
        lagging = [i["name"] for i in view["instances"] if i["applied"] < revision]
        if not lagging:
            click.echo(f"applied on every instance of the fleet ({len(view['instances'])}), "
                       f"revision {revision}")
            return
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"revision {revision} not applied after {timeout:g}s on: " + ", ".join(lagging))
        time.sleep(0.05)


def _fleet_in_flight(client: AdminClient, members: list[str]) -> int | None:
    """Requests in flight on `members` over every instance of the fleet (None: no fleet)."""
    try:
        view = client.call("GET", "/api/v1/fleet")
    except click.ClickException:
        return None
    return sum(int(i["members"].get(m, {}).get("in_flight", 0))
               for i in view["instances"] for m in members)


@main.command()
@click.argument("target")
@click.option("--wait", is_flag=True, help="Return once nothing is in flight on the target "
              "(on any instance of the fleet).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait may take.")
@_FLEET_TIMEOUT
@click.option("--reason", default="", help="Kept in the target's history.")
@_LOCAL
@_admin_options
def drain(target: str, wait: bool, timeout: float, fleet_timeout: float, reason: str,
          local: bool, config_path: Path | None, admin_url: str | None,
          token: str | None) -> None:
    """Send no new requests to TARGET; what is in flight finishes. In a fleet, returns once
    every instance has applied the drain.

    TARGET is pool/member, a member's address:port, or host:NAME."""
    import time

    data = _set_state("drain", target, reason, config_path, admin_url, token, fleet_timeout,
                      local)
    if not wait:
        return
    client = _client(config_path, admin_url, token)
    fleet = data.get("revision") is not None
    keys = [f"{m['pool']}/{m['name']}" for m in data["members"]]
    deadline = time.monotonic() + timeout
    last = None
    while not data["drained"] or (fleet and _fleet_in_flight(client, keys)):
        in_flight = sum(m["in_flight"] for m in data["members"])
        if fleet:
            in_flight = max(in_flight, _fleet_in_flight(client, keys) or 0)
        if in_flight != last:
            click.echo(f"draining {target}: {in_flight} in flight")
            last = in_flight
        if time.monotonic() > deadline:
            raise click.ClickException(f"{target} still has {in_flight} in flight after "
                                       f"{timeout:g}s")
        time.sleep(0.1)
        data = client.call("GET", client.target_path(target))
    click.echo(f"{target} is drained: safe to stop")


@main.command()
@click.argument("target")
@_FLEET_TIMEOUT
@click.option("--reason", default="", help="Kept in the target's history.")
@_LOCAL
@_admin_options
def maint(target: str, fleet_timeout: float, reason: str, local: bool,
          config_path: Path | None, admin_url: str | None, token: str | None) -> None:
    """Put TARGET in maintenance: no traffic and no health checks."""
    _set_state("maint", target, reason, config_path, admin_url, token, fleet_timeout,
               local)


@main.command()
@click.option("--pool", required=True, help="The pool (its [pools.discovery]) to join.")
@click.option("--address", required=True, help="The member's ADDRESS:PORT.")
@click.option("--weight", default=1, show_default=True, type=click.IntRange(0, 1000))
@click.option("--host", default=None, help="The host it runs on (default: its address).")
@click.option("--ttl", default="10s", show_default=True,
              help="Gone this long after this command dies (its lease).")
@click.option("--drain-timeout", default="60s", show_default=True,
              help="On a clean stop, how long to wait for requests in flight to finish.")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="A croupier config of the fleet: its [cluster] and the pool's discovery.")
def register(pool: str, address: str, weight: int, host: str | None, ttl: str,
             drain_timeout: str, config_path: Path) -> None:
    """Keep a member registered in a pool while this runs, beside the application instance.
    SIGTERM or Ctrl-C leaves cleanly: drained first on every instance, then removed; killed,
    the member leaves when its lease runs out (--ttl)."""
    import asyncio
    import signal

    from croupier.cluster.discovery import Registered, discovery_prefix, keep_registered
    from croupier.cluster.etcd import EtcdError, client_for
    from croupier.config import parse_duration
    from croupier.config.schema import split_address

    loaded = _load(config_path)
    cluster = loaded.config.cluster
    pc = next((p for p in loaded.config.pools if p.name == pool), None)
    if cluster is None or pc is None or pc.discovery is None:
        raise click.ClickException(f"{config_path}: no [cluster], or no pool {pool!r} with "
                                   f"[pools.discovery]")
    try:
        addr, port = split_address(address)
        entry = Registered(address=addr, port=port, weight=weight, host=host)
        ttl_s, drain_s = parse_duration(ttl), parse_duration(drain_timeout)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    key = discovery_prefix(cluster.prefix, pc.discovery.etcd) + f"{entry.address}:{port}"

    async def run() -> None:
        client = client_for(cluster, loaded.beside)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await keep_registered(client, key, entry, ttl_s, stop,
                                  f"{pool}/{entry.address}:{port}",
                                  cluster.prefix, drain_s,
                                  lambda text: click.echo(text, err=True))
        except EtcdError as e:
            raise click.ClickException(f"etcd: {e}") from None
        finally:
            await client.close()
    asyncio.run(run())


@main.command()
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw view as JSON.")
def fleet(config_path: Path | None, admin_url: str | None, token: str | None,
          as_json: bool) -> None:
    """List the instances sharing this one's admin state (its [cluster]), and where their
    views of the members disagree."""
    import json

    from rich.console import Console
    from rich.table import Table

    view = _client(config_path, admin_url, token).call("GET", "/api/v1/fleet")
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"fleet {view['prefix']}: this is {view['instance']}, "
                  f"{'connected' if view['connected'] else 'NOT connected'} to etcd, "
                  f"revision {view['applied']} applied")
    table = Table(title="instances")
    for col in ("instance", "admin API", "version", "config", "applied", "etcd"):
        table.add_column(col)
    for i in view["instances"]:
        table.add_row(i["name"], i.get("admin") or "", i.get("version") or "",
                      (i.get("config_digest") or "")[:12], str(i["applied"]),
                      "connected" if i["connected"] else "cut off")
    console.print(table)
    if view["config_digests_differ"]:
        console.print("the instances' configs differ in their pools, hosts or windows "
                      "(digests above)")
    for member, seen in view["disagreements"].items():
        console.print(f"{member}: " + ", ".join(f"{n} sees {v}" for n, v in seen.items()))
    for key in view["skipped_keys"]:
        console.print(f"skipped: {key}")


@main.command()
@click.argument("target")
@_FLEET_TIMEOUT
@click.option("--reason", default="", help="Kept in the target's history.")
@_LOCAL
@_admin_options
def ready(target: str, fleet_timeout: float, reason: str, local: bool,
          config_path: Path | None, admin_url: str | None, token: str | None) -> None:
    """Take TARGET back: clear the drain or maint an operator set (--local: the one set with
    --local)."""
    _set_state("ready", target, reason, config_path, admin_url, token, fleet_timeout,
               local)


def _time_arg(text: str) -> float:
    """"+10s" (from now), an ISO 8601 time with its offset, or epoch seconds."""
    import time

    from croupier.config import parse_duration
    from croupier.config.schema import parse_when
    try:
        if text.startswith("+"):
            return time.time() + parse_duration(text[1:])
        try:
            value: object = float(text)
        except ValueError:
            value = text
        return parse_when(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.argument("target")
@click.option("--start", required=True, help="+10m, an ISO 8601 time, or epoch seconds.")
@click.option("--end", default=None, help="+2h, an ISO 8601 time, or epoch seconds.")
@click.option("--duration", default=None, help="How long, instead of --end: \"2h\".")
@click.option("--lead", default="0s", show_default=True, help="Drain this long before --start.")
@click.option("--reason", default="")
@_admin_options
def schedule(target: str, start: str, end: str | None, duration: str | None, lead: str,
             reason: str, config_path: Path | None, admin_url: str | None,
             token: str | None) -> None:
    """Schedule a maintenance window for TARGET: drain --lead before --start, maint until
    --end, then back."""
    from croupier.config import parse_duration
    body: dict[str, object] = {"target": target, "start": _time_arg(start),
                               "lead": lead, "reason": reason}
    if (end is None) == (duration is None):
        raise click.UsageError("give exactly one of --end and --duration")
    if end is not None:
        body["end"] = _time_arg(end)
    else:
        assert duration is not None
        try:
            parse_duration(duration)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--duration") from None
        body["duration"] = duration
    w = _client(config_path, admin_url, token).call("POST", "/api/v1/schedules", body)
    click.echo(f"window {w['id']} for {w['target']}: {_when(w['start'])} to {_when(w['end'])}, "
               f"drain {w['lead']:g}s before ({w['status']})")


@main.command()
@_admin_options
def schedules(config_path: Path | None, admin_url: str | None, token: str | None) -> None:
    """List maintenance windows, soonest first."""
    for w in _client(config_path, admin_url, token).call("GET", "/api/v1/schedules"):
        click.echo(f"{w['id']} {w['target']}: {w['status']}, {_when(w['start'])} to "
                   f"{_when(w['end'])}, drain {w['lead']:g}s before ({w['origin']})")


@main.command()
@click.argument("window_id")
@_admin_options
def unschedule(window_id: str, config_path: Path | None, admin_url: str | None,
               token: str | None) -> None:
    """Cancel a maintenance window (the target goes back at once if it was in it)."""
    w = _client(config_path, admin_url, token).call("DELETE", f"/api/v1/schedules/{window_id}")
    click.echo(f"window {w['id']} for {w['target']} cancelled")


@main.group()
def members() -> None:
    """Add or remove pool members at run time (kept across restarts)."""


@members.command("add")
@click.argument("pool")
@click.argument("member")
@click.option("--weight", default=1, show_default=True, type=click.IntRange(0, 1000))
@_admin_options
def members_add(pool: str, member: str, weight: int, config_path: Path | None,
                admin_url: str | None, token: str | None) -> None:
    """Add MEMBER (address:port, or host-name:port) to POOL."""
    import ipaddress
    where, _, port = member.rpartition(":")
    if not where or not port.isdigit():
        raise click.BadParameter(f"{member!r}: expected address:port or host:port")
    try:
        ipaddress.ip_address(where.strip("[]"))
        body: dict[str, object] = {"address": where.strip("[]")}
    except ValueError:
        body = {"host": where}
    body |= {"port": int(port), "weight": weight}
    m = _client(config_path, admin_url, token).call("POST", f"/api/v1/pools/{pool}/members",
                                                    body)
    click.echo(f"added {m['pool']}/{m['name']} (health {m['health']}, weight {m['weight']})")


@members.command("remove")
@click.argument("target")
@_admin_options
def members_remove(target: str, config_path: Path | None, admin_url: str | None,
                   token: str | None) -> None:
    """Remove a member (pool/member); requests in flight on it finish."""
    pool, _, member = target.partition("/")
    if not member:
        raise click.BadParameter("expected pool/member")
    r = _client(config_path, admin_url, token).call(
        "DELETE", f"/api/v1/pools/{pool}/members/{member}")
    click.echo(f"removed {r['removed']} ({r['in_flight']} in flight finish)")


@main.command()
@click.argument("target")
@click.argument("weight", type=click.IntRange(0, 1000))
@_admin_options
def weight(target: str, weight: int, config_path: Path | None, admin_url: str | None,
           token: str | None) -> None:
    """Set the weight of a member (pool/member)."""
    pool, _, member = target.partition("/")
    if not member:
        raise click.BadParameter("expected pool/member")
    m = _client(config_path, admin_url, token).call(
        "PUT", f"/api/v1/pools/{pool}/members/{member}/weight", {"weight": weight})
    click.echo(f"{m['pool']}/{m['name']}: weight {m['weight']}")


@main.command("reopen-logs")
@_admin_options
def reopen_logs(config_path: Path | None, admin_url: str | None, token: str | None) -> None:
    """Open the access log files again, after logrotate moved them (as SIGUSR1 does)."""
    r = _client(config_path, admin_url, token).call("POST", "/api/v1/reopen-logs")
    click.echo(f"access logs reopened: {r['reopened']} file(s)")


@main.command()
@_admin_options
def reload(config_path: Path | None, admin_url: str | None, token: str | None) -> None:
    """Re-read the running instance's config file (as SIGHUP does)."""
    r = _client(config_path, admin_url, token).call("POST", "/api/v1/reload")
    if not r["reloaded"]:
        raise click.ClickException("reload refused, the running config stays:\n" +
                                   "\n".join(r["errors"]))
    click.echo(f"reloaded ({r['digest'][:12]}): {len(r['listeners'])} listener(s), "
               f"{len(r['pools'])} pool(s), {r['members']} member(s)"
               + (f", served by {len(r['workers'])} worker(s)" if r.get("workers") else ""))
    if r.get("needs_restart"):
        click.echo("changed but kept as they run until a restart: "
                   + ", ".join(f"[{s}]" for s in r["needs_restart"]), err=True)
