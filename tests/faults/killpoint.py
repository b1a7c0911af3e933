"""Run the amgmt CLI with a SIGKILL injected at one exact call: deterministic crash windows, no sleeps.

    AMGMT_KILL_AT="os.unlink|/media/|1|before" python tests/faults/killpoint.py upload all --no-progress

The spec is `FUNCTION|SUBSTRING|NTH|WHEN`: FUNCTION is a dotted name of a function or method to wrap (`os.link`,
`os.unlink`, `os.rename`, `amgmt.local.completed.move_to_completed`, `amgmt.s3.client.S3Bucket.head`, `amgmt.s3.reservation.reserve_key`; coroutine functions
too); the NTH call (1-based) whose arguments, as text, contain SUBSTRING kills the process with SIGKILL, `before`
the call runs or `after` it returned. An optional fifth field sends another signal instead (`|SIGINT`: a Ctrl-C
at that exact moment).
Only the main process is patched (compression workers are not), which is where moves, saves and uploads happen.
Several points may be given, separated by `;`. Without AMGMT_KILL_AT the CLI runs unchanged.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _wrap(function: Callable[..., Any], substring: str, nth: int, when: str, sig: int = signal.SIGKILL
          ) -> Callable[..., Any]:
    seen = 0

    def _kill() -> None:
        os.kill(os.getpid(), sig)

    def hit(args: tuple[Any, ...]) -> bool:
        nonlocal seen
        text = " ".join(os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args)
        if substring not in text:
            return False
        seen += 1
        return seen == nth

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = hit(args)
            if chosen and when == "before":
                _kill()
            result = await function(*args, **kwargs)
            if chosen and when == "after":
                _kill()
            return result

        return async_wrapper

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        chosen = hit(args)
        if chosen and when == "before":
            _kill()
        result = function(*args, **kwargs)
        if chosen and when == "after":
            _kill()
        return result

    return wrapper


def _resolve(target: str) -> tuple[Any, str]:
    """(the object holding the attribute, its name) for a dotted name: a module's function or a class's method."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            holder: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            holder = getattr(holder, name)
        return holder, parts[-1]
    raise ValueError(f"cannot resolve {target!r}")


def install(spec: str) -> None:
    for point in filter(None, (p.strip() for p in spec.split(";"))):
        target, substring, nth, when, *rest = point.split("|")
        sig = getattr(signal, rest[0]) if rest else signal.SIGKILL
        if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            # Started from a shell's background job (SIGINT ignored, so Python installed no KeyboardInterrupt
            # handler): the injected Ctrl-C must act as a terminal's would on a foreground amgmt.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        holder, attribute = _resolve(target)
        setattr(holder, attribute, _wrap(getattr(holder, attribute), substring, int(nth), when, sig))
        if target in ("os.link", "os.rename", "os.unlink"):
            # A kill at these calls is a kill in the two-step placement amgmt uses where renameat2 is missing.
            import amgmt.local.placing

            amgmt.local.placing.rename_noreplace = lambda source, destination: False


def main() -> None:
    spec = os.environ.get("AMGMT_KILL_AT", "")
    if spec:
        install(spec)
    from amgmt.cli import main as cli_main

    sys.argv = ["amgmt", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
