"""Run the amgmt CLI with a SIGKILL injected at one exact call: deterministic crash windows, no sleeps.

    AMGMT_KILL_AT="os.unlink|/media/|1|before" python tests/faults/killpoint.py upload all --no-progress

The spec is `FUNCTION|SUBSTRING|NTH|WHEN`: FUNCTION is a dotted name of a module-level function to wrap (`os.link`,
`os.unlink`, `os.rename`, `shutil.copy2`, `amgmt.completed.move_to_completed`, ...); the NTH call (1-based) whose
arguments, as text, contain SUBSTRING kills the process with SIGKILL, `before` the call runs or `after` it returned.
Only the main process is patched (compression workers are not), which is where moves, saves and uploads happen.
Several points may be given, separated by `;`. Without AMGMT_KILL_AT the CLI runs unchanged.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(function: Callable[..., Any], substring: str, nth: int, when: str) -> Callable[..., Any]:
    seen = 0

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        text = " ".join(os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args)
        if substring in text:
            seen += 1
            if seen == nth and when == "before":
                _kill()
            result = function(*args, **kwargs)
            if seen == nth and when == "after":
                _kill()
            return result
        return function(*args, **kwargs)

    return wrapper


def install(spec: str) -> None:
    for point in filter(None, (p.strip() for p in spec.split(";"))):
        target, substring, nth, when = point.split("|")
        module_name, _, attribute = target.rpartition(".")
        module = importlib.import_module(module_name)
        original = getattr(module, attribute)
        setattr(module, attribute, _wrap(original, substring, int(nth), when))


def main() -> None:
    spec = os.environ.get("AMGMT_KILL_AT", "")
    if spec:
        install(spec)
    from amgmt.cli import main as cli_main

    sys.argv = ["amgmt", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
