"""The direct transport does not trust the environment: aiohttp with trust_env parses ~/.netrc for every request."""

from __future__ import annotations

import netrc

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch


async def test_the_direct_transport_reads_no_netrc(make_settings, make_media, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """aiohttp with trust_env parses ~/.netrc for every request (~1 ms of a thread each, for nothing: amgmt signs
    its requests). The direct PUTs and HEADs of a run must not read it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login someone password not-a-secret\n")
    (home / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    reads: list[object] = []
    real = netrc.netrc

    def counting(*args: object, **kwargs: object) -> netrc.netrc:
        reads.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(netrc, "netrc", counting)
    make_media({f"p{i}.jpg": 2000 + i for i in range(4)})
    settings = make_settings()
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 4}, report.to_dict()["failures"]
    assert reads == []
