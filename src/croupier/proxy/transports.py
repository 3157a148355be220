"""uvloop's record of which transport holds each file descriptor, made cheap.

uvloop records every transport it makes in a `weakref.WeakValueDictionary`, keyed by its
file descriptor, to refuse `add_reader` on a descriptor a live transport owns. That class is
written in Python: storing a transport runs three Python functions (`__setitem__` and a
`KeyedRef`'s `__new__` and `__init__`) and its death a fourth (the removal callback), about
2,500 instructions of each accepted connection's 49,000 (callgrind, see bench/hotpath.py).
`TransportTable` keeps the same answer in compiled code: a plain weak reference per
descriptor, overwritten when the descriptor is reused, and a dead one read as absent.
runtime/eventloop.py hands it to uvloop when uvloop is first imported.
"""

from __future__ import annotations

import weakref


class TransportTable:
    __slots__ = ("refs",)

    def __init__(self) -> None:
        self.refs: dict[object, weakref.ref[object]] = {}

    def __setitem__(self, fd: object, transport: object) -> None:
        self.refs[fd] = weakref.ref(transport)

    def __getitem__(self, fd: object) -> object:
        transport = self.refs[fd]()
        if transport is None:
            raise KeyError(fd)
        return transport

    def __len__(self) -> int:
        return sum(1 for ref in self.refs.values() if ref() is not None)
