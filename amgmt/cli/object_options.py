"""The options of the commands that upload (upload, retry, watch) about what is written to S3 and how: what a key
holding other content means (--on-conflict), the object's encryption, tags, metadata and ACL, and the bandwidth
limit. Each is a setting (MGMT_*); the flags only override it. Shared by command modules, imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import asyncclick as click

from amgmt.config.values import CANNED_ACLS, CONFLICT_MODES, SSE_MODES

F = TypeVar("F", bound=Callable[..., Any])

# The settings these options set (their parameter names are the settings' names).
OBJECT_FLAGS = ("on_conflict", "sse", "sse_kms_key_id", "tags", "metadata", "acl", "bwlimit")


def object_options(func: F) -> F:
    """--on-conflict, --sse, --sse-kms-key-id, --tag, --metadata, --acl, --bwlimit; the values are checked by the
    settings (a bad one: one line, exit 2), so the choices here are only for the help."""
    options = [
        click.option(
            "--on-conflict",
            "on_conflict",
            metavar="|".join(CONFLICT_MODES),
            default=None,
            help="When the key holds other content: fail, upload under NAME-2... (rename), or replace it"
            " (overwrite) [MGMT_ON_CONFLICT, default fail].",
        ),
        click.option(
            "--sse", metavar="|".join(SSE_MODES), default=None, help="Server-side encryption of objects [MGMT_SSE]."
        ),
        click.option(
            "--sse-kms-key-id",
            metavar="KEY",
            default=None,
            help="KMS key (id, ARN or alias) of --sse aws:kms [MGMT_SSE_KMS_KEY_ID, default: aws/s3].",
        ),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Object tag (repeatable) [MGMT_TAGS]."),
        click.option(
            "--metadata",
            "metadata",
            multiple=True,
            metavar="KEY=VALUE",
            help="User metadata, x-amz-meta-KEY (repeatable) [MGMT_METADATA].",
        ),
        click.option(
            "--acl", metavar="CANNED-ACL", default=None, help=f"Canned ACL ({', '.join(CANNED_ACLS)}) [MGMT_ACL]."
        ),
        click.option(
            "--bwlimit",
            metavar="RATE",
            default=None,
            help="Bandwidth limit of the whole run, rclone's syntax: 10M = 10 MiB/s, 512K, off [MGMT_BWLIMIT].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def pop_object_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings flags of `object_options`, taken out of a command's kwargs (a repeatable option not given is
    None, so MGMT_* and the config file still apply)."""
    return {name: kwargs.pop(name, None) or None for name in OBJECT_FLAGS}


def object_args(settings: Any) -> dict[str, Any]:
    """What these settings were in a run, for the record's command_args."""
    return {name: getattr(settings, name) for name in OBJECT_FLAGS}
