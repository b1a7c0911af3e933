"""The embedded local S3 server (moto, in a subprocess on 127.0.0.1) for the demo, the benchmark and `amgmt local-s3`.

It owns the server process's life: start on a free port, wait until it answers, stop. It never talks S3 itself.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType

from amgmt.errors import StorageError

HOST = "127.0.0.1"
# moto accepts any credentials; these exist so botocore has something to sign with. They are not secrets.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "amgmt-local", "AWS_SECRET_ACCESS_KEY": "amgmt-local"}
LOCAL_REGION = "us-east-1"
LOCAL_KEYS = (LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"], LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalS3Server:
    """A moto S3 server subprocess. Use as a context manager, or call start()/stop()."""

    def __init__(self, *, port: int | None = None, host: str = HOST, quiet: bool = True) -> None:
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.quiet = quiet
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> LocalS3Server:
        # Looked up, not imported: the server runs in its own process, and importing moto here would cost this one
        # ~13 MiB for nothing. find_spec of a top-level name imports nothing (find_spec("moto.server") imports moto).
        if any(importlib.util.find_spec(name) is None for name in ("moto", "flask", "flask_cors")):
            raise StorageError("the embedded S3 server needs moto: pip install 'amgmt[server]'")
        attempts = 1 if self._fixed_port else 3
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            out = subprocess.DEVNULL if self.quiet else None
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is handled by amgmt, which then stops us
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise StorageError(f"the local S3 server did not start on {self.host} (tried {attempts} ports)")

    def _wait_ready(self, timeout: float) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with opener.open(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # it answers HTTP: ready
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
