"""The amgmt exception tree and the process exit codes; nothing else.

    AmgmtError
    ├── ConfigError        bad settings or flags: exit 2, raised before any work
    ├── EntryError         one entry failed at one stage (path=, stage=); recorded; the batch goes on
    │   ├── ValidationError
    │   ├── CompressionError
    │   ├── UploadError
    │   ├── VerificationError
    │   ├── SourceChangedError  the source changed or vanished after it was packed: not moved (recorded "changed")
    │   └── ClaimLostError  another run took the entry over (shared catalog): stopped without acting ("cancelled")
    ├── MoveError          upload verified, original could not be moved: recorded as partial
    ├── StorageError       run-wide S3 trouble (no bucket, bad credentials, endpoint down): stop the batch
    ├── StoreError         metadata database trouble
    ├── BusyError          another amgmt run holds the local dir's lock
    └── NotFoundError      a named operation id, entry or key does not exist (or the id prefix is ambiguous)

Foreign errors (botocore, aiohttp, sqlite3, OSError) are translated at their boundary module and raised
``from exc``; the CLI turns an AmgmtError into one line on stderr and ``exit_code``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in docs/commands.md."""

    OK = 0
    ENTRY_FAILED = 1  # the run finished, but at least one entry failed or is partial
    USAGE = 2  # bad configuration, flags or arguments; nothing was done
    STORAGE = 3  # run-wide S3 failure (bucket, credentials, endpoint); the batch stopped early
    STORE = 4  # the metadata database could not be used
    BUSY = 5  # another amgmt run holds the local dir
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class AmgmtError(Exception):
    """Base of every error amgmt raises on purpose."""

    exit_code: ExitCode = ExitCode.ENTRY_FAILED


class ConfigError(AmgmtError):
    """Invalid settings, flags or arguments, detected before any work starts."""

    exit_code = ExitCode.USAGE


class EntryError(AmgmtError):
    """One entry failed at one stage; the batch records it and goes on."""

    stage: str = "unknown"

    def __init__(self, message: str, *, path: str | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        if stage is not None:
            self.stage = stage


class ValidationError(EntryError):
    stage = "validate"


class CompressionError(EntryError):
    stage = "compress"


class UploadError(EntryError):
    stage = "upload"
    transient: bool = False  # True when the same request may succeed if tried again (5xx, throttling, resets)


class ObjectExistsError(UploadError):
    """A create-if-absent PUT (If-None-Match: *) found the key taken: somebody, or an earlier attempt of ours whose
    answer was lost, created the object since we looked."""


class VerificationError(EntryError):
    stage = "verify"


class SourceChangedError(EntryError):
    """The entry is no longer what was packed and uploaded (written, grown, replaced, members added or removed, or
    deleted): it is not moved, or was moved back; the object holds it as packed; the next run uploads it again."""

    stage = "move"


class ClaimLostError(EntryError):
    """Another run took over the entry's claim (this run stalled past its lease, upload/claims.py): the entry stops
    before an irreversible step (the PUT or complete that makes its key, the move of its original)."""

    stage = "fence"


class MoveError(AmgmtError):
    """The upload is verified but the original could not be moved to the completed dir."""


class StorageError(AmgmtError):
    """S3 trouble that no other entry can escape: stop the batch with one clear message."""

    exit_code = ExitCode.STORAGE


class StoreError(AmgmtError):
    """The metadata database could not be opened, read or written."""

    exit_code = ExitCode.STORE


class BusyError(AmgmtError):
    """Another amgmt run is working on the same local dir."""

    exit_code = ExitCode.BUSY


class NotFoundError(AmgmtError):
    """A thing the user named (an operation id, an entry, a key) does not exist, or a prefix is ambiguous."""

    exit_code = ExitCode.USAGE


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The most telling leaf of an exception group (a task group's failure): an amgmt error first, then any error,
    then cancellation."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for wanted in (AmgmtError, Exception):
        for leaf in leaves:
            if isinstance(leaf, wanted):
                return leaf
    return leaves[0]
