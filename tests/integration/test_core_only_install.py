"""Installing only packages/core into a fresh venv gives a working ``dspyo3 plugins`` and ``doctor``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_core_alone_in_a_fresh_venv(tmp_path: Path, cli_env: dict[str, str]) -> None:
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO / "packages" / "core")]
    subprocess.run(pip, check=True, timeout=900, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    exe = str(target / "bin" / "dspyo3")
    env = {k: v for k, v in cli_env.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = f"{target / 'bin'}:{env.get('PATH', '')}"
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
