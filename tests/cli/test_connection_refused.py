"""A brief connection refusal (the S3 server restarting) at the start or in the middle of a run is waited out with
backoff; an endpoint that never comes back stops the run with exit 3 and one line, within a bounded time.

The server here is the session's moto server behind a TCP relay on a port of its own: while the relay is down
nothing listens on that port, so every connection is refused, exactly as while a server restarts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amgmt.bench.localserver import free_port


class Relay:
    """Forwards 127.0.0.1:port to the upstream server; `down()` closes the port and cuts every connection, `up()`
    listens again on the same port. `trigger(data)` sees what clients send; when it first returns True the relay
    goes down for `outage` seconds before forwarding that data (the request is lost with its connection)."""

    def __init__(self, upstream_port: int, *, trigger: Callable[[bytes], bool] | None = None,
                 outage: float = 2.0) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.trigger = trigger
        self.outage = outage
        self.accepted = 0
        self.outages: list[float] = []  # when each outage began (monotonic)
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(self._accept, listener)

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def up_after(self, seconds: float) -> None:
        timer = threading.Timer(seconds, lambda: None if self._stopped else self.up())
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self._stopped = True
        self.down()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._connections += [client, upstream]
                self.accepted += 1
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client and self.trigger is not None and self.trigger(data):
                    self.trigger = None
                    self.outages.append(time.monotonic())
                    self.down()
                    self.up_after(self.outage)
                    return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay(s3_server: Any) -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(**kw: Any) -> Relay:
        made.append(Relay(s3_server.port, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _log(tmp_path: Path) -> str:
    path = tmp_path.with_name(tmp_path.name + "-state") / "amgmt" / "amgmt.log"
    return path.read_text() if path.exists() else ""


def test_a_server_down_at_the_start_is_waited_for(amgmt, make_media, relay, keys,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    make_media({"clip.mp4": 5000})
    server = relay()  # not listening yet: every connection is refused
    server.up_after(4.0)
    started = time.monotonic()
    run = amgmt("upload", "all", env={"MGMT_ENDPOINT_URL": f"http://127.0.0.1:{server.port}"}, timeout=120)
    took = time.monotonic() - started

    assert run.code == 0, run
    assert run.stderr.splitlines() == ["success   clip.mp4  4.9 KiB  clip.mp4.tar.gz"], run  # no error, no warning
    assert keys() == ["clip.mp4.tar.gz"] and took >= 4.0
    refused = [line for line in _log(tmp_path).splitlines() if "cannot reach the S3 endpoint" in line]
    assert refused and "trying again in" in refused[0], "the refusals were met and waited out"


def test_a_server_restarting_mid_run_is_waited_for(amgmt, make_media, relay, keys,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path, local_dir: Path) -> None:
    """The relay goes down for 2 s when the first part of a multipart upload is sent, cutting every connection
    (that part's request is lost with it): the part is sent again once the server listens again."""
    make_media({"big.mp4": 12 * 1024 * 1024, "small.jpg": 3000})
    server = relay(trigger=lambda data: b"partNumber=" in data, outage=2.0)
    server.up()
    env = {"MGMT_ENDPOINT_URL": f"http://127.0.0.1:{server.port}", "MGMT_PART_SIZE": "5MiB"}
    run = amgmt("upload", "all", "--json", env=env, timeout=120)

    assert run.code == 0, run
    assert server.outages, "the outage happened during the run"
    assert keys() == ["big.mp4.tar.gz", "small.jpg.tar.gz"]
    assert sorted(p.name for p in (local_dir / "completed").iterdir() if p.name != ".metadata") == [
        "big.mp4", "small.jpg"]
    assert "cannot reach the S3 endpoint" in _log(tmp_path)


def test_an_endpoint_that_never_comes_back_stops_the_run_with_exit_3(amgmt, make_media,  # type: ignore[no-untyped-def]
                                                                      local_dir: Path) -> None:
    make_media({"clip.mp4": 5000})
    started = time.monotonic()
    run = amgmt("upload", "all", env={"MGMT_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, timeout=120)
    took = time.monotonic() - started

    assert run.code == 3, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("amgmt: error: cannot reach the S3 endpoint"), run
    assert "(tried 6 times over " in lines[0]
    assert 7.75 <= took < 45, f"took {took:.1f} s"  # the policy waits 7.75 to 15.5 s in all, plus start-up
    assert (local_dir / "clip.mp4").exists()
