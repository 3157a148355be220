"""The config file as a source of members: its pools and their members, as loaded."""

from __future__ import annotations

from croupier.config.load import LoadedConfig
from croupier.model.reconcile import Wanted


class ConfigFile:
    """The bottom of the stack: it wants exactly what the file says (every pool, even an
    empty one, so the layers above know which pools exist)."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded

    def want(self, below: Wanted) -> Wanted:
        return {pc.name: {s.name: s for s in self.loaded.members.get(pc.name, [])}
                for pc in self.loaded.config.pools}
