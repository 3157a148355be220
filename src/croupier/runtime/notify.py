"""Telling systemd (Type=notify) where croupier is: READY=1 once it serves (with workers,
once every worker has said so), RELOADING=1 and READY=1 around a reload, STOPPING=1 when it
stops. Nothing happens without NOTIFY_SOCKET; workers never notify (NotifyAccess=main)."""

from __future__ import annotations

import os

import sdnotify

_notifier: sdnotify.SystemdNotifier | None = None


def notify(state: str) -> None:
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    if _notifier is None:
        _notifier = sdnotify.SystemdNotifier()
    _notifier.notify(f"{state}\nMAINPID={os.getpid()}")
