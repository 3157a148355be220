"""The PROXY protocol header, v1 and v2 (HAProxy's spec), as the bytes come: whole, cut
anywhere, or not a header at all."""

from __future__ import annotations

import pytest

from croupier.proxy.proxy_header import BadHeader, parse

V1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"
V2_TCP4 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 10, 0, 0, 1])
           + (51234).to_bytes(2, "big") + (443).to_bytes(2, "big"))
V2_TCP6 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + bytes.fromhex("20010db8" + "00" * 11 + "01")
           + bytes(16) + (4000).to_bytes(2, "big") + (443).to_bytes(2, "big"))
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


@pytest.mark.parametrize("header, client", [
    (V1, (b"203.0.113.7", 51234)),
    (b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n", (b"2001:db8::1", 4000)),
    (b"PROXY UNKNOWN\r\n", None),
    (V2_TCP4, (b"203.0.113.7", 51234)),
    (V2_TCP6, (b"2001:db8::1", 4000)),
    (V2_LOCAL, None),
])
def test_a_header_names_the_client_and_where_the_request_begins(header, client):
    request = b"GET / HTTP/1.1\r\n\r\n"
    assert parse(header + request) == (len(header), client)
    for cut in range(1, len(header)):           # cut anywhere: more is asked for
        assert parse(header[:cut]) == (0, None)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n",
    b"PROXY " + b"x" * 120,
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),     # version 3
])
def test_anything_else_is_refused(data):
    with pytest.raises(BadHeader):
        parse(data)
