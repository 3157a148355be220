"""The state file: what operators changed at run time (admin states, added and removed
members, weights, maintenance windows), kept beside the config so that it survives a restart.

It is advisory: a file that cannot be read, or holds what no croupier wrote, never keeps
croupier from starting. It is set aside (kept for whoever wants to look) and croupier starts
from the config alone, saying so. Written atomically: a crash mid-write leaves the old file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from croupier.config.overlay import StateFile, api_members, empty

if TYPE_CHECKING:
    from croupier.config.load import LoadedConfig

log = logging.getLogger("croupier.state")

# The overlay's model and helpers live with the config (config/overlay.py); these are the
# file's own.
__all__ = ["StateFile", "api_members", "empty", "hold_lock", "lock_path", "read", "write"]


def read(path: Path) -> dict[str, Any]:
    """The overlay the file holds; the config alone (empty) if there is none to trust."""
    if not path.exists():
        return empty()
    try:
        state = StateFile.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        aside = path.with_name(path.name + ".unreadable")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        why = (f"{len(e.errors())} problem(s), first: "
               f"{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']}"
               if isinstance(e, ValidationError) else str(e))
        log.warning("state file %s cannot be used (%s): starting from the config alone; the "
                    "file is kept as %s", path, why, aside)
        return empty()
    log.info("runtime state from %s: %d member and %d host admin state(s), %d added, "
             "%d removed, %d window(s)", path, len(state.member_admin), len(state.host_admin),
             len(state.added), len(state.removed), len(state.windows))
    return state.model_dump()


def write(path: Path, overlay: dict[str, Any]) -> None:
    """Write atomically: to a temporary file beside it, synced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(overlay, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lock_path(loaded: LoadedConfig) -> Path:
    """Beside the state file (beside the config when there is none): one per config."""
    admin = loaded.config.admin
    path = loaded.beside(admin.state_file if admin.enabled else loaded.path.name)
    return path.with_name(path.name + ".lock")


def hold_lock(path: Path) -> IO[str]:
    """Lock `path` for as long as the returned file stays open (the process's life), or
    raise OSError naming the process that holds it: two instances of one config would share
    its ports (SO_REUSEPORT) and its state file, each with its own view."""
    f = open(path, "a+")  # noqa: SIM115 (held open on purpose: the lock lives with it)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise OSError(errno.EEXIST, f"another croupier (pid {holder}) runs this config: "
                                    f"{path} is locked") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
