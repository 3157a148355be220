"""The CLI's side of the admin API: finding the instance, and calling it (httpx)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import click
import httpx


class AdminClient:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, method: str, path: str, json: Any = None) -> Any:
        """One call; any failure is one clear line (ClickException: exit 1), never a
        traceback: unreachable, not an admin API (no JSON), or the API's own refusal."""
        try:
            r = self.http.request(method, path, json=json)
        except httpx.HTTPError as e:
            raise click.ClickException(f"cannot reach the admin API at {self.url}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            raise click.ClickException(f"{self.url} answered {r.status_code} without JSON: is "
                                       f"it croupier's admin API?") from None
        if r.status_code >= 400:
            detail = body.get("detail", body) if isinstance(body, dict) else body
            if isinstance(detail, list):     # validation errors: each field and its problem
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                                   if isinstance(d, dict) else str(d) for d in detail)
            raise click.ClickException(f"{r.status_code}: {detail}")
        return body

    @staticmethod
    def target_path(target: str, suffix: str = "") -> str:
        return f"/api/v1/targets/{quote(target, safe='/:')}{suffix}"


def find_admin(config: Path | None, admin: str | None, token: str | None) -> AdminClient:
    """--admin/--token (or CROUPIER_ADMIN/CROUPIER_TOKEN), else the config's [admin].

    The config's token is sent only to the config's own admin address: it is the key to that
    one instance, and --admin may name any server. A token for another URL is given with
    --token or CROUPIER_TOKEN."""
    url = admin or os.environ.get("CROUPIER_ADMIN")
    tok = token or os.environ.get("CROUPIER_TOKEN")
    path = config or (Path("croupier.toml") if Path("croupier.toml").exists() else None)
    if (url is None or tok is None) and path is not None:
        try:
            data = tomllib.loads(path.read_text()).get("admin", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise click.ClickException(f"cannot read {path}: {e}") from None
        home = _with_scheme(data.get("listen", "127.0.0.1:9900"))
        url = url or home
        token_file = Path(data.get("token_file", "admin.token"))
        if not token_file.is_absolute():
            token_file = path.parent / token_file
        if tok is None and token_file.exists():
            if _origin(url) == _origin(home):
                tok = token_file.read_text().strip()
            else:
                click.echo(f"croupier: the admin token of {path} is not sent to {url}: it is "
                           f"the key to {home}. Give --token or CROUPIER_TOKEN for {url}.",
                           err=True)
    if url is None:
        raise click.ClickException("which croupier? give -c croupier.toml, --admin URL, or "
                                   "CROUPIER_ADMIN")
    return AdminClient(_with_scheme(url), tok)


def _with_scheme(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


def _origin(url: str) -> tuple[str, str, int | None]:
    """What makes two URLs the same server: scheme, host and port (80/443 when left out)."""
    parts = urlsplit(_with_scheme(url))
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
