"""Bad input: one line on stderr starting "amgmt: error:", no traceback, the documented exit code, nothing changed."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amgmt.bench.localserver import free_port
from clikit import snapshot


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    says: str  # a piece of the message naming what is wrong
    env: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    needs_db: bool = False


# "{tmp}" in an argument or value is this test's tmp_path.
USAGE_ERRORS = {
    "no-bucket": Case(("upload", "all"), "MGMT_BUCKET", drop=("MGMT_BUCKET",)),
    "missing-local-dir": Case(("upload", "all"), "MGMT_LOCAL_DIR", env={"MGMT_LOCAL_DIR": "{tmp}/nowhere"}),
    "unknown-duplicate-handling": Case(("upload", "all"), "MGMT_DUPLICATE_HANDLING",
                                       env={"MGMT_DUPLICATE_HANDLING": "sometimes"}),
    "concurrency-not-a-number": Case(("upload", "all"), "MGMT_CONCURRENCY", env={"MGMT_CONCURRENCY": "abc"}),
    "no-such-name": Case(("upload", "nosuch.mp4"), "nosuch.mp4"),
    "dotdot-outside": Case(("upload", "../outside.mp4"), "outside the local dir"),
    "absolute-outside": Case(("upload", "{tmp}/outside.mp4"), "outside the local dir"),
    "symlink": Case(("upload", "link.mp4"), "symbolic link"),
    "all-with-names": Case(("upload", "all", "a.mp4"), "`all` cannot be combined"),
    "show-unknown-id": Case(("show", "ffff0000"), "no operation with id ffff0000", needs_db=True),
    "history-since-garbage": Case(("history", "--since", "garbage"), "--since"),
}


def fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.fixture
def media(make_media, local_dir: Path, tmp_path: Path) -> Path:
    make_media({"a.mp4": 1000, "dir/b.txt": b"hello"})
    (tmp_path / "outside.mp4").write_bytes(b"not in the local dir")
    os.symlink("a.mp4", local_dir / "link.mp4")
    return local_dir


def assert_one_error_line(run, says: str) -> None:  # type: ignore[no-untyped-def]
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("amgmt: error: "), run
    assert says in lines[0], run
    assert "Traceback" not in run.stderr + run.stdout


@pytest.mark.parametrize("case", list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS))
def test_usage_error(amgmt, media: Path, tmp_path: Path, keys, case: Case) -> None:
    if case.needs_db:
        assert amgmt("upload", "a.mp4").code == 0
    before, in_bucket = snapshot(tmp_path), keys()

    run = amgmt(*(fill(a, tmp_path) for a in case.args), env={k: fill(v, tmp_path) for k, v in case.env.items()},
                drop=case.drop)

    assert run.code == 2, run
    assert_one_error_line(run, case.says)
    assert run.stdout == ""
    assert snapshot(tmp_path) == before
    assert keys() == in_bucket


def test_missing_bucket_exits_3(amgmt, media: Path, keys) -> None:
    run = amgmt("upload", "all", env={"MGMT_BUCKET": f"amgmt-missing-{uuid.uuid4().hex[:12]}"})

    assert run.code == 3, run
    assert_one_error_line(run, "does not exist")
    assert (media / "a.mp4").exists() and (media / "dir" / "b.txt").exists()


def test_endpoint_down_exits_3_quickly(amgmt, media: Path) -> None:
    started = time.monotonic()
    run = amgmt("upload", "all", env={"MGMT_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    took = time.monotonic() - started

    assert run.code == 3, run
    assert_one_error_line(run, "cannot reach the S3 endpoint")
    assert took < 30, f"took {took:.1f} s"
    assert (media / "a.mp4").exists() and (media / "dir" / "b.txt").exists()
