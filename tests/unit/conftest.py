"""tests/unit is the fast loop (`make test-fast`): pure code and real files, no S3 server, no subprocess CLI runs.

A unit test that asks for a server fails at once instead of quietly making the loop slow."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def s3_server() -> None:
    pytest.fail("tests/unit must not use an S3 server: put this test under tests/integration", pytrace=False)
