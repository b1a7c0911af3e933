"""The direct transport and the environment: a proxy set for the endpoint sends everything through botocore (which
knows proxies); nothing else is read from the environment (aiohttp's trust_env would read ~/.netrc per request)."""

from __future__ import annotations

import pytest

from amgmt.s3.direct import _proxied


@pytest.mark.parametrize(
    ("env", "scheme", "host", "expected"),
    [
        ({}, "http", "127.0.0.1", False),
        ({"HTTP_PROXY": "http://proxy.invalid:3128"}, "http", "127.0.0.1", True),
        ({"http_proxy": "http://proxy.invalid:3128"}, "http", "s3.example.com", True),
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, "http", "127.0.0.1", False),  # another scheme's proxy
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, "https", "s3.example.com", True),
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "127.0.0.1"}, "http", "127.0.0.1", False),
        ({"HTTPS_PROXY": "http://p.invalid:1", "NO_PROXY": ".example.com"}, "https", "s3.example.com", False),
    ],
)
def test_a_proxy_for_the_endpoint_is_seen(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], scheme: str, host: str, expected: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _proxied(scheme, host) is expected
