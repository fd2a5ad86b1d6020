"""The ``dspyo3`` console script: version, help, plugin listing and every package's command group."""

from __future__ import annotations

import json
import subprocess

FIRST_PARTY = ["agents", "async", "core", "optimize", "production", "rag", "types"]


def run(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)


def test_plugins_json_lists_every_first_party_package(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = run(dspyo3_exe, cli_env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = json.loads(result.stdout)
    assert [p["name"] for p in plugins] == FIRST_PARTY
    for plugin in plugins:
        assert set(plugin) >= {"name", "version", "hooks", "status"}
        assert plugin["status"] == "loaded"
        assert plugin["distribution"] == f"dspyo3-{plugin['name']}"
        assert plugin["version"] == "0.1.0"


def test_help_lists_core_and_package_commands(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = run(dspyo3_exe, cli_env, "--help")
    assert result.returncode == 0
    for command in ["plugins", "lm", "doctor", "inspect", "demo", "rag", "agents", "async", "production",
                    "optimize", "types", "cache", "metrics"]:
        assert f"  {command} " in result.stdout, command


def test_version(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    assert run(dspyo3_exe, cli_env, "--version").stdout.strip() == "dspyo3, version 0.1.0"


def test_plugins_table_and_allowlist(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_PLUGINS"] = "rag"
    result = run(dspyo3_exe, cli_env, "plugins")
    assert result.returncode == 0
    assert "disabled" in result.stdout
    assert "agents" not in run(dspyo3_exe, cli_env, "--help").stdout.split("Commands:")[1]
