"""A third-party package adds a ``dspyo3`` command after ``pip install``, with no change to our code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "1.2.3"

[project.entry-points.dspyo3]
{name} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

GOOD = '''
import click
from dspyo3_core import hookimpl


@hookimpl
def dspyo3_register_commands(cli):
    @cli.command(name="hello")
    @click.argument("who")
    def hello(who):
        """Say hello (a third-party command)."""
        click.echo(f"hello {who} from a third-party plugin")
'''

BROKEN = "raise RuntimeError('this plugin is broken on purpose')\n"


def build_package(root: Path, dist: str, name: str, module: str, source: str) -> Path:
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(source)
    (project / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, name=name, module=module))
    return project


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """pip-install a working and a broken third-party plugin into a target dir."""
    target = tmp_path / "site"
    good = build_package(tmp_path / "src", "dspyo3-hello", "hello", "dspyo3_hello", GOOD)
    broken = build_package(tmp_path / "src", "dspyo3-broken", "broken", "dspyo3_broken", BROKEN)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(good), str(broken)],
        check=True, timeout=300,
    )
    return target


def test_installed_plugin_adds_its_command_and_broken_one_only_warns(
    site: Path, cli_env: dict[str, str], dspyo3_exe: str
) -> None:
    cli_env["PYTHONPATH"] = str(site)
    hello = subprocess.run([dspyo3_exe, "hello", "world"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "hello world from a third-party plugin"
    assert "'broken' (dspyo3-broken) was skipped" in hello.stderr
    assert "this plugin is broken on purpose" in hello.stderr

    listing = subprocess.run([dspyo3_exe, "plugins", "--json"], env=cli_env, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["hello"] == {"name": "hello", "distribution": "dspyo3-hello", "version": "1.2.3",
                                "hooks": ["dspyo3_register_commands"], "status": "loaded", "error": None}
    assert plugins["broken"]["status"] == "failed"
    assert plugins["rag"]["status"] == "loaded"


def test_blocklisting_the_broken_plugin_silences_it(site: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["PYTHONPATH"] = str(site)
    cli_env["DSPYO3_DISABLE_PLUGINS"] = "broken"
    result = subprocess.run([dspyo3_exe, "hello", "you"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "broken" not in result.stderr
