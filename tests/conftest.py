"""Shared fixtures: one real moto S3 server over HTTP on 127.0.0.1 per session, a fresh bucket per test,
media factories, and Settings pointing at both."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server
from amgmt.config import Settings, load_settings


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """The real moto server process (HTTP on 127.0.0.1), or an external one given by AMGMT_TEST_ENDPOINT."""
    external = os.environ.get("AMGMT_TEST_ENDPOINT")
    if external:
        server = LocalS3Server()
        server.port = int(external.rsplit(":", 1)[1])
        yield server
        return
    with LocalS3Server() as server:
        yield server


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Test credentials for the local server only; no profile or config file of the developer leaks in."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "MGMT_")):
            monkeypatch.delenv(key)
    creds = {
        "AWS_ACCESS_KEY_ID": os.environ.get("AMGMT_TEST_ACCESS_KEY", LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"]),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AMGMT_TEST_SECRET_KEY", LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
    }
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", LOCAL_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path_factory.getbasetemp() / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path_factory.getbasetemp() / "no-aws-credentials"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-state"))


@pytest.fixture
def s3_client(s3_server: LocalS3Server) -> Any:
    """A plain boto3 client on the same server, to look at what amgmt did from the outside."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=LOCAL_REGION,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def local_dir(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(s3_server: LocalS3Server, bucket: str, local_dir: Path):  # type: ignore[no-untyped-def]
    """Settings for this test's local dir, bucket and the test server; keyword flags override."""

    def make(**flags: Any) -> Settings:
        base: dict[str, Any] = {
            "bucket": bucket,
            "local_dir": str(local_dir),
            "endpoint_url": s3_server.endpoint_url,
            "concurrency": 4,
        }
        base.update(flags)
        return load_settings(flags=base, environ={"HOME": str(local_dir.parent)}, require_bucket=True)

    return make


@pytest.fixture
def cli_env(s3_server: LocalS3Server, bucket: str, local_dir: Path) -> dict[str, str]:
    """Environment for running the `amgmt` CLI in a subprocess against this test's bucket and local dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_")}
    env.update(MGMT_BUCKET=bucket, MGMT_LOCAL_DIR=str(local_dir), MGMT_ENDPOINT_URL=s3_server.endpoint_url)
    return env


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.fixture
def make_media(local_dir: Path):  # type: ignore[no-untyped-def]
    """Create entries in the local dir: make_media({"a.mp4": 1000, "dir/b.txt": b"..", "empty-dir/": None})."""

    def make(spec: dict[str, int | bytes | None]) -> Path:
        for i, (rel, content) in enumerate(spec.items()):
            path = local_dir / rel
            if rel.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            elif isinstance(content, bytes):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            else:
                write_random(path, int(content or 0), seed=i)
        return local_dir

    return make


# -- a real S3 implementation beside moto: a single-node Ceph radosgw -------------------------------------------
# moto accepts what real servers reject (a wrong Content-MD5, storage classes without placement, ...). The tests that
# take the `real_s3` fixture run once against moto and once against radosgw, started by tests/tools/rgw_up.sh.
# Without Ceph installed the radosgw half is skipped, unless AMGMT_REQUIRE_RGW=1 (CI), where it is an error.
# AMGMT_TEST_RGW_ENDPOINT=http://127.0.0.1:PORT uses a radosgw that is already running (keys testkey/testsecret).

import contextlib  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from botocore.config import Config  # noqa: E402

from amgmt.bench.localserver import free_port  # noqa: E402

RGW_SCRIPT = Path(__file__).parent / "tools" / "rgw_up.sh"
RGW_KEYS = ("testkey", "testsecret")
RGW_TOOLS = ("radosgw", "radosgw-admin", "ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "uuidgen",
             "curl")
RGW_INSTALL = "apt-get install --no-install-recommends radosgw ceph-mon ceph-osd uuid-runtime curl"
RGW_START_TIMEOUT = 180.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rgw: runs against a real Ceph radosgw (deselect with -m 'not rgw')")
    config.addinivalue_line("markers", "pg: runs against a real PostgreSQL server (deselect with -m 'not pg')")


@dataclass(frozen=True)
class S3Target:
    """One S3 server the `real_s3` tests run against: its name ("moto" | "rgw"), endpoint and credentials."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        """A plain boto3 client, to set up and look at the bucket from outside amgmt."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )


