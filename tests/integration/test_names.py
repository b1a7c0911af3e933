"""`upload NAME`: resolve_names accepts entries of the local dir and refuses everything else before any upload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amgmt.local.entries import list_entries, resolve_names
from amgmt.upload.batch import upload_batch
from amgmt.errors import ConfigError, NotFoundError


@pytest.fixture
def media(make_media, local_dir: Path, tmp_path: Path) -> Path:
    make_media({"clip.mp4": 1234, "album/a.jpg": 100, "album/sub/b.jpg": 200, "other.mp4": 10})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not ours")
    (local_dir / "link.mp4").symlink_to(local_dir / "clip.mp4")
    (local_dir / "linkdir").symlink_to(outside)
    os.mkfifo(local_dir / "pipe")
    return local_dir


async def test_single_file_name(make_settings, media: Path, s3view, files, tmp_path: Path) -> None:
    settings = make_settings()
    entries = resolve_names(settings, ["clip.mp4"])
    assert entries == [media / "clip.mp4"]
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": 1}
    assert s3view.keys() == ["clip.mp4.tar.gz"]
    assert files.extract(s3view.get("clip.mp4.tar.gz"), tmp_path / "x") == ["clip.mp4"]
    assert (settings.completed_dir / "clip.mp4").stat().st_size == 1234
    assert (media / "other.mp4").exists() and (media / "album").is_dir()


async def test_single_directory_name(make_settings, media: Path, s3view, files, tmp_path: Path) -> None:
    settings = make_settings()
    # a trailing slash, an absolute path and a repeat all name the same entry once
    entries = resolve_names(settings, ["album/", str(media / "album"), "album"])
    assert entries == [media / "album"]
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": 1}
    assert report.records[0].original_size == 300
    assert s3view.keys() == ["album.tar.gz"]
    files.extract(s3view.get("album.tar.gz"), tmp_path / "x")
    assert (tmp_path / "x/album/sub/b.jpg").stat().st_size == 200
    assert (settings.completed_dir / "album/sub/b.jpg").is_file() and not (media / "album").exists()


@pytest.mark.parametrize(
    ("name", "error", "says"),
    [
        ("../outside/secret.txt", ConfigError, "outside the local dir"),
        ("..", ConfigError, "not the directory itself"),
        (".", ConfigError, "not the directory itself"),
        ("", ConfigError, "invalid entry name"),
        ("clip\x00.mp4", ConfigError, "invalid entry name"),
        ("{outside}/secret.txt", ConfigError, "outside the local dir"),
        ("{local}", ConfigError, "not the directory itself"),
        ("linkdir/secret.txt", ConfigError, "outside the local dir"),
        ("missing.mp4", NotFoundError, "no such file or directory"),
        ("nodir/missing.mp4", NotFoundError, "no such file or directory"),
        ("link.mp4", ConfigError, "symbolic link"),
        ("linkdir", ConfigError, "symbolic link"),
        ("pipe", ConfigError, "not a regular file or directory"),
        ("completed", ConfigError, "completed/metadata/staging"),
        ("completed/.metadata/operations.db", ConfigError, "completed/metadata/staging"),
    ],
)
async def test_bad_names_are_refused_before_any_upload(
    make_settings, media: Path, s3view, tmp_path: Path, name: str, error: type[Exception], says: str
) -> None:
    settings = make_settings()
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    settings.db_path.touch()
    name = name.format(outside=tmp_path / "outside", local=media)
    with pytest.raises(error, match=says) as caught:
        entries = resolve_names(settings, ["clip.mp4", name])
        await upload_batch(settings, entries)
    assert type(caught.value) is error
    assert s3view.keys() == []
    assert (media / "clip.mp4").exists() and (tmp_path / "outside/secret.txt").exists()


def test_list_entries_reports_what_it_ignores(make_settings, media: Path) -> None:
    settings = make_settings()
    entries, ignored = list_entries(settings)
    assert [e.name for e in entries] == ["album", "clip.mp4", "other.mp4"]
    assert sorted(ignored) == [
        "link.mp4: symbolic link (upload its target instead)",
        "linkdir: symbolic link (upload its target instead)",
        "pipe: not a regular file or directory",
    ]


async def test_longest_names_round_trip(make_settings, make_media, local_dir: Path, s3view, files, tmp_path) -> None:
    """Names at the 255-byte limit, also in 3-byte UTF-8 characters: the staging file name must still fit."""
    names = ["あ" * 83 + ".mp4", "x" * 251 + ".mp4"]
    assert [len(os.fsencode(n)) for n in names] == [253, 255]
    make_media({n: 100 + i for i, n in enumerate(names)})
    settings = make_settings()
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    assert s3view.keys() == sorted(f"{n}.tar.gz" for n in names)
    for i, name in enumerate(names):
        assert files.extract(s3view.get(f"{name}.tar.gz"), tmp_path / str(i)) == [name]
        assert (settings.completed_dir / name).stat().st_size == 100 + i
    assert os.listdir(settings.staging_dir) == []
