"""The header helpers of the data plane."""

from __future__ import annotations

import pytest

from croupier.proxy.client import _REQUEST_FIELDS
from croupier.proxy.http import (
    HOP_BY_HOP,
    FieldNames,
    connection_tokens,
    host_without_port,
    simple_response,
    valid_host,
)
from croupier.proxy.upstream import _is_name


def test_hop_by_hop_fields_per_rfc9110():
    assert {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
            b"upgrade", b"proxy-connection"} == set(HOP_BY_HOP)


def test_connection_tokens_are_lowercased_and_trimmed():
    assert connection_tokens(b"Keep-Alive , X-Foo,,close") == [b"keep-alive", b"x-foo", b"close"]


def test_host_without_port():
    assert host_without_port(b"Example.COM:8080") == b"example.com"
    assert host_without_port(b"[::1]:80") == b"[::1]"
    assert host_without_port(b"a.b") == b"a.b"


def test_valid_host_refuses_paths_and_userinfo():
    assert valid_host(b"example.com:80")
    for bad in (b"", b"a b", b"a/b", b"user@host", b"a?b", b"x" * 300):
        assert not valid_host(bad)


def test_simple_response_is_well_framed():
    out = simple_response(503, "no member\n", close=True, extra=((b"Retry-After", b"1"),))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Length: 10" in head and b"Retry-After: 1" in head
    assert b"Connection: close" in head and body == b"no member\n"


def test_field_tables_classify_as_lower_casing_would():
    fields = _REQUEST_FIELDS
    # The table stands in for name.lower() on the hot path: one wrong entry would copy a
    # hop-by-hop field through, or drop an ordinary one.
    assert len(fields.table) > 100
    for spelt, lname in fields.table.items():
        assert lname == (spelt.lower() if spelt.lower() in fields.special else b""), spelt
    for name in fields.special:
        assert fields.kind(name.title()) == fields.kind(name.upper()) == name


def test_names_not_in_the_table_are_lower_cased():
    fields = FieldNames(frozenset({b"te"}), [b"te", b"server"])
    assert fields.table == {b"te": b"te", b"Te": b"te", b"TE": b"te",     # special wins
                            b"server": b"", b"Server": b"", b"SERVER": b""}
    assert fields.kind(b"tE") == b"te"
    assert fields.kind(b"sErVeR") == b"" and fields.kind(b"X-Other") == b""


# Bytes llhttp lets through in a field name (RFC 9110 5.6.2 tchar).
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP | {b"content-length"}))
def test_response_field_names_match_as_lower_casing_would(name):
    # Response heads are read from the bytes as they came: a name is matched a byte at a
    # time with `| 0x20`, which must agree with lower-casing for every byte of a token.
    for spelt in (name, name.upper(), name.title()):
        assert _is_name(spelt + b": v", 0, name) and _is_name(spelt + b":", 0, name)
        assert _is_name(b"X: y\r\n" + spelt + b": v", 6, name)     # a line inside a head
    assert not _is_name(name + b" : v", 0, name) and not _is_name(name, 0, name)
    assert not _is_name(name + b"x: v", 0, name) and not _is_name(name[:-1] + b": v", 0, name)
    for at in range(len(name)):
        for byte in TCHARS:
            spelt = name[:at] + bytes([byte]) + name[at + 1:]
            assert _is_name(spelt + b": v", 0, name) == (spelt.lower() == name), spelt
