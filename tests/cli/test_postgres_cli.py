"""`amgmt` on the PostgreSQL store (MGMT_DB_URL / --db-url) as a user runs it: a real upload recorded in a fresh
database of the session's server, `history --host`, `show`, `config` (the URL's password never shown), and the
database unreachable (exit 4, nothing moved). Marked `pg`: they need the PostgreSQL server of tests/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from amgmt.bench.localserver import free_port

pytestmark = pytest.mark.pg
PG_SCRIPT = Path(__file__).parents[1] / "tools" / "pg_up.sh"


def amgmt_env(amgmt) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment the `amgmt` fixture runs the CLI with (its closure's `base`)."""
    cells = dict(zip(amgmt.__code__.co_freevars, amgmt.__closure__ or (), strict=True))
    return dict(cells["base"].cell_contents)


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password and len(password) >= 16  # pg_up.sh generates one: the checks below mean something
    return password


def test_upload_recorded_in_postgresql_with_the_host(amgmt, make_media, local_dir: Path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    secret = password_of(pg_url)
    make_media({"a.mp4": 1000, "dir/b.txt": b"hello", "c.mov": 3000})
    env = {"MGMT_DB_URL": pg_url, "MGMT_HOST_ID": "ingest-a"}
    run = amgmt("upload", "all", env=env)
    assert run.code == 0, run
    assert sorted(p.name for p in (local_dir / "completed").iterdir() if p.name != ".metadata") == [
        "a.mp4",
        "c.mov",
        "dir",
    ]
    # The records are in PostgreSQL, not in a SQLite file beside the completed dir.
    assert not (local_dir / "completed" / ".metadata" / "operations.db").exists()

    run = amgmt("history", "--json", env=env)
    assert run.code == 0, run
    ops = json.loads(run.stdout)
    assert sorted((op["target_name"], op["status"], op["host_id"]) for op in ops) == [
        ("a.mp4", "success", "ingest-a"),
        ("c.mov", "success", "ingest-a"),
        ("dir", "success", "ingest-a"),
    ]
    # --db-url on the command line does the same as MGMT_DB_URL; --host filters exactly.
    run = amgmt("history", "--json", "--db-url", pg_url, "--host", "ingest-a")
    assert run.code == 0 and len(json.loads(run.stdout)) == 3, run
    run = amgmt("history", "--db-url", pg_url, "--host", "ingest-b")
    assert run.code == 0 and "no operations recorded matching these filters" in run.stdout, run
    run = amgmt("show", "--json", ops[0]["operation_id"][:8], env=env)
    assert run.code == 0 and json.loads(run.stdout)["host_id"] == "ingest-a", run
    run = amgmt("show", ops[0]["operation_id"][:8], env=env)
    assert run.code == 0 and any(line.split() == ["host_id", "ingest-a"] for line in run.stdout.splitlines()), run

    # A second host's run on the same catalog is recorded under its own host.
    make_media({"again.mp4": 1000})
    run = amgmt("upload", "all", "--json", env={**env, "MGMT_HOST_ID": "ingest-b"})
    assert run.code == 0, run
    run = amgmt("history", "--json", "--host", "ingest-b", env=env)
    assert [op["target_name"] for op in json.loads(run.stdout)] == ["again.mp4"], run

    for args in (("config",), ("config", "--db-url", pg_url), ("history",), ("upload", "all")):
        run = amgmt(*args, env=env)
        assert secret not in run.stdout + run.stderr, run
    run = amgmt("config", env=env)
    line = next(line for line in run.stdout.splitlines() if line.startswith("MGMT_DB_URL"))
    assert ":***@127.0.0.1:" in line, run
    line = next(line for line in run.stdout.splitlines() if line.startswith("MGMT_HOST_ID"))
    assert "ingest-a" in line, run


def test_database_unreachable_exits_4_and_moves_nothing(amgmt, make_media, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    make_media({"a.mp4": 1000, "b.mp4": 2000})
    url = f"postgresql://amgmt:not-the-password-7f3a@127.0.0.1:{free_port()}/amgmt"  # nobody listens there
    run = amgmt("upload", "all", env={"MGMT_DB_URL": url})
    assert run.code == 4, run
    assert run.stderr.startswith("amgmt: error: metadata database postgresql://amgmt:***@127.0.0.1:"), run
    assert "unreachable" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run
    assert "not-the-password-7f3a" not in run.stdout + run.stderr, run
    assert sorted(p.name for p in local_dir.iterdir() if p.name != "completed") == ["a.mp4", "b.mp4"]
    run = amgmt("history", env={"MGMT_DB_URL": url})
    assert run.code == 4 and "not-the-password-7f3a" not in run.stdout + run.stderr, run


def test_a_bad_database_url_is_refused_without_showing_its_password(amgmt) -> None:  # type: ignore[no-untyped-def]
    run = amgmt("history", env={"MGMT_DB_URL": "mysql://amgmt:hunter2-secret@127.0.0.1/amgmt"})
    assert run.code == 2, run
    assert "MGMT_DB_URL=mysql://amgmt:***@127.0.0.1/amgmt" in run.stderr, run
    assert "hunter2-secret" not in run.stdout + run.stderr, run


def test_db_migrate_copies_the_sqlite_history_once_and_verifies_it(amgmt, make_media, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    secret = password_of(pg_url)
    make_media({"a.mp4": 1000, "dir/b.txt": b"hello", "big.mov": 9 * 2**20})  # big.mov: a multipart upload
    env = {"MGMT_HOST_ID": "ingest-a"}
    assert amgmt("upload", "all", env=env).code == 0
    before = amgmt("history", "--json", "-n", "0", env=env)
    assert before.code == 0, before

    run = amgmt("db", "migrate", "--to", pg_url, env=env)
    assert run.code == 0, run
    assert run.stdout.startswith(
        "copied 3 operations (12 file records) and 1 journaled multipart upload (2 parts) from "
    )
    assert "into postgresql://amgmt:***@127.0.0.1:" in run.stdout and "every one found there" in run.stdout, run
    again = amgmt("db", "migrate", "--to", pg_url, "--json", env=env)  # idempotent: the same counts, nothing doubled
    assert again.code == 0, again
    report = json.loads(again.stdout)
    assert report["verified"] is True
    assert (report["operations"], report["found_operations"], report["upload_parts"]) == (3, 3, 2)
    for output in (run.stdout + run.stderr, again.stdout + again.stderr):
        assert secret not in output

    after = amgmt("history", "--json", "-n", "0", env={**env, "MGMT_DB_URL": pg_url})
    assert after.code == 0, after
    assert json.loads(after.stdout) == json.loads(before.stdout)  # the same records, in the same order
    assert {op["host_id"] for op in json.loads(after.stdout)} == {"ingest-a"}


def test_db_migrate_refuses_a_bad_url_and_a_missing_history(amgmt) -> None:  # type: ignore[no-untyped-def]
    run = amgmt("db", "migrate", "--to", "sqlite:///tmp/x.db")
    assert run.code == 2 and "MGMT_DB_URL=sqlite:///tmp/x.db (from flag): expected a postgresql://" in run.stderr, run
    run = amgmt("db", "migrate", "--to", "postgresql://amgmt:pw-secret-9@127.0.0.1:1/amgmt")
    assert run.code == 2 and "no metadata database at" in run.stderr and "pw-secret-9" not in run.stderr, run


def test_two_runs_on_one_folder_seen_at_two_paths_share_it_through_their_claims(  # type: ignore[no-untyped-def]
    amgmt, make_media, local_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    # One folder mounted at two paths (two hosts, NFS): flock does not reach across, the catalog's claims do. Here
    # two folders stand for the two views of one: they share the metadata dir that holds the folder's id (dir-id), as
    # the two hosts' views of one folder do. The second run starts while the first is still going (in its hook).
    make_media({"a.mp4": 1000})
    other_view = tmp_path / "mounted-elsewhere"
    other_view.mkdir()
    (other_view / "a.mp4").write_bytes((local_dir / "a.mp4").read_bytes())
    (other_view / "b.mp4").write_bytes(b"b" * 1000)
    env = {"MGMT_DB_URL": pg_url, "MGMT_DB_PATH": str(tmp_path / "shared-metadata" / "operations.db")}
    started, release = tmp_path / "hook-started", tmp_path / "hook-release"
    # The first run's hook holds it (its lease alive) until the test has run the second: no sleep decides.
    hook = f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"
    first = subprocess.Popen(
        [sys.executable, "-m", "amgmt", "upload", "all", "--hook", hook, "--json"],
        env={**os.environ, **amgmt_env(amgmt), **env, "MGMT_HOOK_TIMEOUT": "120", "MGMT_HOST_ID": "ingest-a"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        run = amgmt("upload", "all", "--json", "--local-dir", str(other_view), env={**env, "MGMT_HOST_ID": "b"})
        assert run.code == 0, run
        report = json.loads(run.stdout)
        # a.mp4 ended in the first run before this one started (its hook runs after): no claim holds it, and its
        # content is in the catalog already, uploaded by the other host: skipped. b.mp4 is this run's.
        assert report["elsewhere"] == [], report
        done = sorted((op["target_name"], op["status"]) for op in report["operations"])
        assert done == [("a.mp4", "skipped"), ("b.mp4", "success")], report
        assert password_of(pg_url) not in run.stdout + run.stderr
        assert not (other_view / "b.mp4").exists()
        fleet = amgmt("fleet", "--json", env=env)
        assert fleet.code == 0, fleet
        alive = [(h["host_id"], r["in_flight"]) for h in json.loads(fleet.stdout) for r in h["runs"] if r["alive"]]
        assert alive == [("ingest-a", 0)], fleet.stdout  # its entry ended (the hook runs after): nothing claimed
    finally:
        release.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert [(op["target_name"], op["status"]) for op in json.loads(out)["operations"]] == [("a.mp4", "success")]


def test_the_server_stopped_mid_run_stops_it_with_exit_4_and_a_rerun_repairs(  # type: ignore[no-untyped-def]
    amgmt, make_media, local_dir: Path, tmp_path: Path, s3_client, bucket: str
) -> None:
    # A server of this test's own: the first entry's hook stops it (the run is not told), so the database goes away
    # in the middle of the run, at a point no sleep decides.
    pg_dir = tmp_path / "pg"
    port = str(free_port())
    started = subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), port], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        url = (pg_dir / "url").read_text().strip()
        make_media({"a.mp4": 1000, "b.mp4": 2000, "c.mp4": 3000})
        env = {"MGMT_DB_URL": url, "MGMT_CONCURRENCY": "1", "MGMT_SMALL_ENTRY_SIZE": "0"}  # one entry after another
        halt = f"bash {PG_SCRIPT} {pg_dir} halt"
        run = amgmt("upload", "all", "--hook", halt, env=env, timeout=120)
        assert run.code == 4, run
        assert "Traceback" not in run.stderr, run
        assert "metadata database postgresql://amgmt:***@127.0.0.1:" in run.stdout + run.stderr, run
        assert password_of(url) not in run.stdout + run.stderr
        moved = sorted(p.name for p in (local_dir / "completed").iterdir() if p.name != ".metadata")
        assert len(moved) <= 2, run  # the run stopped: not every entry went through

        again = subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), port], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        run = amgmt("upload", "all", env=env, timeout=120)
        assert run.code == 0, run
        assert sorted(p.name for p in (local_dir / "completed").iterdir() if p.name != ".metadata") == [
            "a.mp4",
            "b.mp4",
            "c.mp4",
        ]
        assert sorted(p.name for p in local_dir.iterdir() if p.name != "completed") == []
        keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))
        assert keys == ["a.mp4.tar.gz", "b.mp4.tar.gz", "c.mp4.tar.gz"]
        history = json.loads(amgmt("history", "--json", "-n", "0", env=env).stdout)
        done = sorted(op["target_name"] for op in history if op["status"] in ("success", "skipped"))
        assert set(done) == {"a.mp4", "b.mp4", "c.mp4"}, history
        assert not [op for op in history if op["status"] == "pending"], history
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), "stop"], capture_output=True, timeout=60)


