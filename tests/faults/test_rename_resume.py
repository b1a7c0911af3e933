"""--on-conflict rename after a crash: a run killed while sending the parts of a renamed key (GX010234-2...) leaves
its reservation and journal there; the next run with rename comes back to that same key, takes over its own
reservation and resumes the upload (only the missing parts sent), so no third key and no second object appear."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from amgmt.parts import MiB

KILLPOINT = Path(__file__).parent / "killpoint.py"
NAME = "GX010234.MP4"


def _cli(env: dict[str, str], *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(KILLPOINT)] if kill_at else [sys.executable, "-m", "amgmt"]
    return subprocess.run([*command, *args], env={**env, "AMGMT_KILL_AT": kill_at or ""}, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_killed_renamed_upload_resumes_at_its_renamed_key(cli_env: dict[str, str], local_dir: Path,
                                                           tmp_path: Path, s3_client: Any, bucket: str) -> None:
    env = {**cli_env, "XDG_STATE_HOME": str(tmp_path / "state"), "MGMT_CONCURRENCY": "1",
           "MGMT_PART_SIZE": "5MiB", "MGMT_PARTS_IN_FLIGHT": "1", "MGMT_ON_CONFLICT": "rename"}
    (local_dir / NAME).write_bytes(b"card one")
    assert _cli(env, "upload", NAME).returncode == 0
    second = random.Random(2).randbytes(21 * MiB)  # 5 parts of 5 MiB
    (local_dir / NAME).write_bytes(second)

    killed = _cli(env, "upload", NAME, "--no-progress",
                  kill_at="amgmt.upload.records.StoreJournal.part_done||2|after")

    assert killed.returncode == -signal.SIGKILL, killed
    assert (local_dir / NAME).read_bytes() == second, "the original is never moved before verification"
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["GX010234-2.MP4.tar.gz"]

    rerun = _cli(env, "upload", NAME, "--json")

    assert rerun.returncode == 0, rerun
    [op] = json.loads(rerun.stdout)["operations"]
    assert op["status"] == "success" and op["s3_object_key"] == "GX010234-2.MP4.tar.gz"
    assert op["metadata"]["parts_reused"] >= 2 and op["metadata"]["resumed_upload_id"] == uploads[0]["UploadId"]
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["GX010234-2.MP4.tar.gz", "GX010234.MP4.tar.gz"]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
