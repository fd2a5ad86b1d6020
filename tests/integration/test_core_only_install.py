"""Installs from the checkout into fresh venvs: core alone works; a package pulls exactly its in-repo siblings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fresh_venv(root: Path, *requirements: Path) -> Path:
    """A new venv with ``pip install <requirements>`` done (dependencies from the package index).

    ``--no-cache-dir``: pip caches wheels built from ``file://`` sibling references by name and version, so a
    wheel built from an older checkout would otherwise be reused.
    """
    venv.create(root, with_pip=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
           *map(str, requirements)]
    subprocess.run(pip, check=True, timeout=1200, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return root


def venv_env(root: Path, base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = f"{root / 'bin'}:{env.get('PATH', '')}"
    return env


def installed_dspyo3(root: Path) -> list[str]:
    listing = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                             capture_output=True, text=True, check=True, timeout=120)
    return sorted(p["name"] for p in json.loads(listing.stdout) if p["name"].startswith("dspyo3"))


@pytest.mark.slow
def test_core_alone_in_a_fresh_venv(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = fresh_venv(tmp_path / "venv", REPO / "packages" / "core")
    assert installed_dspyo3(target) == ["dspyo3-core"]
    exe = str(target / "bin" / "dspyo3")
    env = venv_env(target, cli_env)
    plugins = subprocess.run([exe, "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert plugins.returncode == 0, plugins.stderr
    assert [p["name"] for p in json.loads(plugins.stdout)] == ["core"]
    doctor = subprocess.run([exe, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(doctor.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert doctor.returncode == 0, report
    assert checks["native"]["status"] == "warn"  # not installed, and nothing installed needs it
    assert [name for name in checks if name.startswith("package ")] == ["package dspyo3-core"]
    assert sys.prefix not in checks["python"]["detail"]


@pytest.mark.slow
def test_a_package_pulls_only_its_siblings(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = fresh_venv(tmp_path / "venv", REPO / "packages" / "rag")  # builds dspyo3-native from crates/
    assert installed_dspyo3(target) == ["dspyo3-core", "dspyo3-native", "dspyo3-rag"]
    env = venv_env(target, cli_env)
    plugins = subprocess.run([str(target / "bin" / "dspyo3"), "plugins", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert [p["name"] for p in json.loads(plugins.stdout)] == ["core", "rag"]
    probe = "import dspyo3_native as n; i = n.BM25(); i.add(['a'], ['a cat']); print(i.search('cats'))"
    result = subprocess.run([str(target / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'a'" in result.stdout
