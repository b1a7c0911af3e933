"""Settings: CLI flags > MGMT_* environment > config file > defaults, validated once into a frozen value.

Owns the Settings value, the name of every setting and its MGMT_* key; the layering and the validation are in
`load.py`, the rules for the four locations in `locations.py`, the config file in `file.py`. It never reads, keeps or
writes AWS credentials and does no I/O at import; `load_settings` reads only the config file and checks that the
configured directories make sense.

An empty value (``MGMT_ENDPOINT_URL=``, ``--endpoint-url ''``) resets a key to its default, overriding lower layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from amgmt.config.values import format_value

ENV_PREFIX = "MGMT_"


@dataclass(frozen=True)
class Settings:
    """Validated settings of one amgmt run. Paths are absolute; `sources` says where each value came from."""

    bucket: str | None
    object_prefix: str  # no leading/trailing '/', '' when unset
    local_dir: Path
    completed_dir: Path
    preserve_structure: bool
    duplicate_handling: str  # "timestamp" | "subdirectory" | "error"
    exclude: tuple[str, ...]  # shell patterns of entry names `upload` leaves out (before --exclude/--include)
    endpoint_url: str | None
    storage_class: str | None
    concurrency: int
    completed_enabled: bool
    db_path: Path
    staging_dir: Path
    part_size: int
    multipart_threshold: int
    parts_in_flight: int
    checksum_algorithm: str  # "auto" | "crc64nvme" | "crc32c" | "sha256" | "md5" (amgmt.checksums)
    payload_signing: bool  # SigV4 SHA-256 of every request body; off: UNSIGNED-PAYLOAD (Content-MD5 still checks data)
    compression_level: int
    profile: str | None
    region: str | None
    addressing_style: str  # resolved: "path" | "virtual" | "auto"
    read_timeout: float  # seconds without a byte from the server before a request is given up (and retried)
    connect_timeout: float  # seconds to open a connection to the endpoint
    settle_seconds: float  # `amgmt watch`: how long an entry must stay unchanged before it is taken
    hook: str | None  # a shell command run after each entry ends, the record in AMGMT_* variables (upload/hooks.py)
    hook_timeout: float  # seconds before the hook's process group is killed
    db_url: str | None  # postgresql://...: the PostgreSQL store instead of the SQLite file at db_path (amgmt.store)
    host_id: str  # recorded on every operation (the host name unless set)
    lease_seconds: float  # PostgreSQL: how long a run's claims last unrenewed (renewed every third of it)
    on_conflict: str  # "fail" | "rename" | "overwrite": an object of other content at an entry's key (ownership.py)
    sse: str | None  # "AES256" | "aws:kms": server-side encryption asked of S3 for each object
    sse_kms_key_id: str | None  # the KMS key of aws:kms (None: the account's aws/s3 key)
    tags: tuple[str, ...]  # "KEY=VALUE" object tags
    metadata: tuple[str, ...]  # "KEY=VALUE" user metadata (x-amz-meta-KEY) beside amgmt's own
    acl: str | None  # a canned ACL
    bwlimit: int  # bytes per second for the whole run's request bodies; 0: no limit
    small_entry_size: int  # regular files up to this size go through the small-entry lane (upload/lane.py); 0: off
    sources: Mapping[str, str] = field(hash=False)  # field name -> "flag" | "env MGMT_X" | "config <path>" | "default"
    config_file: Path | None
    warnings: tuple[str, ...] = ()  # about the config file (keys that are not settings); the CLI prints them

    def describe(self) -> list[tuple[str, str, str]]:
        """(ENV KEY, value as text, source) for every setting, in field order; the text is valid as an env value."""
        return [(env_key(name), format_value(name, getattr(self, name)), self.sources[name]) for name in SETTING_NAMES]


SETTING_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name not in ("sources", "config_file", "warnings")
)
CONFIG_KEYS = frozenset(ENV_PREFIX + name.upper() for name in SETTING_NAMES)


def env_key(name: str) -> str:
    """The environment / config file key of a setting: `concurrency` -> `MGMT_CONCURRENCY`."""
    return ENV_PREFIX + name.upper()
