"""TLS listeners: real handshakes over 127.0.0.1 with certificates made at test time (trustme,
ECDSA), croupier in-process, real members behind it."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers import proxy_config, read_response, ws_echoes

from croupier.config.load import ConfigError, validate_config


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA file and two certificates: a.test (the default) and *.b.test."""
    d = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for name, hosts in (("a", ["a.test"]), ("b", ["*.b.test"])):
        cert = ca.issue_cert(*hosts, key_type=trustme.KeyType.ECDSA)
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        (d / f"{name}.key").chmod(0o600)
    return {p.stem + p.suffix: p for p in d.iterdir()}


def tls_config(members: list[str], pki: dict[str, Path], **tls: Any) -> dict[str, Any]:
    config = proxy_config(members)
    config["listeners"][0]["tls"] = {
        "certificates": [{"cert": str(pki["a.pem"]), "key": str(pki["a.key"])},
                         {"cert": str(pki["b.pem"]), "key": str(pki["b.key"])}],
        **tls}
    return config


def client_context(pki: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def served_names(port: int, pki: dict[str, Path], server_name: str | None) -> list[str]:
    """The DNS names of the certificate croupier presents for `server_name` (None: no SNI)."""
    ctx = client_context(pki)
    if server_name is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as s:
        cert = s.getpeercert()
        assert cert is not None
        assert s.selected_alpn_protocol() == "http/1.1", "only what is served is offered"
        return [v for k, v in cert["subjectAltName"] if k == "DNS"]


@pytest.mark.parametrize("server_name, names", [
    ("a.test", ["a.test"]),
    ("x.b.test", ["*.b.test"]),
    ("X.B.Test", ["*.b.test"]),
])
def test_the_certificate_is_chosen_by_the_name_asked_for(backends, croupier, pki, server_name,
                                                         names):
    c = croupier(tls_config([backends[0].address], pki))
    assert served_names(c.port, pki, server_name) == names


def test_no_name_or_an_unknown_one_gets_the_first_certificate(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki))
    assert served_names(c.port, pki, None) == ["a.test"]
    with pytest.raises(ssl.SSLCertVerificationError):      # the default, not a match
        served_names(c.port, pki, "other.test")


def test_a_request_over_tls_reaches_the_member_as_https(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki))
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as s:
        for _ in range(2):                                  # kept alive under TLS
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a.test\r\n"
                      b"X-Forwarded-Proto: gopher\r\n\r\n")   # forged: replaced
            buf = bytearray()
            status, _, body = read_response(s, buf)
            assert status == 200
            headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
            assert headers["x-forwarded-proto"] == "https"
    assert backends[0].requests == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_the_ca_gets_the_page(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki))
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(pki["ca.pem"]), "--resolve",
         f"a.test:{c.port}:127.0.0.1", f"https://a.test:{c.port}/"],
        capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == backends[0].name


def test_plain_http_to_the_tls_port_is_closed_and_serving_goes_on(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got.startswith(b"HTTP/1.1 400 "), got     # a plain answer, as nginx gives
    assert b"plain HTTP was sent to an HTTPS port" in got
    assert served_names(c.port, pki, "a.test") == ["a.test"]
    assert c.lt.call(c.balancer.tls_failures) == {"plain HTTP": 1}
    assert backends[0].requests == 0


def test_a_stalled_handshake_is_cut_at_its_timeout(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki, handshake_timeout="0.3s"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        began = time.monotonic()
        assert s.recv(1) == b""                     # closed by croupier, not by our timeout
        assert time.monotonic() - began < 9
    assert c.lt.call(c.balancer.tls_failures) == {"timeout": 1}


def test_tls_1_3_only_refuses_a_1_2_client(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki, min_version="1.3"))
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="a.test")
    assert served_names(c.port, pki, "a.test") == ["a.test"]


# ---- what check refuses -------------------------------------------------------------------

