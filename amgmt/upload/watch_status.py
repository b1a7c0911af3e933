"""The state file of `amgmt watch`: what the running watch waits on, has in flight, has done and failed, written
atomically into the metadata dir as it changes; and reading it back for `amgmt watch --status`, with whether that
watch still runs (it holds the local dir's run lock). Owns only that file; never prints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from amgmt.config import Settings
from amgmt.errors import NotFoundError
from amgmt.local.runlock import lock_holder
from amgmt.naming import display

LISTED = 50  # entries listed per section of the state file; the counts say how many more


def state_path(settings: Settings) -> Path:
    """`<db dir>/watch-<first 16 hex digits of SHA-1 of the local dir path>.json`: one watch per local dir, and
    several local dirs may share a metadata dir."""
    digest = hashlib.sha1(os.fsencode(settings.local_dir)).hexdigest()[:16]
    return settings.db_path.parent / f"watch-{digest}.json"


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file in one rename (a reader never sees half of it); mode 0600 like the database."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(state, indent=1, sort_keys=True).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def read_state(settings: Settings) -> dict[str, Any]:
    """The last state the watch of this local dir wrote, with `running`: whether that process still holds the
    local dir's lock (a watch killed with -9 leaves its file saying "watching", and no lock). NotFoundError when no
    watch ever ran here."""
    path = state_path(settings)
    try:
        state: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(
            f"no watch has run on {display(settings.local_dir)} (no state file {display(path)})"
        ) from None
    except (OSError, ValueError) as exc:
        raise NotFoundError(f"cannot read the watch state file {display(path)}: {exc}") from None
    try:
        holder = lock_holder(os.stat(settings.local_dir))
    except OSError:
        holder = None
    state["running"] = holder is not None and holder == state.get("pid")
    if not state["running"] and state.get("state") not in ("stopped",):
        state["state"] = "dead"  # no clean stop was written: killed, or the machine went down
    return state
