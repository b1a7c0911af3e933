"""Generated, reproducible media folders for the demo and the benchmark (seeded random bytes, text, nesting)."""

from __future__ import annotations

import random
from pathlib import Path

from amgmt.parts import MiB

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
