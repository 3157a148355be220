"""One headless Chromium (Debian's chromium, driven by chromium-driver through selenium) for
the whole session: starting a browser takes longer than most tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver: bash tests/install.sh"
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The session's browser, on a blank page with no token kept, for one test."""
    yield browser
    browser.get("about:blank")
    browser.get_log("browser")                  # what this test left is not the next one's
