"""Integration helpers: looking at the bucket from outside (boto3), unpacking objects, and comparing file trees."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

Tree = dict[bytes, tuple[str, bytes]]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_of(path: Path) -> Tree:
    """Relative path (file-system bytes) -> ("file", bytes) | ("dir", b"") of `path` and everything below it."""
    out: Tree = {}

    def visit(p: Path, rel: bytes) -> None:
        mode = p.lstat().st_mode
        if stat.S_ISDIR(mode):
            out[rel] = ("dir", b"")
            for child in os.scandir(p):
                visit(Path(child.path), rel + b"/" + os.fsencode(child.name))
        elif stat.S_ISREG(mode):
            out[rel] = ("file", p.read_bytes())
        else:
            out[rel] = ("other", b"")

    visit(path, os.fsencode(path.name))
    return out


def manifest_sha256(path: Path) -> str:
    """A directory's `checksum_original`, computed independently from archive.compress_entry's documented manifest."""
    lines = []
    for rel, (kind, data) in sorted(tree_of(path).items()):
        fields = (b"file", str(len(data)).encode(), sha256(data).encode()) if kind == "file" else (b"dir", b"0", b"")
        lines.append(b"\0".join((rel, *fields)) + b"\n")
    return sha256(b"".join(lines))


def source_sha256(path: Path) -> str:
    return manifest_sha256(path) if path.is_dir() else sha256(path.read_bytes())


def source_size(path: Path) -> int:
    return sum(len(data) for kind, data in tree_of(path).values() if kind == "file")


def extract(data: bytes, dest: Path) -> list[str]:
    """Unpack a tar.gz into `dest` (created); returns the top-level member names."""
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tops = sorted({m.name.split("/", 1)[0] for m in tar.getmembers()})
        tar.extractall(dest, filter="data")
    return tops


@dataclass
class BucketView:
    """The bucket as a plain boto3 client sees it."""

    client: Any
    name: str

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def head(self, key: str) -> dict[str, Any]:
        return self.client.head_object(Bucket=self.name, Key=key)

    def put(self, key: str, data: bytes, **extra: Any) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data, **extra)

    def versions(self, key: str) -> list[dict[str, Any]]:
        resp = self.client.list_object_versions(Bucket=self.name, Prefix=key)
        return [v for v in resp.get("Versions", []) if v["Key"] == key]


class Files:
    """The helpers above, for tests (a fixture, so that no test module imports a conftest)."""

    tree_of = staticmethod(tree_of)
    extract = staticmethod(extract)
    sha256 = staticmethod(sha256)
    source_sha256 = staticmethod(source_sha256)
    source_size = staticmethod(source_size)


@pytest.fixture
def files() -> type[Files]:
    return Files


@pytest.fixture
def s3view(s3_client: Any, bucket: str) -> BucketView:
    return BucketView(s3_client, bucket)


@pytest.fixture
def snapshot(local_dir: Path, tmp_path: Path) -> Callable[[], Path]:
    """Copy the local dir (before an upload moves its entries away) to tmp_path/before; returns the copy."""

    def take() -> Path:
        copy = tmp_path / "before"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(local_dir, copy, symlinks=True)
        return copy

    return take
