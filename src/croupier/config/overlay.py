"""The overlay: what operators set at run time on top of the config (admin states, members
added and removed, weights, maintenance windows). The state file keeps it beside the config
(runtime/state_file.py), a worker is sent its membership part, and a fleet shares it in etcd
(cluster/shared.py): one model for the three, validated as the config is."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from croupier.config.schema import Address, Name, Port, Text, Weight, When

VERSION: Final = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AddedMember(_Strict):
    pool: Name
    name: Text
    host: Text
    address: Address
    port: Port
    weight: Weight


class ApiMembers(_Strict):
    """What the admin API changed of the membership (members are named `pool/name`)."""

    added: list[AddedMember] = []
    removed: list[str] = []
    weights: dict[str, Weight] = {}


class SavedWindow(_Strict):
    id: Name
    target: Text
    start: When
    end: When
    lead: float = Field(ge=0)           # seconds of drain before start
    reason: Text = ""


class StateFile(_Strict):
    version: Literal[1] = VERSION
    member_admin: dict[str, Literal["drain", "maint"]] = {}
    host_admin: dict[str, Literal["drain", "maint"]] = {}
    added: list[AddedMember] = []
    removed: list[str] = []
    weights: dict[str, Weight] = {}
    windows: list[SavedWindow] = []
    # Admin states set with --local (during an etcd outage): this instance's own, kept in its
    # state file, never shared with the fleet
    local_member_admin: dict[str, Literal["drain", "maint"]] = {}
    local_host_admin: dict[str, Literal["drain", "maint"]] = {}


def empty() -> dict[str, Any]:
    return StateFile().model_dump()


def api_members(saved: dict[str, Any]) -> ApiMembers:
    """The membership part of an overlay (a worker is sent only that part)."""
    return ApiMembers.model_validate({k: saved.get(k, v) for k, v in
                                      ApiMembers().model_dump().items()})
