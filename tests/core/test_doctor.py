"""``dspyo3 doctor``: the JSON shape, exit codes, safe fixes, and real probes of LM servers and Redis."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from dspyo3_core.testing import LMServer


def doctor(exe: str, env: dict[str, str], *args: str) -> tuple[int, dict]:
    result = subprocess.run([exe, "doctor", "--json", *args], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_shape_and_healthy_exit(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    code, report = doctor(dspyo3_exe, cli_env)
    assert set(report) == {"checks", "fixed"}
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in {"ok", "warn", "fail"}
        if check["status"] != "ok":
            assert check["fix"], f"{check['name']} is {check['status']} but says no fix"
    checks = by_name(report)
    for name in ("python", "dspy", "native", "cache dir", "redis", "lm profile"):
        assert name in checks
    for package in ("core", "types", "rag", "agents", "async", "production", "optimize"):
        assert checks[f"package dspyo3-{package}"]["status"] == "ok"
    assert checks["native"]["status"] == "ok"
    assert checks["lm profile"]["status"] == "warn"  # nothing configured in the isolated env
    assert code == 0


def test_unreachable_redis_fails_with_exit_1(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_REDIS_URL"] = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    code, report = doctor(dspyo3_exe, cli_env)
    redis = by_name(report)["redis"]
    assert code == 1 and redis["status"] == "fail"
    assert "redis-server" in redis["fix"]
    assert "hunter2-secret" not in json.dumps(report)


def test_fix_creates_the_cache_dir_and_says_so(isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    target = isolated_config / "new-cache"
    cli_env["DSPYO3_CACHE_DIR"] = str(target)
    _, before = doctor(dspyo3_exe, cli_env)
    assert by_name(before)["cache dir"]["status"] == "warn"
    assert not target.exists()
    code, after = doctor(dspyo3_exe, cli_env, "--fix")
    assert target.is_dir()
    assert after["fixed"] == [f"created cache directory {target}"]
    assert by_name(after)["cache dir"]["status"] == "ok"
    assert code == 0


def test_unwritable_cache_dir_fails(isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    blocker = isolated_config / "a-file"
    blocker.write_text("")
    cli_env["DSPYO3_CACHE_DIR"] = str(blocker)
    code, report = doctor(dspyo3_exe, cli_env)
    assert code == 1 and by_name(report)["cache dir"]["status"] == "fail"


def test_lm_profile_reachable_and_unreachable(
    isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str, lm_server: LMServer
) -> None:
    cli_env["DSPYO3_LM"] = "openai-compatible/tiny"
    cli_env["DSPYO3_LM_API_BASE"] = lm_server.api_base
    code, report = doctor(dspyo3_exe, cli_env)
    checks = by_name(report)
    assert checks["lm profile"]["status"] == "ok"
    assert checks["lm reachable"]["status"] == "ok" and "HTTP 200" in checks["lm reachable"]["detail"]
    assert code == 0
    cli_env["DSPYO3_LM_API_BASE"] = f"http://127.0.0.1:{free_port()}/v1"
    code, report = doctor(dspyo3_exe, cli_env)
    assert code == 1 and by_name(report)["lm reachable"]["status"] == "fail"


def test_missing_key_for_a_hosted_provider_fails(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "anthropic/claude-sonnet-4-5"
    cli_env.pop("ANTHROPIC_API_KEY", None)
    code, report = doctor(dspyo3_exe, cli_env)
    key = by_name(report)["lm key"]
    assert code == 1 and key["status"] == "fail" and "ANTHROPIC_API_KEY" in key["fix"]


def test_redis_ping_against_a_real_server(cli_env: dict[str, str], dspyo3_exe: str, redis_url: str) -> None:
    cli_env["DSPYO3_REDIS_URL"] = redis_url
    code, report = doctor(dspyo3_exe, cli_env)
    assert by_name(report)["redis"]["status"] == "ok"
    assert "PONG" in by_name(report)["redis"]["detail"]
    assert code == 0


def test_a_default_profile_that_does_not_exist_fails(isolated_config: Path, cli_env: dict[str, str],
                                                     dspyo3_exe: str) -> None:
    (isolated_config / "dspyo3.toml").write_text('[lm]\ndefault = "nothere"\n')
    done = subprocess.run([dspyo3_exe, "doctor", "--json"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout
    check = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "lm profile")
    assert check["status"] == "fail" and "nothere" in check["detail"] and "[lm.profiles.nothere]" in check["fix"]


def test_a_native_profile_without_the_extension_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dspyo3_core.config import load_settings
    from dspyo3_core.doctor import check_lm
    from dspyo3_core.plugins import get_plugin_manager

    monkeypatch.setenv("DSPYO3_LM", "openai-compatible/m")
    monkeypatch.setenv("DSPYO3_LM_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setitem(sys.modules, "dspyo3_native", None)  # as in an install without the extension
    settings = load_settings()
    profile = settings.profiles["env"]
    settings.profiles["env"] = type(profile)(profile.name, profile.provider, profile.model, profile.api_base,
                                             profile.api_key_env, {"transport": "native"}, profile.source)
    checks = check_lm(settings, get_plugin_manager(), timeout=0.5)
    assert checks[0].name == "lm profile" and checks[0].status == "fail"
    assert "dspyo3-native" in checks[0].detail
