"""The benchmark's and the demo's data sets: named, scalable specs and reproducible generated media folders.

It owns what a data set is and writes its files; it never talks to S3 and never times anything."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from amgmt.errors import ConfigError
from amgmt.parts import GiB, MiB
from amgmt.text import human_size

_WORDS = ("frame", "scene", "take", "clip", "render", "audio", "track", "grade", "proxy", "cut", "lens", "shot")


def _random_file(path: Path, size: int, rng: random.Random) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def _text_file(path: Path, size: int, rng: random.Random) -> None:
    lines = []
    total = 0
    while total < size:
        line = f"{rng.randrange(10**6)},{rng.choice(_WORDS)},{rng.random():.6f},{' '.join(rng.choices(_WORDS, k=6))}\n"
        lines.append(line)
        total += len(line)
    path.write_text("".join(lines)[:size])


def make_demo_media(root: Path, *, seed: int = 7) -> Path:
    """A small but varied media folder: videos (one multipart-sized), photos, a project tree, odd names."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    _random_file(root / "holiday-2026.mp4", 24 * MiB, rng)
    _random_file(root / "interview take 2.mov", 6 * MiB, rng)
    for i in range(1, 4):
        _random_file(root / f"IMG_{1000 + i}.jpg", rng.randrange(2, 5) * MiB, rng)
    _random_file(root / "Café au lait — été.jpg", 1 * MiB, rng)
    project = root / "wedding-project"
    (project / "footage").mkdir(parents=True, exist_ok=True)
    (project / "edits" / "v2").mkdir(parents=True, exist_ok=True)
    (project / "empty-folder").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        _random_file(project / "footage" / f"clip{i:02d}.mp4", 512 * 1024, rng)
    for i in range(20):
        _text_file(project / "edits" / "v2" / f"timeline-{i:02d}.csv", 64 * 1024, rng)
    (project / "notes.txt").write_text("shot list\n" * 200)
    (project / "empty.txt").write_bytes(b"")
    return root


def make_media_set(root: Path, *, videos: int, video_size: int, texts: int, text_size: int, seed: int = 1) -> Path:
    """The benchmark's shape: `videos` incompressible files plus one directory of `texts` compressible files."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        _random_file(root / f"video-{i:03d}.mp4", video_size, rng)
    if texts:
        folder = root / "project-csv"
        folder.mkdir(exist_ok=True)
        for i in range(texts):
            _text_file(folder / f"table-{i:04d}.csv", text_size, rng)
    return root


def make_photo_set(root: Path, *, count: int, size: int, seed: int = 2) -> Path:
    """Many small incompressible entries (`count` files of `size` bytes, like photos): per-entry overhead."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _random_file(root / f"IMG_{i:05d}.jpg", size, rng)
    return root


# -- the benchmark's named data sets --------------------------------------------------------------------------


class DatasetName(StrEnum):
    MEDIA = "media"
    SMALL = "small"
    LARGE = "large"


@dataclass(frozen=True)
class DatasetSpec:
    """A reproducible generated data set. Each video and photo is an entry; the texts form one directory entry.

    Videos and photos are seeded random bytes (incompressible), texts are CSV lines (compressible about 4x).
    """

    name: str
    scale: float = 1.0
    videos: int = 0
    video_size: int = 0
    texts: int = 0
    text_size: int = 0
    photos: int = 0
    photo_size: int = 0
    seed: int = 1

    @property
    def entries(self) -> int:
        return self.videos + self.photos + (1 if self.texts else 0)

    @property
    def total_bytes(self) -> int:
        return self.videos * self.video_size + self.texts * self.text_size + self.photos * self.photo_size

    def describe(self) -> str:
        parts = []
        if self.videos:
            parts.append(f"{self.videos} x {human_size(self.video_size)} video")
        if self.texts:
            parts.append(f"1 dir of {self.texts} x {human_size(self.text_size)} CSV")
        if self.photos:
            parts.append(f"{self.photos} x {human_size(self.photo_size)} photo")
        scale = "" if self.scale == 1 else f", scale {self.scale:g}"
        return f"{self.name}{scale}: {' + '.join(parts)} = {self.entries} entries, {human_size(self.total_bytes)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": self.scale,
            "videos": self.videos,
            "video_size": self.video_size,
            "texts": self.texts,
            "text_size": self.text_size,
            "photos": self.photos,
            "photo_size": self.photo_size,
            "seed": self.seed,
            "entries": self.entries,
            "total_bytes": self.total_bytes,
            "description": self.describe(),
        }


_BASE_DATASETS = {
    DatasetName.MEDIA: DatasetSpec("media", videos=16, video_size=64 * MiB, texts=400, text_size=128 * 1024),
    DatasetName.SMALL: DatasetSpec("small", photos=2000, photo_size=64 * 1024),
    DatasetName.LARGE: DatasetSpec("large", videos=2, video_size=1 * GiB),
}


def dataset_spec(name: str, scale: float = 1.0) -> DatasetSpec:
    """The named data set, scaled: file sizes for `media` and `large`, the file count for `small`."""
    try:
        base = _BASE_DATASETS[DatasetName(name)]
    except ValueError:
        raise ConfigError(f"unknown data set {name!r}: expected one of {', '.join(DatasetName)}") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--scale must be a number greater than 0, got {scale}")
    if scale == 1:
        return base
    if base.photos:
        return replace(base, scale=scale, photos=max(1, round(base.photos * scale)))

    def sized(size: int) -> int:
        return max(1, round(size * scale)) if size else 0

    return replace(base, scale=scale, video_size=sized(base.video_size), text_size=sized(base.text_size))


def generate_dataset(spec: DatasetSpec, root: Path) -> Path:
    """Write the data set's entries directly into `root` (created); the same spec always gives the same bytes."""
    make_media_set(
        root, videos=spec.videos, video_size=spec.video_size, texts=spec.texts, text_size=spec.text_size, seed=spec.seed
    )
    if spec.photos:
        make_photo_set(root, count=spec.photos, size=spec.photo_size, seed=spec.seed + 1)
    return root
