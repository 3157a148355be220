"""The fleet's shared admin state: the overlay (config/overlay.py) in etcd, one key an item
under `PREFIX/state/`, so that changes to two members never conflict and two changes to one
member are compare-and-swapped on its key's revision:

    member/POOL/MEMBER   {"state": "drain"}        an admin state of origin api
    host/NAME            {"state": "maint"}
    added/POOL/MEMBER    an AddedMember            a member the API added
    removed/POOL/MEMBER  {}                        one it removed
    weight/POOL/MEMBER   {"weight": 3}
    window/ID            a SavedWindow             a maintenance window

A key that does not parse (written by hand, or by another version) is skipped and named,
never applied half way: the rest of the state stands without it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from croupier.cluster.etcd import KeyValue
from croupier.config.overlay import AddedMember, SavedWindow, StateFile, empty
from croupier.config.schema import Weight

STATE = "/state/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _AdminValue(_Strict):
    state: Literal["drain", "maint"]


class _WeightValue(_Strict):
    weight: Weight


class _Removed(_Strict):
    pass


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def overlay_keys(prefix: str, overlay: dict[str, Any]) -> dict[str, bytes]:
    """The keys (whole, under `prefix`) and values that hold `overlay` in etcd."""
    base = prefix + STATE
    keys: dict[str, bytes] = {}
    for member, state in overlay.get("member_admin", {}).items():
        keys[f"{base}member/{member}"] = _json({"state": state})
    for host, state in overlay.get("host_admin", {}).items():
        keys[f"{base}host/{host}"] = _json({"state": state})
    for added in overlay.get("added", []):
        added = AddedMember.model_validate(added).model_dump()
        keys[f"{base}added/{added['pool']}/{added['name']}"] = _json(added)
    for member in overlay.get("removed", []):
        keys[f"{base}removed/{member}"] = _json({})
    for member, weight in overlay.get("weights", {}).items():
        keys[f"{base}weight/{member}"] = _json({"weight": weight})
    for window in overlay.get("windows", []):
        window = SavedWindow.model_validate(window).model_dump()
        keys[f"{base}window/{window['id']}"] = _json(window)
    return keys


def read_overlay(prefix: str, kvs: list[KeyValue]) -> tuple[dict[str, Any], list[str]]:
    """The overlay the keys under `prefix` hold, and the keys skipped (each with why)."""
    base = prefix + STATE
    overlay = empty()
    skipped: list[str] = []
    for kv in kvs:
        if not kv.key.startswith(base):
            continue
        kind, _, name = kv.key[len(base):].partition("/")
        try:
            value = json.loads(kv.value)
            if not name:
                raise ValueError("no name after the kind")
            if kind == "member" or kind == "host":
                if kind == "member" and "/" not in name:
                    raise ValueError("a member is named POOL/MEMBER")
                field = "member_admin" if kind == "member" else "host_admin"
                overlay[field][name] = _AdminValue.model_validate(value).state
            elif kind == "added":
                added = AddedMember.model_validate(value)
                if f"{added.pool}/{added.name}" != name:
                    raise ValueError(f"its value names {added.pool}/{added.name}")
                overlay["added"].append(added.model_dump())
            elif kind == "removed":
                _Removed.model_validate(value)
                overlay["removed"].append(name)
            elif kind == "weight":
                overlay["weights"][name] = _WeightValue.model_validate(value).weight
            elif kind == "window":
                window = SavedWindow.model_validate(value)
                if window.id != name:
                    raise ValueError(f"its value is window {window.id!r}")
                overlay["windows"].append(window.model_dump())
            else:
                raise ValueError(f"no kind {kind!r}")
        except (ValueError, ValidationError) as e:     # JSONDecodeError is a ValueError
            why = (e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e))
            skipped.append(f"{kv.key}: {why}")
    return shared_part(StateFile.model_validate(overlay).model_dump()), skipped


def shared_part(overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` without what is this instance's alone (the states set with --local)."""
    return {k: v for k, v in overlay.items() if not k.startswith("local_")}
