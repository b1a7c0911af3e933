"""AWS Signature Version 4 for S3 requests signed in headers: the few lines botocore runs per request, without the
rest of botocore's per-call machinery (see `s3.DirectRequests`). Pure functions over strings; no I/O.

Reference: https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html. S3 differs from other
services in two ways kept here: the canonical URI is the path exactly as sent (each key byte percent-encoded once,
never twice, no dot-segment normalisation), and the payload hash may be the literal `UNSIGNED-PAYLOAD`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Keys:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def encode_query(query: Mapping[str, str]) -> str:
    """The canonical query string (sorted, every byte but -_.~ and alphanumerics percent-encoded): also what is
    sent, so that the server's canonical form is the same."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))


def encode_path(path: str) -> str:
    """A URL path (`/bucket/key`) percent-encoded as S3 and botocore do: UTF-8, every byte but unreserved and `/`."""
    return quote(path, safe="/~")


class Signer:
    """Signs requests for one region; the signing key is derived once per day and secret."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (day, secret, key)

    def sign(
        self,
        method: str,
        encoded_path: str,
        query: Mapping[str, str],
        headers: dict[str, str],
        *,
        keys: Keys,
        amz_date: str,
        payload_hash: str = UNSIGNED_PAYLOAD,
    ) -> dict[str, str]:
        """Add x-amz-date, x-amz-content-sha256, x-amz-security-token (when there is one) and Authorization to
        `headers` (lower-case names, `host` included) and return them; every header given is signed."""
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        if keys.token:
            headers["x-amz-security-token"] = keys.token
        names = sorted(headers)
        canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names)
        signed_headers = ";".join(names)
        canonical_query = encode_query(query)
        canonical_request = "\n".join(
            (method, encoded_path, canonical_query, canonical_headers, signed_headers, payload_hash)
        )
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        string_to_sign = "\n".join(
            (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
        )
        signature = hmac.new(
            self._signing_key(day, keys.secret_key), string_to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"{ALGORITHM} Credential={keys.access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )
        return headers

    def _signing_key(self, day: str, secret: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == day and hmac.compare_digest(cached[1], secret):
            return cached[2]
        key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = (day, secret, key)
        return key
