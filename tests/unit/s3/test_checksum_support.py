"""Which uploads need part MD5s, from what the checksum probe found (probe.ChecksumSupport.needs_md5)."""

from __future__ import annotations

import pytest

from amgmt.s3.probe import MD5_ONLY, ChecksumSupport

AWS = ChecksumSupport("crc64nvme", single_put=True, multipart=True)  # checks every body's checksum
MOTO = ChecksumSupport("crc64nvme", single_put=False, multipart=True)  # computes a multipart upload's, echoes a PUT's
RADOSGW = ChecksumSupport(None)  # keeps none


@pytest.mark.parametrize(
    ("support", "single", "multipart", "either"),
    [(AWS, False, False, False), (MOTO, True, False, True), (RADOSGW, True, True, True), (MD5_ONLY, True, True, True)],
)
def test_md5s_are_needed_exactly_where_no_flexible_checksum_proves_the_upload(
    support: ChecksumSupport, single: bool, multipart: bool, either: bool
) -> None:
    assert support.needs_md5(multipart=False) is single
    assert support.needs_md5(multipart=True) is multipart
    assert support.needs_md5(multipart=None) is either  # the kind not known yet: needed if either kind needs them
    for kind in (False, True):  # never neither an MD5 nor a checksum to send and verify by
        assert support.needs_md5(multipart=kind) or support.sends(multipart=kind) is not None
