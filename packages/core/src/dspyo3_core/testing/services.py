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


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Run ``redis-server`` on 127.0.0.1 (no persistence) and yield its ``redis://`` URL; stop it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed; apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dspyo3-redis-") as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so stopping it stops any child too
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    _stop(process, signal.SIGKILL)
                    _, err = process.communicate(timeout=5)
                    message = (err or b"").decode(errors="replace")[-500:]
                    raise RuntimeError(f"redis-server did not start on port {port} within {timeout:g}s: {message}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(process, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _stop(process, signal.SIGKILL)
                process.wait()


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def in_ci() -> bool:
    """True under CI, where missing services fail instead of skipping."""
    return os.environ.get("CI", "").lower() not in {"", "0", "false"}