def test_fleet_lists_the_hosts_of_the_catalog(amgmt, make_media, local_dir: Path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    make_media({"a.mp4": 1000, "b.mp4": 2000})
    assert amgmt("upload", "all", env={"MGMT_DB_URL": pg_url, "MGMT_HOST_ID": "ingest-a"}).code == 0
    make_media({"c.mp4": 3000})
    assert amgmt("upload", "all", env={"MGMT_DB_URL": pg_url, "MGMT_HOST_ID": "ingest-b"}).code == 0

    run = amgmt("fleet", "--json", env={"MGMT_DB_URL": pg_url})
    assert run.code == 0, run
    hosts = json.loads(run.stdout)
    assert [
        (h["host_id"], h["pending"], h["done_last_hour"], h["failed_last_hour"], h["bytes_last_hour"]) for h in hosts
    ] == [("ingest-b", 0, 1, 0, 3000), ("ingest-a", 0, 2, 0, 3000)]
    assert all(h["last_seen"].endswith("Z") for h in hosts)
    run = amgmt("fleet", env={"MGMT_DB_URL": pg_url})
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].split() == [
        "HOST", "LAST", "SEEN", "HEARTBEAT", "RUNS", "IN", "FLIGHT", "PENDING", "DONE", "1H", "FAILED", "1H",
        "THROUGHPUT", "1H",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:3]] == ["ingest-b", "ingest-a"]
    assert lines[3] == "" and lines[4].split()[:3] == ["RUN", "HOST", "PID"]
    assert sorted((line.split()[1], line.split()[-1]) for line in lines[5:]) == [
        ("ingest-a", "ended"),
        ("ingest-b", "ended"),
    ]
    assert all(h["runs_alive"] == 0 and h["in_flight"] == 0 and h["last_heartbeat"].endswith("Z") for h in hosts)
