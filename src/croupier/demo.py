"""`croupier demo`: a few demo application instances and a proxy listener in front of them.

Each demo instance is its own process (so you can kill one and watch the others carry on),
serving a tiny "classes" application that says which instance answered.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from croupier.runtime.sockets import probe


def make_app(name: str) -> web.Application:
    async def classes(request: web.Request) -> web.Response:
        return web.Response(text=f"classes from {name}\n")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", classes)
    return app


def serve_app(name: str, port: int) -> None:
    """Run one demo application instance on 127.0.0.1:port until killed."""
    web.run_app(make_app(name), host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=True)


DEMO_CONFIG = """\
# The demo: three instances of the "classes" application behind one proxy listener.
# One worker, so that even separate curls see one strict rotation.
workers = 1

[admin]
listen = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
listen = "127.0.0.1:{listen}"
mode = "proxy"
pool = "classes"

# The same over HTTPS, with a self-signed certificate made when the demo started.
[[listeners]]
name = "web-tls"
listen = "127.0.0.1:{tls_listen}"
pool = "classes"
  [listeners.tls]
  certificates = [{{ cert = "demo.pem", key = "demo.key" }}]

[[hosts]]
name = "local"
address = "127.0.0.1"

[[pools]]
name = "classes"
algorithm = "round_robin"
members = [{members}]
  [pools.health]
  path = "/healthz"
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 2
"""


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for localhost and 127.0.0.1, valid for a week: what
    curl --cacert trusts for the demo."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "croupier demo")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "demo.pem", folder / "demo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _wait_for_port(port: int, timeout: float = 10.0) -> bool:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def run_demo(listen_port: int, first_app_port: int, instances: int, admin_port: int,
             tls_port: int = 8443) -> None:
    from croupier.config import load_config
    from croupier.runtime.app import run

    ports = [first_app_port + i for i in range(instances)]
    # Every port first: a demo instance that cannot bind would leave croupier proxying to
    # whatever already listens there.
    wanted = [(listen_port, "the demo listener", "--port"),
              (tls_port, "the demo's HTTPS listener", "--tls-port"),
              (admin_port, "the admin API", "--admin-port"),
              *((p, f"demo instance {i + 1}", "--app-port") for i, p in enumerate(ports))]
    for port, what, option in wanted:
        try:
            probe(f"127.0.0.1:{port}", what)
        except OSError as e:
            raise SystemExit(f"croupier demo: {e.strerror}; another process has it (choose "
                             f"another with {option})") from None
    procs = []
    for i, port in enumerate(ports):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "croupier", "demo-app", "--name", f"instance-{i + 1}",
             "--port", str(port)]))
    try:
        for port in ports:
            if not _wait_for_port(port):
                raise SystemExit(f"demo instance on port {port} did not start")
        members = ", ".join(f'"local:{p}"' for p in ports)
        folder = Path(tempfile.mkdtemp(prefix="croupier-demo-"))
        path = folder / "croupier.toml"
        cert, _ = self_signed(folder)
        path.write_text(DEMO_CONFIG.format(listen=listen_port, members=members,
                                           admin=admin_port, tls_listen=tls_port))
        print(f"croupier demo: {instances} instances of 'classes' on ports "
              f"{', '.join(map(str, ports))}, pids {', '.join(str(p.pid) for p in procs)}")
        print(f"config: {path}")
        print("try:")
        print(f"  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:{listen_port}/get-classes; "
              "done")
        print(f"  curl --cacert {cert} https://localhost:{tls_port}/get-classes   # HTTPS")
        print(f"  kill {procs[0].pid}   # then curl again: the others carry on")
        print(f"  open http://127.0.0.1:{admin_port}/   # the dashboard (token: "
              f"{folder / 'admin.token'}, once croupier wrote it)")
        print(f"  croupier status -c {path}")
        print(f"  croupier drain local:{ports[1]} --wait -c {path}   # planned maintenance")
        print(f"  croupier ready local:{ports[1]} -c {path}")
        print("Ctrl-C stops the demo.", flush=True)
        try:
            run(load_config(path))
        except OSError as e:
            raise SystemExit(f"croupier demo: {e.strerror or e}") from None
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
