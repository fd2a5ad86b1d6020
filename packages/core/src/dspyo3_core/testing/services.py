"""Real services on loopback for tests: a ``redis-server`` process on a free port.

A test that needs a service starts it itself. Where the binary is missing the fixture skips with the command
that installs it, except under CI (``CI`` set), where a missing service is a failure: CI never skips silently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceUnavailable(RuntimeError):
    """The service binary is not installed; the message says how to install it."""


class RedisProcess:
    """A ``redis-server`` on 127.0.0.1 (no persistence, or with ``appendonly=True`` an append-only file fsynced on
    every write, kept across restarts) that a test can kill and start again on the same port, to check what
    happens to clients while Redis is down.

    >>> with RedisProcess() as redis:          # doctest: +SKIP
    ...     redis.kill(); redis.start()        # same URL before and after
    """

    def __init__(self, port: int | None = None, timeout: float = 10.0, *, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server is not installed; apt-get install redis-server")
        self.binary = binary
        self.port = port or free_port()
        self.timeout = timeout
        self.appendonly = appendonly  # an append-only file fsynced on every write: a killed server loses nothing
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="dspyo3-redis-")

    def start(self) -> str:
        """Start the server (if it is not running) and wait until it answers PING; returns its URL."""
        if self.process is not None and self.process.poll() is None:
            return self.url
        process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]),
             "--dir", self._workdir.name, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so stopping it stops any child too
        )
        self.process = process
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self.url
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process, signal.SIGKILL)
                _, err = process.communicate(timeout=5)
                message = (err or b"").decode(errors="replace")[-500:]
                raise RuntimeError(f"redis-server did not start on port {self.port} within {self.timeout:g}s: "
                                   f"{message}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to be gone."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 5 s)."""
        if self.process is not None:
            _stop(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _stop(self.process, signal.SIGKILL)
                self.process.wait()
            self.process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._workdir.cleanup()


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Run ``redis-server`` on 127.0.0.1 (no persistence) and yield its ``redis://`` URL; stop it after."""
    with RedisProcess(timeout=timeout) as process:
        yield process.url


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def in_ci() -> bool:
    """True under CI, where missing services fail instead of skipping."""
    return os.environ.get("CI", "").lower() not in {"", "0", "false"}
