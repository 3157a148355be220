"""Hosts, members, pools and their state."""

from croupier.model.state import Host, Member, Pool

__all__ = ["Host", "Member", "Pool"]