def _problems(config: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    return e.value.problems


def test_check_names_a_missing_key(pki, tmp_path):
    config = tls_config(["127.0.0.1:9"], pki)
    config["listeners"][0]["tls"]["certificates"][1]["key"] = str(tmp_path / "gone.key")
    [(key, reason)] = _problems(config)
    assert key == "listeners[0] (web).tls.certificates[1].key"
    assert "gone.key" in reason and "No such file" in reason


def test_check_names_a_key_that_is_not_the_certificates(pki):
    config = tls_config(["127.0.0.1:9"], pki)
    config["listeners"][0]["tls"]["certificates"][0]["key"] = str(pki["b.key"])
    [(key, reason)] = _problems(config)
    assert key == "listeners[0] (web).tls.certificates[0].key"
    assert "does not match the certificate" in reason and "a.pem" in reason


def test_check_names_a_chain_out_of_order(ca, pki, tmp_path):
    leaf = ca.create_child_ca().issue_cert("c.test")
    pems = [p.bytes() for p in leaf.cert_chain_pems]
    assert len(pems) == 2                                   # leaf, intermediate
    (tmp_path / "c.pem").write_bytes(pems[0] + ca.cert_pem.bytes() + pems[1])   # root early
    leaf.private_key_pem.write_to_path(str(tmp_path / "c.key"))
    config = tls_config(["127.0.0.1:9"], pki)
    config["listeners"][0]["tls"]["certificates"][0] = {"cert": str(tmp_path / "c.pem"),
                                                        "key": str(tmp_path / "c.key")}
    [(key, reason)] = _problems(config)
    assert key == "listeners[0] (web).tls.certificates[0].cert"
    assert "out of order" in reason


def test_check_refuses_a_file_that_is_no_certificate(pki, tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    config = tls_config(["127.0.0.1:9"], pki)
    config["listeners"][0]["tls"]["certificates"][0]["cert"] = str(tmp_path / "junk.pem")
    [(key, reason)] = _problems(config)
    assert key.endswith(".cert") and "no PEM certificate" in reason


# ---- renewal ------------------------------------------------------------------------------

def _serial(port: int, pki: dict[str, Path]) -> int:
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_served_after_a_reload_and_a_bad_one_is_refused(
        backends, ca, pki, tmp_path):
    from helpers import Croupier, write_config

    for name in ("a.pem", "a.key", "b.pem", "b.key"):
        shutil.copy(pki[name], tmp_path / name)
    (tmp_path / "a.key").chmod(0o600)
    path = write_config(tmp_path, [backends[0].address], listener_extra=(
        '  [listeners.tls]\n'
        '  certificates = [{ cert = "a.pem", key = "a.key" },\n'
        '                  { cert = "b.pem", key = "b.key" }]\n'))
    c = Croupier.from_file(path)
    try:
        port = c.port
        first = _serial(port, pki)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_context(pki).wrap_socket(raw, server_hostname="a.test") as open_conn:
            renewed = ca.issue_cert("a.test", key_type=trustme.KeyType.ECDSA)
            renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
            renewed.private_key_pem.write_to_path(str(tmp_path / "a.key"))
            assert c.lt.run(c.balancer.reload())["reloaded"] is True
            second = _serial(port, pki)
            assert second != first
            # the connection made before the reload goes on
            open_conn.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            status, _, _ = read_response(open_conn, bytearray())
            assert status == 200
        (tmp_path / "a.key").write_text("broken\n")
        result = c.lt.run(c.balancer.reload())
        assert result["reloaded"] is False
        assert any("a.key" in e for e in result["errors"]), result
        assert _serial(port, pki) == second, "a renewal that does not load keeps the old one"
    finally:
        c.close()


def test_the_access_log_says_how_each_connection_was_encrypted(backends, croupier, pki,
                                                               tmp_path):
    config = tls_config([backends[0].address], pki)
    config["access_log"] = {"path": str(tmp_path / "access.log"), "format": "json"}
    c = croupier(config)
    ctx = client_context(pki)
    for name in ("x.b.test", None):
        if name is None:
            ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", c.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            status, _, _ = read_response(s, bytearray())
            assert status == 200
            version, cipher = s.version(), s.cipher()
    from helpers import wait_until

    def lines() -> list[dict[str, Any]]:
        c.lt.call(lambda: [lg.flush() for lg in c.balancer.access_logs.values()])
        path = tmp_path / "access.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    wait_until(lambda: len(lines()) == 2, message="two access log lines")
    first, second = lines()
    assert (first["sni"], second["sni"]) == ("x.b.test", "")
    assert second["tls_version"] == version and second["tls_cipher"] == cipher[0]
    assert first["termination"] == second["termination"] == "--"


def test_a_client_resumes_its_session_on_a_new_connection(backends, croupier, pki):
    c = croupier(tls_config([backends[0].address], pki))
    from helpers import resumed_chain

    resumed, _ = resumed_chain(c.port, client_context(pki), "a.test", None, 4)
    assert resumed == [False, True, True, True]


# ---- client certificates (mutual TLS) ------------------------------------------------------

@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    path = tmp_path_factory.mktemp("clients") / "clients.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _with_client_cert(pki: dict[str, Path], issuer: trustme.CA | None,
                      tmp_path: Path) -> tuple[ssl.SSLContext, bytes]:
    ctx = client_context(pki)
    if issuer is None:
        return ctx, b""
    cert = issuer.issue_cert("client@example.test", key_type=trustme.KeyType.ECDSA)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    return ctx, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def _echo_over(port: int, ctx: ssl.SSLContext, extra: bytes = b"") -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a.test\r\n" + extra + b"\r\n")
        status, _, body = read_response(s, bytearray())
        assert status == 200
        return {k.lower(): v for k, v in json.loads(body)["headers"]}


def test_a_client_certificate_reaches_the_member_as_client_cert(backends, croupier, pki,
                                                                 client_ca, tmp_path):
    import base64

    c = croupier(tls_config([backends[0].address], pki, client_ca=str(client_ca[1])))
    ctx, der = _with_client_cert(pki, client_ca[0], tmp_path)
    headers = _echo_over(c.port, ctx, b"Client-Cert: :Zm9yZ2Vk:\r\nClient-Cert-Chain: :eA==:\r\n")
    assert headers["client-cert"] == ":" + base64.b64encode(der).decode() + ":"
    assert "client-cert-chain" not in headers, "a forged chain field went through"


@pytest.mark.parametrize("issuer", ["none", "another CA"])
def test_without_a_good_client_certificate_there_is_no_connection(backends, croupier, pki,
                                                                  client_ca, tmp_path, issuer):
    c = croupier(tls_config([backends[0].address], pki, client_ca=str(client_ca[1])))
    other = trustme.CA(key_type=trustme.KeyType.ECDSA) if issuer == "another CA" else None
    ctx, _ = _with_client_cert(pki, other, tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _echo_over(c.port, ctx)         # TLS 1.3: the refusal comes with the first read
    assert backends[0].requests == 0
    from helpers import wait_until
    reason = ("PEER_DID_NOT_RETURN_A_CERTIFICATE" if issuer == "none"
              else "CERTIFICATE_VERIFY_FAILED")
    wait_until(lambda: c.lt.call(c.balancer.tls_failures) == {reason: 1},
               message=f"a failed handshake counted as {reason}")


def test_optional_client_certificates_let_others_in_without_one(backends, croupier, pki,
                                                                client_ca, tmp_path):
    c = croupier(tls_config([backends[0].address], pki, client_ca=str(client_ca[1]),
                            client_verify="optional"))
    headers = _echo_over(c.port, client_context(pki), b"Client-Cert: :Zm9yZ2Vk:\r\n")
    assert "client-cert" not in headers, "a forged Client-Cert went through"
    ctx, _ = _with_client_cert(pki, client_ca[0], tmp_path)
    assert "client-cert" in _echo_over(c.port, ctx)


def test_check_names_a_client_ca_that_is_not_one(pki, tmp_path):
    (tmp_path / "junk.pem").write_text("not a CA\n")
    config = tls_config(["127.0.0.1:9"], pki, client_ca=str(tmp_path / "junk.pem"))
    [(key, reason)] = _problems(config)
    assert key == "listeners[0] (web).tls.client_ca" and "junk.pem" in reason


# ---- plain to TLS -----------------------------------------------------------------------------

def test_a_plain_listener_redirects_to_the_tls_one(backends, croupier, pki):
    from helpers import free_port, raw_request

    config = tls_config([backends[0].address], pki)
    tls_port = free_port()
    config["listeners"][0]["listen"] = f"127.0.0.1:{tls_port}"
    config["listeners"].append({"name": "plain", "listen": f"127.0.0.1:{free_port()}",
                                "pool": "app", "redirect_to_https": "web"})
    c = croupier(config)
    got = raw_request(c.ports["plain"], b"POST /x?a=1 HTTP/1.1\r\nHost: a.test:8080\r\n"
                                        b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    head = got.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 308 ")
    assert f"\r\nLocation: https://a.test:{tls_port}/x?a=1" in head
    assert backends[0].requests == 0
    # and the place it points to answers
    assert served_names(tls_port, pki, "a.test") == ["a.test"]


@pytest.mark.parametrize("change, reason", [
    ({"redirect_to_https": "nowhere"}, "no listener named 'nowhere'"),
    ({"redirect_to_https": "web"}, "a TLS listener has nothing to redirect"),
])
def test_check_refuses_a_redirect_to_https_that_cannot_work(pki, change, reason):
    config = tls_config(["127.0.0.1:9"], pki)
    config["listeners"][0].update(change)
    assert any(key == "listeners[0] (web).redirect_to_https" and reason in got
               for key, got in _problems(config))


def test_check_refuses_a_redirect_to_a_plain_listener():
    config = proxy_config(["127.0.0.1:9"])
    config["listeners"].append({"name": "other", "listen": "127.0.0.1:8", "pool": "app",
                                "redirect_to_https": "web"})
    [(key, got)] = _problems(config)
    assert key == "listeners[1] (other).redirect_to_https" and "has no [listeners.tls]" in got


def test_hsts_on_every_response_of_the_tls_listener_the_members_own_replaced(
        backend_loop, croupier, pki):
    from helpers import RawBackend

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5\r\n"
                     b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    raw = RawBackend(backend_loop, answer)
    c = croupier(tls_config([raw.address], pki, hsts="max-age=31536000; includeSubDomains"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as sock, \
            client_context(pki).wrap_socket(sock, server_hostname="a.test") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        got = b""
        while not got.endswith(b"ok"):
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    head = got.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert head.count(b"strict-transport-security") == 1, head
    assert b"\r\nstrict-transport-security: max-age=31536000; includesubdomains" in head


def test_hsts_on_croupiers_own_answers_too(croupier, pki):
    from helpers import dead_port

    with dead_port() as port:
        c = croupier(tls_config([f"127.0.0.1:{port}"], pki, hsts="max-age=600"))
        for request, status in ((b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", b"502"),
                                (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n", b"405")):
            with socket.create_connection(("127.0.0.1", c.port), timeout=5) as sock, \
                    client_context(pki).wrap_socket(sock, server_hostname="a.test") as s:
                s.sendall(request)
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = s.recv(4096)
                    assert chunk, got
                    got += chunk
            head = got.split(b"\r\n\r\n")[0]
            assert head.startswith(b"HTTP/1.1 " + status), head
            assert b"\r\nStrict-Transport-Security: max-age=600\r\n" in head + b"\r\n", head


def test_the_certificates_expiry_is_a_metric(backends, pki, tmp_path):
    import httpx
    from helpers import Croupier, write_config

    from croupier.config.certificates import certificate_end

    path = write_config(tmp_path, [backends[0].address], listener_extra=(
        "  [listeners.tls]\n"
        f'  certificates = [{{ cert = "{pki["a.pem"]}", key = "{pki["a.key"]}" }}]\n'))
    c = Croupier.from_file(path)
    try:
        text = httpx.get(f"http://127.0.0.1:{c.balancer.admin_port}/metrics").text
    finally:
        c.close()
    series = (f'croupier_tls_certificate_expiry_timestamp_seconds{{certificate="{pki["a.pem"]}",'
              f'listener="web"}} ')
    [line] = [x for x in text.splitlines() if x.startswith(series)]
    assert float(line[len(series):]) == certificate_end(pki["a.pem"]).timestamp()


def test_a_websocket_tunnel_over_tls(backends, croupier, backend_loop, pki):
    import aiohttp

    c = croupier(tls_config([backends[0].address], pki))
    ctx = client_context(pki)
    ctx.set_alpn_protocols(["http/1.1"])

    async def talk() -> list[str]:
        connector = aiohttp.TCPConnector(ssl=ctx, resolver=_Local())
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.ws_connect(f"wss://a.test:{c.port}/ws") as ws:
            return await ws_echoes(ws)
    assert backend_loop.run(talk()) == ["a: one", "a: two", "a: three"]


class _Local:
    """Every name is 127.0.0.1 (the certificate's names, croupier's address)."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


# ---- PROXY protocol -----------------------------------------------------------------------------

def _proxied_config(members: list[str], trusted: str, log: Path, **listener: Any
                    ) -> dict[str, Any]:
    config = proxy_config(members, proxy_protocol=True, trusted_proxies=[trusted], **listener)
    config["access_log"] = {"path": str(log), "format": "json"}
    return config


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 10, 0, 0, 1])
    + (51234).to_bytes(2, "big") + (443).to_bytes(2, "big"),
], ids=["v1", "v2"])
def test_a_proxy_header_from_a_trusted_balancer_names_the_client(backends, croupier, tmp_path,
                                                                 header):
    c = croupier(_proxied_config([backends[0].address], "127.0.0.1", tmp_path / "a.log"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(header + b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(s, bytearray())
    assert status == 200
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.7"
    c.lt.call(lambda: [lg.flush() for lg in c.balancer.access_logs.values()])
    [line] = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert (line["client"], line["client_port"]) == ("203.0.113.7", 51234)


def test_a_proxy_header_from_anyone_else_gets_no_answer(backends, croupier, tmp_path):
    c = croupier(_proxied_config([backends[0].address], "10.9.9.9", tmp_path / "a.log"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"
                  b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
    assert got == b"" and backends[0].requests == 0


def test_a_proxy_header_before_tls(backends, croupier, pki, tmp_path):
    config = _proxied_config([backends[0].address], "127.0.0.1", tmp_path / "a.log")
    config["listeners"][0]["tls"] = tls_config([], pki)["listeners"][0]["tls"]
    c = croupier(config)
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as raw:
        raw.sendall(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 443\r\n")
        with client_context(pki).wrap_socket(raw, server_hostname="a.test") as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a.test\r\n\r\n")
            status, _, body = read_response(s, bytearray())
    assert status == 200
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.9"
    assert headers["x-forwarded-proto"] == "https"


def test_check_refuses_proxy_protocol_without_trusted_proxies():
    config = proxy_config(["127.0.0.1:9"], proxy_protocol=True)
    [(key, reason)] = _problems(config)
    assert key == "listeners[0] (web).proxy_protocol" and "trusted_proxies" in reason


# ---- TLS to members -----------------------------------------------------------------------------

class TlsMember:
    """A member that speaks HTTPS: answers each request with the name the client asked for
    (SNI), counting the connections croupier relays requests on (health checks apart)."""

    def __init__(self, loop_thread: Any, ca: trustme.CA, name: str) -> None:
        self.lt = loop_thread
        self.names: list[str | None] = []
        self.connections = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(ctx)
        ctx.sni_callback = lambda obj, server_name, c: self.names.append(server_name)
        self.server = loop_thread.run(asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                           ssl=ctx))
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if first and b"croupier-health-check" not in head:
                    self.connections += 1       # connections that carried relayed requests
                first = False
                body = f"over tls, sni={self.names[-1] if self.names else None}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _member_tls_config(member: TlsMember, ca_file: Path, **tls: Any) -> dict[str, Any]:
    return proxy_config([member.address], pool_options={
        "tls": {"ca": str(ca_file), **tls},
        "health": {"path": "/", "interval": "200ms", "timeout": "1s", "rise": 1, "fall": 1},
        "retries": 0})


def test_requests_reach_a_member_over_tls_and_its_connection_is_reused(backend_loop, croupier,
                                                                      ca, pki):
    import httpx
    from helpers import wait_until

    member = TlsMember(backend_loop, ca, "member.test")
    c = croupier(_member_tls_config(member, pki["ca.pem"], server_name="member.test"))
    wait_until(lambda: c.state(lambda: c.member("app", 0).health) == "up",
               message="the health check over TLS passes")
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(c.url("/x"))
            assert r.status_code == 200 and r.text == "over tls, sni=member.test"
    requests = member.connections
    with httpx.Client() as client:
        assert client.get(c.url("/y")).status_code == 200
    assert member.connections == requests, "a kept-alive TLS connection was not reused"


def test_a_member_whose_certificate_does_not_verify_is_a_502(backend_loop, croupier, pki):
    import httpx

    member = TlsMember(backend_loop, trustme.CA(), "member.test")     # another CA
    config = _member_tls_config(member, pki["ca.pem"], server_name="member.test")
    del config["pools"][0]["health"]
    c = croupier(config)
    r = httpx.get(c.url("/x"))
    assert r.status_code == 502 and "CERTIFICATE_VERIFY_FAILED" in r.text


def test_check_names_a_missing_member_ca(tmp_path):
    config = proxy_config(["127.0.0.1:9"], pool_options={"tls": {"ca": str(tmp_path / "no.pem")}})
    [(key, reason)] = _problems(config)
    assert key == "pools[0] (app).tls.ca" and "no.pem: no such file" in reason


def test_a_refused_body_over_tls_gets_its_answer_and_a_clean_close(backends, croupier, pki):
    """Lingering close under TLS: the 413 goes out, then close_notify and a shut TCP write
    side while the rest of the body is read and dropped, so the client reads the whole answer
    and a clean end, not a reset."""
    config = tls_config([backends[0].address], pki)
    config["listeners"][0]["max_body_size"] = 10
    c = croupier(config)
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as raw, \
            client_context(pki).wrap_socket(raw, server_hostname="a.test") as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: a.test\r\nContent-Length: 300000\r\n\r\n")
        for _ in range(10):
            s.sendall(b"x" * 30000)             # still sending after croupier answered
        got = b""
        while chunk := s.recv(65536):           # b"": close_notify came, a clean end
            got += chunk
    assert got.startswith(b"HTTP/1.1 413 "), got[:80]
    assert backends[0].requests == 0


def test_a_reload_that_turns_tls_off_on_the_same_address_is_refused(backends, pki, tmp_path):
    from helpers import Croupier, free_port, write_config

    port = free_port()
    tls = (f'  [listeners.tls]\n'
           f'  certificates = [{{ cert = "{pki["a.pem"]}", key = "{pki["a.key"]}" }}]\n')

    def write(with_tls: bool) -> None:
        write_config(tmp_path, [backends[0].address], port=port,
                     listener_extra=tls if with_tls else "")
    write(True)
    c = Croupier.from_file(tmp_path / "croupier.toml")
    try:
        write(False)
        result = c.lt.run(c.balancer.reload())
        assert result["reloaded"] is False
        assert "turns TLS or proxy_protocol on or off" in result["errors"][0]
        assert served_names(port, pki, "a.test") == ["a.test"], "it still speaks TLS"
    finally:
        c.close()
