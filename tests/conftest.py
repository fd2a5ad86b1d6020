"""Shared fixtures: every test runs with its own config dir, cache dir and a fresh process-wide plugin manager."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspyo3_core.plugins import reset_plugin_manager

pytest_plugins = ["dspyo3_core.testing.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent

# DSPy refreshes model metadata from the internet on first use; tests stay on loopback.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "true"


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No user or project config leaks in: config, project file and cache point into tmp_path."""
    from dspyo3_core.config import BUILTIN_PROVIDERS

    provider_vars = {name for spec in BUILTIN_PROVIDERS for name in (*spec.key_env, *spec.extra_env.values())}
    for name in list(os.environ):
        if (name.startswith("DSPYO3_") and name != "DSPYO3_DATA_DIR") or name in provider_vars:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DSPYO3_CONFIG_DIR", str(tmp_path / "user-config"))
    monkeypatch.setenv("DSPYO3_CONFIG", str(tmp_path / "dspyo3.toml"))
    monkeypatch.setenv("DSPYO3_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    reset_plugin_manager()
    yield tmp_path
    reset_plugin_manager()


@pytest.fixture
def cli_env(isolated_config: Path) -> dict[str, str]:
    """Environment for running the ``dspyo3`` console script in a subprocess with the same isolation."""
    env = {key: value for key, value in os.environ.items()}
    env["PYTHONWARNINGS"] = "default"
    return env


@pytest.fixture
def dspyo3_exe() -> str:
    """Path of the ``dspyo3`` console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / "dspyo3"
    assert exe.exists(), f"dspyo3 console script not found next to {sys.executable}"
    return str(exe)


def _make_distribution(root: Path, dist: str, module: str, source: str, entry_point: str | None = None) -> Path:
    """Write ``module.py`` and ``<dist>-0.1.0.dist-info`` declaring a ``dspyo3`` entry point into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[dspyo3]\n{entry_point or module} = {module}\n")
    (info / "RECORD").write_text("")
    return root


@pytest.fixture
def make_distribution() -> object:
    """Put a fake installed distribution (dist-info + module) on disk, as pip would leave it."""
    return _make_distribution
