"""Everyday polish of issue 15, without a server: -v/--debug/-q on every command, one timestamp format, counted
nouns, the nearest key of a mistyped config key, and the runs' wall time of `stats`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncclick as click
import pytest

from amgmt.cli import COMMANDS, AmgmtGroup, cli
from amgmt.cli.render import to_json
from amgmt.config import load_settings, nearest_key
from amgmt.models import UploadRecord, utcnow
from amgmt.objects.stats import busy_seconds, compute_statistics
from amgmt.store import UploadSummary
from amgmt.text import counted, iso_utc

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def all_commands() -> list[tuple[str, click.Command]]:
    group = AmgmtGroup("amgmt", lazy_commands=COMMANDS)
    ctx = click.Context(group, info_name="amgmt")
    found = []
    for name in COMMANDS:
        command = group.get_command(ctx, name)
        assert command is not None
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
    return found


def test_every_command_takes_quiet_verbose_and_debug() -> None:
    commands = all_commands()
    assert len(commands) >= 19
    for name, command in commands:
        opts = {opt for param in command.params for opt in param.opts}
        assert {"-q", "--quiet", "-v", "--verbose", "--debug"} <= opts, f"`amgmt {name}` lacks a global flag"
    group_opts = {opt for param in cli.params for opt in param.opts}
    assert {"-q", "--quiet", "-v", "--verbose", "--debug"} <= group_opts


def test_one_timestamp_format() -> None:
    moment = datetime(2026, 11, 25, 12, 34, 13, 5, tzinfo=timezone(timedelta(hours=1)))
    assert iso_utc(moment) == "2026-11-25T11:34:13.000005Z"
    assert iso_utc(datetime(2026, 11, 25, 11, 34, 13)) == "2026-11-25T11:34:13.000000Z"  # naive: UTC
    assert datetime.fromisoformat(iso_utc(moment)) == moment
    record = UploadRecord(operation_id="x", target_path="/a", target_name="a", started_at=moment)
    record.finish(record.status, when=moment + timedelta(seconds=1))
    data = record.to_dict()
    assert ISO_Z.match(data["started_at"]) and ISO_Z.match(data["completed_at"])
    assert json.loads(to_json({"when": moment, "nested": [utcnow()]}))["when"] == "2026-11-25T11:34:13.000005Z"


@pytest.mark.parametrize(
    ("n", "noun", "text"),
    [(1, "entry", "1 entry"), (0, "entry", "0 entries"), (2, "entry", "2 entries"), (1, "day", "1 day"),
     (3, "day", "3 days"), (2, "directory", "2 directories"), (2, "multipart upload", "2 multipart uploads")],
)
def test_counted(n: int, noun: str, text: str) -> None:
    assert counted(n, noun) == text


def test_nearest_key_of_a_mistyped_one() -> None:
    assert nearest_key("MGMT_BUKET") == "MGMT_BUCKET"
    assert nearest_key("MGMT_CONCURENCY") == "MGMT_CONCURRENCY"
    assert nearest_key("bucket") == "MGMT_BUCKET"
    assert nearest_key("MGMT_HOOKS") == "MGMT_HOOK"
    assert nearest_key("MGMT_QUUX") is None  # (MGMT_FOO is now close to MGMT_HOOK)


def test_unknown_config_keys_are_warned_about_never_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("MGMT_BUKET=b1\nAWS_SECRET_ACCESS_KEY=s3cr3t\nMGMT_QUUX=1\nOTHER=2\nMGMT_BUCKET=real-bucket\n")
    settings = load_settings(config_path=config, environ={"HOME": str(tmp_path)}, cwd=tmp_path, require_bucket=False)
    assert settings.bucket == "real-bucket"
    assert settings.warnings == (
        f"config file {config} line 1: MGMT_BUKET is not an amgmt setting (did you mean MGMT_BUCKET?); ignored",
        f"config file {config} line 3: MGMT_QUUX is not an amgmt setting; ignored",
    )
    assert "s3cr3t" not in repr(settings)


def _summary(start: float, seconds: float, size: int, status: str = "success") -> UploadSummary:
    started = datetime(2026, 11, 23, 9, 0, tzinfo=UTC) + timedelta(seconds=start)
    return UploadSummary(
        operation_id=f"op{start}", target_name="a", target_path="/a", status=status, stage="done",
        started_at=started, duration_seconds=seconds, original_size=size, compressed_size=size,
        s3_bucket="b", s3_object_key="a.tar.gz", error_message=None, source_modified_at=None,
    )


def test_stats_throughput_is_over_the_runs_wall_time() -> None:
    MiB = 1024 * 1024
    # one run of -c 3: three 4 s entries starting a second apart (6 s of wall time, 12 s of entry time), then a
    # second run an hour later with one entry of 2 s and a failure inside it
    rows = [_summary(0, 4, 6 * MiB), _summary(1, 4, 6 * MiB), _summary(2, 4, 6 * MiB),
            _summary(3600, 2, 6 * MiB), _summary(3600.5, 1, MiB, status="failed")]

    stats = compute_statistics(rows, tz=UTC)

    assert busy_seconds(rows) == 8.0
    assert stats.upload_seconds == 14.0 and stats.wall_seconds == 8.0
    assert stats.throughput == 24 * MiB / 8.0
