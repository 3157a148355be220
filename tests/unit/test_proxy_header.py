"""The PROXY header send_proxy writes (proxy/proxy_header.py), against HAProxy's spec
(proxy-protocol.txt) byte for byte, and read back by croupier's own reader."""

from __future__ import annotations

import pytest

from croupier.proxy.proxy_header import parse, proxy_header_for

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def test_v1_is_the_specs_text_line():
    assert (proxy_header_for(1, b"192.168.0.1", 56324, "192.168.0.11", 443)
            == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert (proxy_header_for(1, b"2001:db8::1", 1, "::1", 65535)
            == b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")


def test_v2_ipv4_is_the_specs_binary_block():
    got = proxy_header_for(2, b"192.168.0.1", 56324, "192.168.0.11", 443)
    assert got == (SIGNATURE + b"\x21"            # version 2, PROXY
                   + b"\x11" + b"\x00\x0c"         # TCP over IPv4, 12 bytes of addresses
                   + bytes([192, 168, 0, 1]) + bytes([192, 168, 0, 11])
                   + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big"))


def test_v2_ipv6_and_mixed_families():
    got = proxy_header_for(2, b"2001:db8::7", 51234, "127.0.0.1", 8443)
    assert got[12:16] == b"\x21\x21\x00\x24"        # PROXY, TCP over IPv6, 36 bytes
    assert got[32:48] == b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])   # v4-mapped
    assert got[48:] == (51234).to_bytes(2, "big") + (8443).to_bytes(2, "big")


@pytest.mark.parametrize("version", [1, 2])
def test_what_croupier_writes_it_reads_back(version):
    header = proxy_header_for(version, b"203.0.113.7", 40000, "10.0.0.1", 443)
    assert parse(header + b"GET / HTTP/1.1\r\n") == (len(header), (b"203.0.113.7", 40000))


@pytest.mark.parametrize(("version", "expected"), [
    (1, b"PROXY UNKNOWN\r\n"),
    (2, SIGNATURE + b"\x20\x00\x00\x00"),           # LOCAL: no addresses
])
def test_no_address_to_name_says_so(version, expected):
    header = proxy_header_for(version, b"unknown", 0, "0.0.0.0", 0)
    assert header == expected
    assert parse(header) == (len(header), None)     # the peer's own address is kept
