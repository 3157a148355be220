"""The dashboard in a real browser (headless Chromium) against `croupier run` with real
backends: it lists every member, follows changes made elsewhere within two seconds, acts with
the token and is refused without it, sees a killed backend go down, and survives a restart."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CROUPIER, FAST_HEALTH, ProcBackend, Running, free_port, write_config
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


class Instance:
    """One croupier instance as a user runs it (`croupier run`), its admin URL and token."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.run = Running(path, port)
        self.admin = "http://" + tomllib.loads(path.read_text())["admin"]["listen"]
        self.token = (path.parent / "admin.token").read_text().strip()

    def member(self, key: str) -> dict[str, Any]:
        pool, _, name = key.partition("/")
        members = httpx.get(f"{self.admin}/api/v1/pools/{pool}", timeout=5).json()["members"]
        return next(m for m in members if m["name"] == name)

    def restart(self) -> None:
        code, out = self.run.stop()
        assert code == 0, out[-2000:]
        self.run = Running(self.path, self.port)


@pytest.fixture
def apps() -> Iterator[list[ProcBackend]]:
    started = [ProcBackend(name) for name in ("a", "b")]
    yield started
    for b in started:
        b.close()


@pytest.fixture
def lb(tmp_path: Path, apps: list[ProcBackend]) -> Iterator[Instance]:
    port = free_port()
    path = write_config(tmp_path, [b.address for b in apps], port=port, top="workers = 1",
                        pool_extra=FAST_HEALTH)
    r = Instance(path, port)
    yield r
    if r.run.proc.poll() is None:
        r.run.stop()


def wait(page: Any, predicate: Any, timeout: float = 5.0, message: str = "") -> Any:
    def attempt(d: Any) -> Any:
        try:
            return predicate(d)
        except StaleElementReferenceException:      # re-rendered meanwhile: look again
            return False
    return WebDriverWait(page, timeout, poll_frequency=0.05).until(attempt, message)


def cell(page: Any, key: str, which: str) -> str:
    return str(page.find_element(By.CSS_SELECTOR, f'tr[data-member="{key}"] td.{which}').text)


def button(page: Any, target: str, action: str) -> Any:
    return page.find_element(By.CSS_SELECTOR,
                             f'button[data-target="{target}"][data-action="{action}"]')


def message(page: Any) -> str:
    return str(page.find_element(By.ID, "message").text)


def opened(page: Any, lb: Instance) -> None:
    page.get(lb.admin + "/")
    wait(page, lambda d: "live" in d.find_element(By.ID, "connection").text,
         message="the page's first frame")


def use_token(page: Any, token: str) -> None:
    page.find_element(By.ID, "token").send_keys(token)
    page.find_element(By.ID, "token-save").click()
    wait(page, lambda d: "admin token set" in d.find_element(By.ID, "token-state").text)


def test_the_page_loads_clean_and_lists_every_member(page, lb, apps):
    opened(page, lb)
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    rows = page.find_elements(By.CSS_SELECTOR, "tr[data-member]")
    assert sorted(r.get_attribute("data-member") for r in rows) == sorted(
        f"app/{b.address}" for b in apps)
    # Up once its first check passed (unknown until then, shown as such).
    wait(page, lambda d: "▲ up" in cell(d, f"app/{apps[0].address}", "health"),
         message="the member's first check shown")
    assert "read-only" in page.find_element(By.ID, "token-state").text


