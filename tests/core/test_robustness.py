"""Failure modes: broken or clashing plugins, secrets in URLs and headers, doctor edge cases, inspect errors."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dspyo3_core import LMCall, PluginError, PluginLoadWarning, PluginManager
from dspyo3_core.doctor import redact_url
from dspyo3_core.testing import LMServer
from dspyo3_core.testing.services import redis_server

SECRET = "sk-live-REVIEW-SECRET-0000999"


def run(exe: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def with_site(env: dict[str, str], site: Path) -> dict[str, str]:
    env["PYTHONPATH"] = str(site)
    return env


# -- plugins -----------------------------------------------------------------------------------------------------

def test_hook_with_wrong_argument_names_only_warns(
    tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, make_distribution: Any
) -> None:
    source = "from dspyo3_core import hookimpl\n\n@hookimpl\ndef dspyo3_register_commands(group):\n    pass\n"
    site = make_distribution(tmp_path / "site", "badsig-plugin", "badsig_plugin", source)
    result = run(dspyo3_exe, with_site(cli_env, site), "plugins", "--json")
    assert result.returncode == 0, result.stderr
    assert "'badsig_plugin' (badsig-plugin) was skipped: invalid hook implementation" in result.stderr
    assert {p["name"]: p["status"] for p in json.loads(result.stdout)}["badsig_plugin"] == "failed"


def test_command_clash_is_an_error_naming_both_and_doctor_still_reports(
    tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, make_distribution: Any
) -> None:
    source = (
        "import click\nfrom dspyo3_core import hookimpl\n\n@hookimpl\ndef dspyo3_register_commands(cli):\n"
        "    @cli.command(name='doctor')\n    def hijack():\n        click.echo('HIJACKED')\n"
    )
    site = make_distribution(tmp_path / "site", "aaa-hijack", "aaa", source)
    env = with_site(cli_env, site)
    listing = run(dspyo3_exe, env, "plugins")
    assert listing.returncode == 1
    assert "command 'doctor' is registered by both" in listing.stderr
    assert "aaa-hijack" in listing.stderr and "dspyo3-core" in listing.stderr
    assert "Traceback" not in listing.stderr
    doctor = run(dspyo3_exe, env, "doctor", "--json")
    assert "HIJACKED" not in doctor.stdout
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["plugins"]["status"] == "fail" and "aaa-hijack" in checks["plugins"]["detail"]
    assert doctor.returncode == 1


def test_duplicate_provider_is_a_clean_error_and_a_doctor_check(
    tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, make_distribution: Any
) -> None:
    source = (
        "from dspyo3_core import hookimpl, LMProviderSpec\n\n@hookimpl\ndef dspyo3_register_lm_providers(register):\n"
        "    register(LMProviderSpec('openai', 'openai', description='a second openai'))\n"
    )
    env = with_site(cli_env, make_distribution(tmp_path / "site", "dupe-provider", "dupe_provider", source))
    listed = run(dspyo3_exe, env, "lm", "providers")
    assert listed.returncode == 1
    assert "LM provider 'openai' is registered by both" in listed.stderr
    assert "Traceback" not in listed.stderr
    doctor = run(dspyo3_exe, env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 1 and checks["plugins"]["status"] == "fail"


def test_config_errors_are_one_line_not_tracebacks(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "nonsense"
    result = run(dspyo3_exe, cli_env, "demo", "--n", "1")
    assert result.returncode == 1
    assert "Error: DSPYO3_LM='nonsense' is neither a profile name" in result.stderr
    assert "Traceback" not in result.stderr


def test_tracing_covers_registry_and_command_hooks(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_TRACE_PLUGINS"] = "1"
    result = run(dspyo3_exe, cli_env, "lm", "providers")
    assert "[dspyo3 trace] dspyo3_register_lm_providers -> core (dspyo3-core)" in result.stderr
    assert "[dspyo3 trace] dspyo3_register_commands -> rag (dspyo3-rag)" in result.stderr


def test_misspelt_allowlist_name_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYO3_PLUGINS", "ragg")
    with pytest.warns(PluginLoadWarning, match="DSPYO3_PLUGINS names 'ragg', which no installed plugin"):
        PluginManager().plugins()


def test_a_failed_load_raises_the_same_error_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_distribution: Any
) -> None:
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "a", "dist-a", "again_a", "", entry_point="again")))
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "b", "dist-b", "again_b", "", entry_point="again")))
    manager = PluginManager()
    with pytest.raises(PluginError, match="'again' is declared by both") as first:
        manager.plugins()
    with pytest.raises(PluginError) as second:
        manager.plugins()
    assert second.value is first.value


# -- secrets ------------------------------------------------------------------------------------------------------

def test_call_repr_masks_nested_headers_but_not_max_tokens(loopback_lm: Any) -> None:
    call = LMCall(lm=loopback_lm, kwargs={"max_tokens": 50, "extra_headers": {"Authorization": f"Bearer {SECRET}"},
                                          "api_key": SECRET, "metadata": [{"x-api-key": SECRET}]})
    text = repr(call)
    assert SECRET not in text
    assert "'max_tokens': 50" in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}@127.0.0.1:6379/0",
        f"redis://127.0.0.1:6379/0?password={SECRET}",
        f"unix://:{SECRET}@/var/run/redis.sock",
        f"redis://:{SECRET}@127.0.0.1:63x9/0",
    ],
)
def test_redis_urls_never_show_the_password(url: str, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    assert SECRET not in redact_url(url)
    cli_env["DSPYO3_REDIS_URL"] = url
    result = run(dspyo3_exe, cli_env, "doctor", "--json")
    assert SECRET not in result.stdout + result.stderr
    redis = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["redis"]
    assert redis["status"] == "fail"


def test_redis_unix_socket(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, redis_binary: str) -> None:
    binary = redis_binary
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        cli_env["DSPYO3_REDIS_URL"] = f"unix://{sock}"
        result = run(dspyo3_exe, cli_env, "doctor", "--json")
        assert {c["name"]: c for c in json.loads(result.stdout)["checks"]}["redis"]["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    redirect_to = ""

    def log_message(self, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def servers() -> Iterator[tuple[str, type[_Recorder]]]:
    """A redirecting server whose target records the headers it receives."""
    target = type("Target", (_Recorder,), {"seen": [], "redirect_to": ""})
    target_httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), target)
    redirect = type("Redirect", (_Recorder,), {"seen": [],
                                               "redirect_to": f"http://127.0.0.1:{target_httpd.server_port}/v1/models"})
    redirect_httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), redirect)
    for httpd in (target_httpd, redirect_httpd):
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{redirect_httpd.server_port}/v1", target
    for httpd in (target_httpd, redirect_httpd):
        httpd.shutdown()
        httpd.server_close()


def test_doctor_does_not_follow_redirects_with_the_key(
    servers: tuple[str, type[_Recorder]], cli_env: dict[str, str], dspyo3_exe: str
) -> None:
    api_base, target = servers
    cli_env.update({"DSPYO3_LM": "openai-compatible/tiny", "DSPYO3_LM_API_BASE": api_base,
                    "DSPYO3_LM_API_KEY": SECRET})
    result = run(dspyo3_exe, cli_env, "doctor", "--json")
    reachable = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["lm reachable"]
    assert reachable["status"] == "warn" and "not followed" in reachable["detail"]
    assert target.seen == []


# -- doctor -------------------------------------------------------------------------------------------------------

def test_fix_under_a_file_reports_instead_of_crashing(
    tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str
) -> None:
    (tmp_path / "afile").write_text("")
    cli_env["DSPYO3_CACHE_DIR"] = str(tmp_path / "afile" / "sub")
    result = run(dspyo3_exe, cli_env, "doctor", "--json", "--fix")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["fixed"][0].startswith("could not create cache directory")
    assert {c["name"]: c for c in report["checks"]}["cache dir"]["status"] == "fail"


def doctor_checks(exe: str, env: dict[str, str]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(run(exe, env, "doctor", "--json").stdout)["checks"]}


def test_doctor_validates_profiles_like_build_lm(
    isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str
) -> None:
    cli_env["DSPYO3_LM"] = "openai-compatible/tiny"
    profile = doctor_checks(dspyo3_exe, cli_env)["lm profile"]
    assert profile["status"] == "fail" and "needs api_base" in profile["detail"]
    assert "DSPYO3_LM_API_BASE" in profile["detail"]
    (isolated_config / "dspyo3.toml").write_text(
        '[lm]\ndefault = "az"\n[lm.profiles.az]\nprovider = "azure"\nmodel = "dep"\napi_base = "http://127.0.0.1:9"\n'
    )
    del cli_env["DSPYO3_LM"]
    checks = doctor_checks(dspyo3_exe, cli_env)
    assert checks["lm settings"]["status"] == "fail" and "AZURE_API_VERSION" in checks["lm settings"]["fix"]
    assert checks["lm key"]["status"] == "fail"
    (isolated_config / "dspyo3.toml").write_text(
        '[lm]\ndefault = "p"\n[lm.profiles.p]\nprovider = "openai-compatible"\nmodel = "m"\n'
    )
    message = doctor_checks(dspyo3_exe, cli_env)["lm profile"]["detail"]
    assert "add api_base" in message and "DSPYO3_LM_API_BASE" not in message


def test_doctor_warns_on_a_server_without_a_model_list(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    with LMServer() as server:
        cli_env.update({"DSPYO3_LM": "openai-compatible/tiny", "DSPYO3_LM_API_BASE": server.url + "/nothing/v1"})
        reachable = doctor_checks(dspyo3_exe, cli_env)["lm reachable"]
    assert reachable["status"] == "warn" and "HTTP 404" in reachable["detail"]


def test_redis_fixture_gives_up_on_a_server_that_never_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    pids = tmp_path / "pids"
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ $! > {pids}\nwait\n")  # a server (and a child) that never answer
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"did not start on port \d+ within 1s"), redis_server(timeout=1):
        pass

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # it gave up at its own timeout and stopped the fake and its child, rather than waiting for them to exit
    started = pids.read_text().split() if pids.exists() else []  # (killed before it got that far: nothing left)
    assert not [pid for pid in map(int, started) if alive(pid)]


# -- inspect ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("x = 1 / 0\n", "broken:x", "importing 'broken' raised ZeroDivisionError"),
        ("import dspy\nclass P(dspy.Module):\n    def __init__(self):\n        raise RuntimeError('nope')\n",
         "broken:P", "constructing broken:P raised RuntimeError: nope"),
    ],
)
def test_inspect_reports_errors_in_user_code(
    tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, source: str, target: str, message: str
) -> None:
    (tmp_path / "broken.py").write_text(source)
    result = run(dspyo3_exe, cli_env, "inspect", target, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_inspect_rejects_a_malformed_saved_program(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    (tmp_path / "bad.json").write_text('{"p": {"signature": "oops"}}')
    result = run(dspyo3_exe, cli_env, "inspect", "bad.json", cwd=tmp_path)
    assert result.returncode == 1 and "malformed signature" in result.stderr