def _rgw_missing_tools() -> list[str]:
    return [tool for tool in RGW_TOOLS if shutil.which(tool) is None]


def _rgw_log_tail(rgw_dir: Path, lines: int = 15) -> str:
    out = []
    for log in sorted((rgw_dir / "log").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(out)


def _rgw_stop(rgw_dir: Path) -> None:
    """rgw_up.sh DIR stop, then SIGKILL whichever of the daemons we started (by their pid files) still runs."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(["bash", str(RGW_SCRIPT), str(rgw_dir), "stop"], timeout=60, capture_output=True)
    for pid_file in (rgw_dir / "run").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def _rgw_start(base: Path) -> tuple[Path, int]:
    """Start a fresh cluster in a new dir under `base`, on free ports; (its dir, radosgw's port). Raises on failure."""
    problems = []
    for attempt in range(2):  # a second try on other ports when a free port was taken in between
        rgw_dir = base / f"rgw{attempt}"
        port = free_port()
        mon_port = free_port()
        while mon_port == port:
            mon_port = free_port()
        try:
            proc = subprocess.run(
                ["bash", str(RGW_SCRIPT), str(rgw_dir), str(port), str(mon_port)],
                capture_output=True,
                text=True,
                timeout=RGW_START_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            ok, output = proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        except subprocess.TimeoutExpired as exc:
            ok, output = False, f"no answer within {RGW_START_TIMEOUT:.0f} s: {exc.stdout!r} {exc.stderr!r}"
        if ok:
            return rgw_dir, port
        problems.append(f"attempt {attempt + 1} (port {port}, mon port {mon_port}): {output}\n{_rgw_log_tail(rgw_dir)}")
        _rgw_stop(rgw_dir)
    raise RuntimeError("radosgw did not start:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Target]:
    """A single-node Ceph radosgw on a free port of 127.0.0.1 for the whole session, stopped (and its data dir
    removed) at the end. Skipped when Ceph is not installed, an error instead with AMGMT_REQUIRE_RGW=1."""
    external = os.environ.get("AMGMT_TEST_RGW_ENDPOINT")
    if external:
        yield S3Target("rgw", external, *RGW_KEYS)
        return
    missing = _rgw_missing_tools()
    if missing:
        reason = f"Ceph radosgw is not installed (missing: {', '.join(missing)}; {RGW_INSTALL})"
        if os.environ.get("AMGMT_REQUIRE_RGW") == "1":
            pytest.fail(f"AMGMT_REQUIRE_RGW=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("ceph")
    try:
        rgw_dir, port = _rgw_start(base)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield S3Target("rgw", f"http://127.0.0.1:{port}", *RGW_KEYS)
    finally:
        _rgw_stop(rgw_dir)
        shutil.rmtree(base, ignore_errors=True)  # an 8 GiB sparse OSD block file: not kept with pytest's tmp dirs


@pytest.fixture(params=["moto", pytest.param("rgw", marks=pytest.mark.rgw)])
def real_s3(request: pytest.FixtureRequest, _aws_env: None, monkeypatch: pytest.MonkeyPatch) -> S3Target:
    """The S3 server of this test run, moto or radosgw; its credentials are in the environment amgmt reads."""
    if request.param == "rgw":
        target: S3Target = request.getfixturevalue("rgw_server")
    else:
        server: LocalS3Server = request.getfixturevalue("s3_server")
        target = S3Target("moto", server.endpoint_url, os.environ["AWS_ACCESS_KEY_ID"],
                          os.environ["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", target.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", target.secret_key)
    return target


@pytest.fixture
def real_client(real_s3: S3Target) -> Any:
    return real_s3.client()


@pytest.fixture
def real_bucket(real_s3: S3Target, real_client: Any) -> str:
    """A fresh bucket on this test's server."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    real_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_real_settings(real_s3: S3Target, real_bucket: str, local_dir: Path):  # type: ignore[no-untyped-def]
    """Like make_settings, for this test's server (moto or radosgw) and bucket."""

    def make(**flags: Any) -> Settings:
        base: dict[str, Any] = {
            "bucket": real_bucket,
            "local_dir": str(local_dir),
            "endpoint_url": real_s3.endpoint_url,
            "concurrency": 4,
        }
        base.update(flags)
        return load_settings(flags=base, environ={"HOME": str(local_dir.parent)}, require_bucket=True)

    return make


# -- moves: atomic renameat2 first, the two-step placement where a test injects faults through os ---------------------
# amgmt places an entry with one renameat2(RENAME_NOREPLACE) where the system has it (amgmt.local.placing), which
# never calls os.link/os.rename. Tests that inject failures or changes through those os functions exercise the
# two-step placement used where renameat2 is missing: while they are patched, it is what runs.

import amgmt.local.placing as _placing  # noqa: E402


@pytest.fixture(autouse=True)
def _two_step_moves_when_os_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    real = getattr(_placing, "rename_noreplace", None)
    if real is None:
        return
    originals = (os.link, os.rename, os.unlink)

    def rename_noreplace(source: Path, destination: Path) -> bool:
        if (os.link, os.rename, os.unlink) != originals:
            return False
        return real(source, destination)

    monkeypatch.setattr(_placing, "rename_noreplace", rename_noreplace)


# -- PostgreSQL for the store's second backend ------------------------------------------------------------------
# A throwaway cluster per session (tests/tools/pg_up.sh: initdb in a temp dir, 127.0.0.1, a free port, a generated
# password; as `nobody` when the tests run as root), a fresh database per test. Tests that take `pg_url` are marked
# `pg`. Without PostgreSQL installed they are skipped, unless AMGMT_REQUIRE_PG=1 (CI), where it is an error.
# AMGMT_TEST_PG_URL=postgresql://USER:PASSWORD@127.0.0.1:PORT/DB uses a server that is already running (its user
# must be allowed to create databases).

import glob  # noqa: E402
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

PG_SCRIPT = Path(__file__).parent / "tools" / "pg_up.sh"
PG_INSTALL = "apt-get install --no-install-recommends postgresql"
# The data of a test database is worth nothing after the test: no fsync, no waiting for the WAL on commit.
PG_TEST_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server of the test session: `url` names its `amgmt` database (the password in it)."""

    url: str

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    def psql(self, sql: str) -> None:
        """Run `sql` as the server's user; the password goes through the environment, never the command line."""
        parts = urlsplit(self.url)
        env = {**os.environ, "PGPASSWORD": parts.password or "", "PGCONNECT_TIMEOUT": "10"}
        netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        subprocess.run([_pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql], env=env,
                       check=True, capture_output=True, timeout=60)


def _pg_tool(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 for the whole session, stopped (its data removed)
    at the end. Skipped when PostgreSQL is not installed, an error instead with AMGMT_REQUIRE_PG=1."""
    external = os.environ.get("AMGMT_TEST_PG_URL")
    if external:
        yield PgServer(external)
        return
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        reason = f"PostgreSQL is not installed ({PG_INSTALL})"
        if os.environ.get("AMGMT_REQUIRE_PG") == "1":
            pytest.fail(f"AMGMT_REQUIRE_PG=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    pg_dir = tmp_path_factory.mktemp("pg")
    env = {**os.environ, "PG_UP_OPTIONS": PG_TEST_OPTIONS}
    problems = []
    for _attempt in range(2):  # a second try on another port when the free port was taken in between
        port = free_port()
        proc = subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), str(port)], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL, env=env)
        if proc.returncode == 0:
            break
        problems.append(f"port {port}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    else:
        subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), "stop"], capture_output=True, timeout=60)
        pytest.fail("PostgreSQL did not start:\n" + "\n".join(problems), pytrace=False)
    try:
        yield PgServer((pg_dir / "url").read_text().strip())
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), str(pg_dir), "stop"], capture_output=True, timeout=60)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database of the session's server (dropped after the test)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    try:
        yield pg_server.database_url(name)
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