def test_a_drain_made_with_the_cli_shows_within_two_seconds(page, lb, apps):
    opened(page, lb)
    key = f"app/{apps[0].address}"
    r = subprocess.run([CROUPIER, "drain", key, "-c", str(lb.path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    wait(page, lambda d: "drain" in cell(d, key, "admin"), timeout=2.0,
         message="the drain shown")
    assert "api: drain" in cell(page, key, "admin")             # with its origin
    changes = page.find_element(By.ID, "changes").text
    assert key in changes and "drain by api" in changes


def test_buttons_act_with_the_token_and_are_refused_without_it(page, lb, apps):
    opened(page, lb)
    key = f"app/{apps[1].address}"
    button(page, key, "drain").click()
    wait(page, lambda d: "401" in message(d), message="the refusal")
    assert "needs the admin token" in message(page)
    assert lb.member(key)["admin_state"] == "ready"            # nothing changed
    use_token(page, lb.token)
    button(page, key, "drain").click()
    wait(page, lambda d: "drain" in cell(d, key, "admin"), message="drained")
    assert lb.member(key)["admin_state"] == "drain"            # the admin API confirms
    wait(page, lambda d: "safe to stop" in d.find_element(
        By.CSS_SELECTOR, f'[data-progress="{key}"]').text, message="drain --wait's progress")
    button(page, key, "ready").click()
    wait(page, lambda d: "ready" in cell(d, key, "admin"), message="ready again")
    assert lb.member(key)["admin_state"] == "ready"


def test_a_killed_backend_shows_as_down_within_its_check_interval(page, lb, apps):
    opened(page, lb)
    key = f"app/{apps[0].address}"
    apps[0].kill()
    # interval 200 ms, fall 1, timeout 500 ms: down within a second, shown within the next.
    wait(page, lambda d: "down" in cell(d, key, "health"), timeout=2.5,
         message="the member shown down")
    wait(page, lambda d: "▲ up" in cell(d, f"app/{apps[1].address}", "health"),
         message="the other still up")


def test_the_page_survives_a_restart_and_says_so_meanwhile(page, lb, apps):
    opened(page, lb)
    lb.run.stop()
    wait(page, lambda d: "does not answer" in d.find_element(By.ID, "connection").text,
         message="the page to say croupier is gone")
    lb.restart()
    wait(page, lambda d: "live" in d.find_element(By.ID, "connection").text, timeout=10,
         message="the page to reconnect")
    assert len(page.find_elements(By.CSS_SELECTOR, "tr[data-member]")) == len(apps)


def test_weights_and_windows_from_the_page(page, lb, apps):
    opened(page, lb)
    use_token(page, lb.token)
    key = f"app/{apps[0].address}"
    box = page.find_element(By.CSS_SELECTOR, f'tr[data-member="{key}"] input.weight')
    box.send_keys("7")
    box.submit()
    wait(page, lambda d: lb.member(key)["weight"] == 7, message="the weight set")
    form = page.find_element(By.CSS_SELECTOR, "form.schedule")
    Select(form.find_element(By.TAG_NAME, "select")).select_by_visible_text(key)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-window]"),
         message="the window listed")
    wait(page, lambda d: "maint" in cell(d, key, "admin"), message="the window in force")
    page.find_element(By.CSS_SELECTOR, "tr[data-window] button").click()
    wait(page, lambda d: not d.find_elements(By.CSS_SELECTOR, "tr[data-window]"),
         message="the window cancelled")
    assert httpx.get(f"{lb.admin}/api/v1/schedules", timeout=5).json() == []


def test_a_foreign_host_is_refused(lb):
    ok = httpx.get(f"{lb.admin}/", timeout=5)
    assert ok.status_code == 200 and "dashboard.js" in ok.text
    for host in ("evil.example", "attacker.example:80"):
        refused = httpx.get(f"{lb.admin}/api/v1/status", headers={"Host": host}, timeout=5)
        assert refused.status_code == 400, host


def test_with_a_fleet_the_page_lists_its_instances(page, tmp_path: Path, apps, etcd):
    port = free_port()
    path = write_config(tmp_path, [b.address for b in apps], port=port, top="workers = 1")
    path.write_text(path.read_text() + f'\n[cluster]\netcd = ["{etcd.url}"]\n'
                    f'prefix = "/test/{tmp_path.name}"\ninstance = "lb-page"\n'
                    f'lease_ttl = "2s"\n')
    lb = Instance(path, port)
    try:
        opened(page, lb)
        wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-instance="lb-page"]'),
             message="the instance listed")
        fleet = page.find_element(By.ID, "fleet").text
        assert "this is lb-page" in fleet and "connected to etcd" in fleet
        assert "2 of 2" in fleet                    # its view: both members up
    finally:
        lb.run.stop()
