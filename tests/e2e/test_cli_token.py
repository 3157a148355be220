"""The CLI sends the admin token only where it belongs: a stranger's server given as --admin
records what reaches it."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator

import pytest
from helpers import CROUPIER, write_config


class Recorder(http.server.BaseHTTPRequestHandler):
    """A stranger's HTTP server: records the Authorization of every request it gets."""

    seen: list[str | None] = []

    def _answer(self) -> None:
        Recorder.seen.append(self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"target": "x", "host": null, "members": [], "drained": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[str]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CROUPIER_")}
    return subprocess.run([CROUPIER, *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def test_the_cli_sends_the_config_token_only_to_that_configs_admin_api(stranger, tmp_path):
    path = write_config(tmp_path, ["127.0.0.1:9"])
    (tmp_path / "admin.token").write_text("the-secret-token\n")
    # Pointed elsewhere, by flag or by environment: the config's token stays home.
    _cli("drain", "app/127.0.0.1:9", "-c", str(path), "--admin", stranger)
    _cli("drain", "app/127.0.0.1:9", "-c", str(path), env={"CROUPIER_ADMIN": stranger})
    _cli("status", "-c", str(path), "--admin", stranger)
    assert len(Recorder.seen) >= 3
    assert Recorder.seen == [None] * len(Recorder.seen)
    # A token given for that URL, by flag or environment, is the caller's choice: it is sent.
    Recorder.seen = []
    _cli("drain", "app/127.0.0.1:9", "--admin", stranger, "--token", "given")
    _cli("drain", "app/127.0.0.1:9", env={"CROUPIER_ADMIN": stranger,
                                         "CROUPIER_TOKEN": "given-too"})
    assert Recorder.seen == ["Bearer given", "Bearer given-too"]


def test_without_a_token_the_cli_says_how_to_give_one(stranger, tmp_path):
    path = write_config(tmp_path, ["127.0.0.1:9"])
    (tmp_path / "admin.token").write_text("the-secret-token\n")
    r = _cli("drain", "app/127.0.0.1:9", "-c", str(path), "--admin", stranger)
    assert "not sent" in r.stderr and "--token" in r.stderr, r.stderr


class Html(http.server.BaseHTTPRequestHandler):
    """Some other web server: HTML, whatever is asked."""

    def do_GET(self) -> None:
        body = b"<html><body>" + b"<p>not an admin API</p>" * 200 + b"</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_the_cli_says_in_one_line_when_its_target_is_no_admin_api(tmp_path):
    from helpers import dead_port
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with dead_port() as closed:
            cases = {f"http://127.0.0.1:{server.server_address[1]}": "without JSON",
                     f"http://127.0.0.1:{closed}": "cannot reach the admin API"}
            for url, words in cases.items():
                for args in (["status"], ["drain", "app/x", "--token", "t"], ["reload"]):
                    r = _cli(*args, "--admin", url)
                    assert r.returncode == 1, (args, r.stderr)
                    lines = r.stderr.strip().splitlines()
                    assert len(lines) == 1 and words in lines[0], (args, r.stderr)
                    assert "Traceback" not in r.stderr and "<html>" not in r.stderr
    finally:
        server.shutdown()
        server.server_close()
