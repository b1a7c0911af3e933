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

from amgmt.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server
from amgmt.settings import Settings, load_settings


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
