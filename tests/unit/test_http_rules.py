"""The header helpers of the data plane."""

from __future__ import annotations

import pytest

from croupier.proxy.http import (
    F_CHUNKED,
    F_LENGTH,
    OUT_CHUNKED,
    OUT_NONE,
    OUT_RAW,
    OUT_UNTIL_CLOSE,
    connection_named,
    equals_at,
    field_value,
    host_without_port,
    is_name,
    joined_runs,
    kept_run,
    length_value,
    response_framing,
    simple_response,
    tokens,
    valid_host,
    without_fields,
)


def test_tokens_are_lowercased_and_trimmed():
    assert tokens(b"Keep-Alive , X-Foo,,close") == [b"keep-alive", b"x-foo", b"close"]


def test_connection_names_the_fields_it_lists_but_not_its_options():
    assert connection_named(b"keep-alive") == [] and connection_named(b"Upgrade") == []
    assert connection_named(b"Keep-Alive , X-Foo,,close, TE") == [b"x-foo", b"te"]


def test_fields_named_by_connection_are_left_out_whatever_their_case():
    fields = b"X-Foo: 1\r\nx-kept: 2\r\nx-FOO: 3\r\nTE: trailers\r\n"
    assert without_fields(fields, [b"x-foo", b"te"]) == b"x-kept: 2\r\n"
    assert without_fields(fields, [b"x-other"]) == fields


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


def test_content_lengths_are_read_from_the_line_whatever_their_size():
    for value in (0, 7, 1048576, 10**18 - 1, 2**63 - 1, 2**63, 2**64 - 1):
        line = b"Content-Length: \t%d \r\n" % value
        assert length_value(line, 15, len(line) - 2) == value
    line = b"content-length:42\r\n"
    assert length_value(line, 15, len(line) - 2) == 42


def test_kept_runs_join_in_order_however_many_there_are():
    raw = b"A: 1\r\nDrop: x\r\nB: 2\r\nDrop: y\r\nC: 3\r\nD: 4\r\n"
    runs = [(0, 6), (15, 21), (30, 42)]
    for n in range(4):
        kept, more = b"", None
        for start, end in runs[:n]:
            kept, more = kept_run(kept, more, raw, start, end)
        assert joined_runs(kept, more) == b"".join(raw[s:e] for s, e in runs[:n])
        assert (more is None) == (n < 2)            # a list only from the second run


def test_field_values_lose_only_the_whitespace_around_them():
    line = b"X-A: \t v a l \t \r\n"
    assert field_value(line, 4, len(line) - 2) == b"v a l"
    assert field_value(b"X-A:v\r\n", 4, 5) == b"v"
    assert field_value(b"X-A: \t\r\n", 4, 6) == b""
    assert field_value(b"X-A:\r\n", 4, 4) == b""


def test_equals_at_compares_in_place_and_stays_inside():
    assert equals_at(b"GET / HTTP/1.1", 0, b"GET") and equals_at(b"\r\nPUT /", 2, b"PUT")
    assert not equals_at(b"GET", 0, b"GETX") and not equals_at(b"get", 0, b"GET")
    assert not equals_at(b"xGE", 1, b"GET")


# Bytes llhttp lets through in a field name (RFC 9110 5.6.2 tchar).
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


# The names the two sides match a byte at a time: hop-by-hop (RFC 9110 7.6.1) and framing.
MATCHED = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
           b"transfer-encoding", b"upgrade", b"content-length", b"x-request-id")


@pytest.mark.parametrize("name", MATCHED)
def test_response_field_names_match_as_lower_casing_would(name):
    # Response heads are read from the bytes as they came: a name is matched a byte at a
    # time with `| 0x20`, which must agree with lower-casing for every byte of a token.
    for spelt in (name, name.upper(), name.title()):
        assert is_name(spelt + b": v", 0, name) and is_name(spelt + b":", 0, name)
        assert is_name(b"X: y\r\n" + spelt + b": v", 6, name)     # a line inside a head
    assert not is_name(name + b" : v", 0, name) and not is_name(name, 0, name)
    assert not is_name(name + b"x: v", 0, name) and not is_name(name[:-1] + b": v", 0, name)
    for at in range(len(name)):
        for byte in TCHARS:
            spelt = name[:at] + bytes([byte]) + name[at + 1:]
            assert is_name(spelt + b": v", 0, name) == (spelt.lower() == name), spelt


@pytest.mark.parametrize("head, status, fields, http11, mode", [
    (True, 200, F_LENGTH, True, OUT_NONE),                  # HEAD: never a body
    (False, 204, F_LENGTH, True, OUT_NONE),
    (False, 304, F_CHUNKED, True, OUT_NONE),
    (False, 103, 0, True, OUT_NONE),
    (False, 200, F_LENGTH, True, OUT_RAW),
    (False, 200, F_LENGTH, False, OUT_RAW),                 # a length suits HTTP/1.0 too
    (False, 200, F_LENGTH | F_CHUNKED, True, OUT_CHUNKED),  # chunked overrides the length
    (False, 200, F_CHUNKED, True, OUT_CHUNKED),
    (False, 500, 0, True, OUT_CHUNKED),                     # until close -> chunked
    (False, 200, F_CHUNKED, False, OUT_UNTIL_CLOSE),        # HTTP/1.0 reads no chunks
    (False, 200, 0, False, OUT_UNTIL_CLOSE),
])
def test_one_function_decides_a_responses_framing(head, status, fields, http11, mode):
    assert response_framing(head, status, fields, http11) == mode
