"""Whatever stops the run's first request stops every entry alike: exit 3 (S3 unusable) with one line, nothing
recorded or moved. Before the fix a server slower than the read timeout, or a HEAD refused with a bare 400 (what
S3 answers a bad session token on a HEAD: no body, so no error code), exited 1 as if one entry had failed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clikit import snapshot


def _serve(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            answer(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers (a server slower than any read timeout)."""
    yield from _serve(lambda conn: None)


@pytest.fixture
def bare_400_endpoint() -> Iterator[str]:
    """Answers every request with 400 and no body, as S3 answers a HEAD with a refused session token."""

    def answer(conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            while conn.recv(65536):
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nx-amz-request-id: 1\r\n\r\n")
        except OSError:
            pass

    yield from _serve(answer)


@pytest.mark.parametrize("endpoint", ["silent_endpoint", "bare_400_endpoint"])
def test_a_first_request_that_fails_stops_the_run_with_exit_3(amgmt, make_media, local_dir: Path, endpoint: str,
                                                              request: pytest.FixtureRequest) -> None:
    make_media({"clip.mp4": 2000})
    before = snapshot(local_dir)
    url = request.getfixturevalue(endpoint)

    run = amgmt("upload", "all", "--no-progress", env={"MGMT_ENDPOINT_URL": url, "MGMT_READ_TIMEOUT": "0.5",
                                                        "AWS_SESSION_TOKEN": "not-a-valid-token"}, timeout=120)

    assert run.code == 3, str(run)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, str(run)
    assert "s3://" in lines[0]
    after = {path: size for path, size in snapshot(local_dir).items() if not path.startswith("completed")}
    assert after == before, "nothing uploaded, moved or recorded (at most the run lock was created)"
    assert not (local_dir / "completed" / ".metadata" / "operations.db").exists()
