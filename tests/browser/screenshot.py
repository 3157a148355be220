"""`make screenshot`: a picture of the dashboard during a drain, taken in the browser the tests
use, for the README.

    .venv/bin/python tests/browser/screenshot.py docs/dashboard.png

Three application instances on two hosts behind `croupier run`, under a steady load of quick
requests and a few slow ones; a maintenance window scheduled for later; then member b is
drained while slow requests are still in flight on it, and the page is taken as it shows the
drain under way (in flight falling) and the change in its list.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import CROUPIER, Backend, LoopThread, Running, free_port


def main(out: Path) -> None:
    lt = LoopThread()
    apps = [Backend(lt, name) for name in ("a", "b", "c")]
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port, admin = free_port(), free_port()
        members = ", ".join(
            f'{{ host = "{"rack1" if i < 2 else "rack2"}", port = {b.address.split(":")[1]} }}'
            for i, b in enumerate(apps))
        config = tmp / "croupier.toml"
        config.write_text(f"""workers = 1
[admin]
listen = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
pool = "classes"

[[hosts]]
name = "rack1"
address = "127.0.0.1"

[[hosts]]
name = "rack2"
address = "127.0.0.1"

[[pools]]
name = "classes"
members = [{members}]
  [pools.health]
  path = "/"
  interval = "1s"
""")
        lb = Running(config, port)
        token = (tmp / "admin.token").read_text().strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{admin}",
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)

        def load(path: str, pause: float) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    client.get(f"http://127.0.0.1:{port}{path}")
                    time.sleep(pause)
        threads = [threading.Thread(target=load, args=("/", 0.005), daemon=True)
                   for _ in range(4)]
        threads += [threading.Thread(target=load, args=("/slow?delay=6", 0), daemon=True)
                    for _ in range(6)]
        for t in threads:
            t.start()
        api.post("/api/v1/schedules", json={"target": "host:rack2", "start": time.time() + 1800,
                                             "duration": "1h", "reason": "kernel update"})
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1400,1100", "--hide-scrollbars"):
            options.add_argument(arg)
        options.binary_location = shutil.which("chromium") or "chromium"
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                   options=options)
        try:
            browser.get(f"http://127.0.0.1:{admin}/")
            time.sleep(20)          # twenty seconds of sparkline before the drain
            b_port = int(apps[1].address.split(":")[1])
            member = next(f"classes/{m['name']}" for m in api.get(
                "/api/v1/pools/classes").json()["members"] if m["port"] == b_port)
            subprocess.run([CROUPIER, "drain", member, "--reason", "deploy 4.2",
                            "-c", str(config)], check=True, capture_output=True)
            WebDriverWait(browser, 10).until(lambda d: "drain" in d.find_element(
                By.CSS_SELECTOR, f'tr[data-member="{member}"] td.admin').text)
            time.sleep(2)
            out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(out))
            print(f"wrote {out}")
        finally:
            browser.quit()
            stop.set()
            lb.stop()
            for b in apps:
                b.close()
            lt.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
