"""The CLI's side of the admin API: finding the instance, and calling it (httpx)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx


class AdminClient:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = self.http.request(method, path, json=json)
        except httpx.HTTPError as e:
            raise click.ClickException(f"cannot reach the admin API at {self.url}: {e}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if isinstance(detail, list):     # FastAPI's validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                                   for d in detail)
            raise click.ClickException(f"{r.status_code}: {detail}")
        return r.json()

    @staticmethod
    def target_path(target: str, suffix: str = "") -> str:
        return f"/api/v1/targets/{quote(target, safe='/:')}{suffix}"


def find_admin(config: Path | None, admin: str | None, token: str | None) -> AdminClient:
    """--admin/--token, then CROUPIER_ADMIN/CROUPIER_TOKEN, then the config's [admin]."""
    url = admin or os.environ.get("CROUPIER_ADMIN")
    tok = token or os.environ.get("CROUPIER_TOKEN")
    path = config or (Path("croupier.toml") if Path("croupier.toml").exists() else None)
    if (url is None or tok is None) and path is not None:
        try:
            data = tomllib.loads(path.read_text()).get("admin", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise click.ClickException(f"cannot read {path}: {e}") from None
        listen = data.get("listen", "127.0.0.1:9900")
        url = url or f"http://{listen}"
        if tok is None:
            token_file = Path(data.get("token_file", "admin.token"))
            if not token_file.is_absolute():
                token_file = path.parent / token_file
            if token_file.exists():
                tok = token_file.read_text().strip()
    if url is None:
        raise click.ClickException("which croupier? give -c croupier.toml, --admin URL, or "
                                   "CROUPIER_ADMIN")
    if not url.startswith("http"):
        url = f"http://{url}"
    return AdminClient(url, tok)
