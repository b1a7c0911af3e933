"""amgmt.parts: part sizing within S3's limits and the ETag S3 computes, predicted locally."""

from __future__ import annotations

import hashlib

import pytest

from amgmt.parts import (
    GiB,
    MAX_PART_SIZE,
    MAX_PARTS,
    MiB,
    MIN_PART_SIZE,
    expected_etag,
    is_md5_style_etag,
    md5_base64,
    normalise_etag,
    part_ranges,
    plan_part_size,
)


def test_the_configured_part_size_is_raised_to_the_minimum_and_to_fit_in_max_parts() -> None:
    assert plan_part_size(100 * MiB, 1 * MiB) == MIN_PART_SIZE
    assert plan_part_size(100 * MiB, 8 * MiB) == 8 * MiB
    big = 200 * GiB
    size = plan_part_size(big, 8 * MiB)
    assert size % MiB == 0 and size * MAX_PARTS >= big and (size - MiB) * MAX_PARTS < big
    assert plan_part_size(10**15, 8 * MiB) == MAX_PART_SIZE


@pytest.mark.parametrize(("total", "part", "expected"), [
    (0, 5 * MiB, [(1, 0, 0)]),
    (1, 5 * MiB, [(1, 0, 1)]),
    (10 * MiB, 5 * MiB, [(1, 0, 5 * MiB), (2, 5 * MiB, 5 * MiB)]),
    (11 * MiB, 5 * MiB, [(1, 0, 5 * MiB), (2, 5 * MiB, 5 * MiB), (3, 10 * MiB, MiB)]),
])
def test_part_ranges_cover_the_object_exactly(total: int, part: int, expected: list[tuple[int, int, int]]) -> None:
    assert part_ranges(total, part) == expected


def test_the_single_put_etag_is_the_md5_and_the_multipart_one_the_md5_of_md5s() -> None:
    data = [b"a" * 100, b"b" * 50]
    md5s = [hashlib.md5(d).hexdigest() for d in data]
    assert expected_etag([md5s[0]], multipart=False) == md5s[0]
    joined = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in data)).hexdigest()
    assert expected_etag(md5s, multipart=True) == f"{joined}-2"
    with pytest.raises(ValueError):
        expected_etag(md5s, multipart=False)


def test_etags_are_normalised_and_recognised() -> None:
    assert normalise_etag('"ABCDEF0123456789abcdef0123456789-3"') == "abcdef0123456789abcdef0123456789-3"
    assert normalise_etag(None) == ""
    assert is_md5_style_etag('"d41d8cd98f00b204e9800998ecf8427e"')
    assert not is_md5_style_etag("not-an-md5") and not is_md5_style_etag("")


def test_content_md5_is_the_base64_of_the_binary_md5() -> None:
    assert md5_base64(hashlib.md5(b"").hexdigest()) == "1B2M2Y8AsgTpgAmY7PhCfg=="
