"""The log file's record of every command that changes something (upload, retry, download, delete, cleanup, watch,
config set/init): one line when it starts (its arguments, credentials and hook commands hidden), one when it ends
(its local dir and outcome). Knows nothing of what the commands do; writes only through the `amgmt` logger."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence

log = logging.getLogger("amgmt.command")

CHANGING = frozenset({"upload", "retry", "download", "delete", "cleanup", "watch", "config set", "config init"})
HIDDEN = "<hidden>"
# Options whose value may carry a secret: a hook is a shell command, often a curl to a webhook URL holding a token.
_SECRET_OPTIONS = frozenset({"--hook"})
_SECRET_SETTING_NAMES = frozenset({"hook", "mgmt_hook"})
_SECRET_SETTINGS = re.compile(r"^(MGMT_)?HOOK=", re.IGNORECASE)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_OUTCOMES = {
    0: "done",
    1: "an entry failed or is partial",
    2: "bad input",
    3: "S3 unusable",
    4: "database unusable",
    5: "local dir busy",
    75: "restore under way",
    130: "interrupted",
}


def changing_command(words: Sequence[str]) -> str | None:
    """The name of the command `words` (what follows `amgmt` and its own options) runs, when it changes something:
    `upload`, `config set`, ...; None for a command that only reads (and for `watch --status`)."""
    names = [w for w in words if not w.startswith("-")]
    if not names:
        return None
    name = names[0] if names[0] != "config" or len(names) < 2 else f"config {names[1]}"
    if name not in CHANGING or (name == "watch" and "--status" in words):
        return None
    return name


def shown_arguments(words: Sequence[str]) -> str:
    """The arguments as they may be logged: the values of --hook and of a `config set MGMT_HOOK=...` hidden, and the
    user:password of any URL taken out."""
    shown: list[str] = []
    hide_next = False
    for word in words:
        if hide_next:
            shown.append(HIDDEN)
            hide_next = False
            continue
        option, eq, _ = word.partition("=")
        if word.lower() in _SECRET_SETTING_NAMES:  # `config set hook VALUE`
            shown.append(word)
            hide_next = True
            continue
        if option in _SECRET_OPTIONS:
            if eq:
                shown.append(f"{option}={HIDDEN}")
            else:
                shown.append(word)
                hide_next = True
            continue
        if _SECRET_SETTINGS.match(word):
            shown.append(f"{word.split('=', 1)[0]}={HIDDEN}")
            continue
        shown.append(_USERINFO.sub(r"\1***@", word))
    return " ".join(_quoted(w) for w in shown)


def _quoted(word: str) -> str:
    printable = word.encode("unicode_escape").decode("ascii") if not word.isprintable() else word
    return repr(printable) if not printable or any(c in printable for c in " '\"") else printable


class CommandLog:
    """A changing command's two lines: `started` before it runs, `ended` with its outcome after."""

    def __init__(self, name: str, words: Sequence[str]) -> None:
        self.name = name
        self.words = list(words)
        self.started_at = time.monotonic()

    def started(self) -> None:
        log.info("command %s started: amgmt %s (pid %d)", self.name, shown_arguments(self.words), os.getpid())

    def ended(self, code: int, error: str | None, local_dir: str | None) -> None:
        outcome = _OUTCOMES.get(code, "failed")
        where = f"local dir {local_dir}" if local_dir else f"cwd {os.getcwd()}"
        line = "command %s ended: exit %d (%s) in %.1fs; %s%s"
        level = logging.INFO if code in (0, 75) else logging.WARNING
        log.log(
            level,
            line,
            self.name,
            code,
            outcome,
            time.monotonic() - self.started_at,
            where,
            f"; {error}" if error else "",
        )
