"""The `croupier` command line (click)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from croupier.config import ConfigError, LoadedConfig, load_config


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
def run(config_path: Path, log_level: str) -> None:
    """Serve the listeners of a config until SIGTERM or Ctrl-C."""
    loaded = _load(config_path)
    _setup_logging(log_level)
    from croupier.runtime.server import run as serve
    try:
        serve(loaded)
    except OSError as e:
        click.echo(f"croupier: {e.strerror or e}", err=True)
        sys.exit(1)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
              default=Path("croupier.toml"), show_default=True, help="The TOML config.")
def check(config_path: Path) -> None:
    """Validate a config and print what it would serve; exit 0 if valid, 1 if not."""
    loaded = _load(config_path)
    config = loaded.config
    click.echo(f"{config_path}: valid")
    for lst in config.listeners:
        click.echo(f"listener {lst.name}: {lst.listen} ({lst.mode}) -> pool {lst.pool}")
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
def demo(port: int, app_port: int, instances: int) -> None:
    """Start demo application instances and a proxy listener in front of them."""
    _setup_logging("info")
    from croupier.demo import run_demo
    run_demo(port, app_port, instances)


@main.command("demo-app", hidden=True)
@click.option("--name", required=True)
@click.option("--port", required=True, type=int)
def demo_app(name: str, port: int) -> None:
    """One demo application instance (started by `croupier demo`)."""
    from croupier.demo import serve_app
    serve_app(name, port)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
