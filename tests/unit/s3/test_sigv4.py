"""amgmt.s3.sigv4 signs exactly as botocore does: the same request, the same Authorization header."""

from __future__ import annotations

import datetime
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.config import Config
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from amgmt.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Keys, Signer, encode_path

AMZ_DATE = "20261125T101112Z"
KEYS = Keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SESSION = Keys("ASIAEXAMPLE", "c2VjcmV0", "FwoGZXIvYXdzEBYaD+token/with=chars")


@pytest.fixture(autouse=True)
def _botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = datetime.datetime.strptime(AMZ_DATE, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)


def botocore_authorization(method: str, url: str, headers: dict[str, str], keys: Keys, *, unsigned: bool,
                           region: str) -> str:
    """What botocore's own S3 signer puts in Authorization for this request."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=None)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": not unsigned})
    S3SigV4Auth(Credentials(keys.access_key, keys.secret_key, keys.token), "s3", region).add_auth(request)
    return str(request.headers["Authorization"])


@pytest.mark.parametrize(
    "key",
    [
        "clip.mp4.tar.gz",
        "prefix/nested/dir name with spaces.tar.gz",
        "unicode/été 写真 ✓.tar.gz",
        "escaped/%25%0A%7F literal.tar.gz",  # amgmt's own %XX escapes must be encoded again, once
        "odd/+=&?#!$'()*,;:@[]~.tar.gz",
    ],
)
@pytest.mark.parametrize("keys", [KEYS, SESSION], ids=["keys", "session-token"])
def test_put_is_signed_as_botocore_signs_it(key: str, keys: Keys) -> None:
    path = encode_path(f"/bucket/{key}")
    headers = {
        "host": "127.0.0.1:9000",
        "content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "content-type": "application/gzip",
        "x-amz-meta-amgmt-source-sha256": "ab" * 32,
        "if-none-match": "*",
    }
    ours = Signer("eu-west-1").sign("PUT", path, {}, dict(headers), keys=keys, amz_date=AMZ_DATE,
                                    payload_hash=UNSIGNED_PAYLOAD)
    theirs = botocore_authorization("PUT", f"http://127.0.0.1:9000{path}", headers, keys, unsigned=True,
                                    region="eu-west-1")
    assert ours["authorization"] == theirs
    assert (ours.get("x-amz-security-token") is not None) == (keys.token is not None)


def test_head_of_a_virtual_hosted_bucket_is_signed_as_botocore_signs_it() -> None:
    path = encode_path("/photos/2024/a b.tar.gz")
    headers = {"host": "bucket.s3.us-east-1.amazonaws.com"}
    ours = Signer("us-east-1").sign("HEAD", path, {}, dict(headers), keys=KEYS, amz_date=AMZ_DATE,
                                    payload_hash=EMPTY_SHA256)
    theirs = botocore_authorization("HEAD", f"https://bucket.s3.us-east-1.amazonaws.com{path}", headers, KEYS,
                                    unsigned=False, region="us-east-1")
    assert ours["authorization"] == theirs


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    signer = Signer("us-east-1")
    first = signer.sign("HEAD", "/b/k", {}, {"host": "h"}, keys=KEYS, amz_date=AMZ_DATE)["authorization"]
    next_day = signer.sign("HEAD", "/b/k", {}, {"host": "h"}, keys=KEYS,
                           amz_date="20261126T000001Z")["authorization"]
    rotated = signer.sign("HEAD", "/b/k", {}, {"host": "h"}, keys=Keys(KEYS.access_key, "other-secret"),
                          amz_date=AMZ_DATE)["authorization"]
    again = signer.sign("HEAD", "/b/k", {}, {"host": "h"}, keys=KEYS, amz_date=AMZ_DATE)["authorization"]
    assert len({first, next_day, rotated}) == 3 and again == first
