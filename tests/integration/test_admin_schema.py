"""Every admin API operation driven from its own OpenAPI description (schemathesis, over real
HTTP to croupier in-process): whatever the generated input, no answer is a 5xx, and every 2xx
answer is what its response model says. Derandomized and bounded: the same examples each run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from helpers import Croupier, write_config
from hypothesis import HealthCheck, given, settings


@pytest.fixture
def admin_api(tmp_path: Path) -> Iterator[tuple[Croupier, str]]:
    path = write_config(tmp_path, ["127.0.0.1:9", "127.0.0.1:10"],
                        hosts='[[hosts]]\nname = "rack1"\naddress = "127.0.0.1"')
    c = Croupier.from_file(path)
    yield c, (tmp_path / "admin.token").read_text().strip()
    c.close()


def test_no_operation_answers_a_server_error(admin_api):
    # Driven by hand rather than through schemathesis' pytest plugin, which does not run
    # under this pytest: each operation's strategy, through hypothesis, a fixed number of
    # examples.
    c, token = admin_api
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{c.balancer.admin_port}"
                                           "/openapi.json")
    # All but the dashboard's event stream, which never ends (tests/browser reads it).
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if op.path != "/api/v1/events"]
    assert len(operations) >= 12
    failures: list[str] = []
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=10)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r}: "
                                f"{response.status_code} {response.text[:300]}")
        call()
    assert not failures, "\n".join(failures[:10])
    assert len(calls) >= 10 * len(operations)          # it did call them, many times
    assert {200, 404, 422} <= set(calls), sorted(set(calls))


def test_docs_work_offline(admin_api):
    c, _ = admin_api
    base = f"http://127.0.0.1:{c.balancer.admin_port}"
    page = httpx.get(f"{base}/docs").text
    assert "cdn" not in page.lower()
    assets = [part.split('"')[0] for part in page.split('src="')[1:]]
    assets += [part.split('"')[0] for part in page.split('href="')[1:]]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), page
    for asset in assets:
        assert asset.startswith("/"), asset             # served by croupier itself
        r = httpx.get(base + asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
