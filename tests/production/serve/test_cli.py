"""``dspyo3 serve``: the command line (targets, config, validation before the server starts, ``hash-key``) in
process, and real server processes for SIGTERM draining and ``--workers``."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dspyo3_core.cli import build_cli
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, digest_responder
from dspyo3_core.testing.services import free_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PROGRAM_MODULE = '''
import dspy


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


program = dspy.Predict(QA)


def build():
    return dspy.Predict(QA)


not_a_program = 42
'''


@pytest.fixture
def program_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module file defining ``program`` (a dspy.Predict), ``build`` (a factory) and ``not_a_program``, importable
    from the current directory; returns its (unique) module name."""
    name = f"served_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PROGRAM_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


class Started(Exception):
    """Raised by the recording stand-in for uvicorn.run: the command got as far as starting the server."""


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``uvicorn.run`` call the command makes (the server itself is not started), with the environment the
    workers would inherit."""
    import os

    import uvicorn

    calls: list[dict[str, Any]] = []

    def record(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs, "environ": dict(os.environ)})

    monkeypatch.setattr(uvicorn, "run", record)
    for name in ("DSPYO3_SERVE_CONFIG", "DSPYO3_CONFIG"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test whatever the command sets
    return calls


def _invoke(manager: PluginManager, args: list[str], **kwargs: Any) -> Any:
    return CliRunner().invoke(build_cli(manager), ["serve", *args], **kwargs)


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_no_target_is_a_usage_error(manager: PluginManager, uvicorn_calls: list[dict[str, Any]]) -> None:
    result = _invoke(manager, [])
    assert result.exit_code == 2, result.output
    assert "no program to serve" in result.output and "[[serve.programs]]" in result.output
    assert len(_error_lines(result.output)) == 1 and not uvicorn_calls


@pytest.mark.parametrize(("target", "says"), [
    pytest.param("no_such_module_xyz:program", "cannot import 'no_such_module_xyz'", id="missing-module"),
    pytest.param("{module}:nothing", "has no attribute 'nothing'", id="missing-attribute"),
    pytest.param("{module}:not_a_program", "not a dspy.Module", id="not-a-program"),
    pytest.param("{module}:build=missing.json", "missing.json", id="missing-saved-file"),
    pytest.param("justaword", "is not one of", id="malformed"),
])
def test_a_bad_target_fails_before_the_server_starts(target: str, says: str, program_module: str,
                                                     manager: PluginManager,
                                                     uvicorn_calls: list[dict[str, Any]]) -> None:
    result = _invoke(manager, [f"{program_module}:program", target.format(module=program_module)])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert says in line, line
    assert "Usage:" not in result.output
    assert not uvicorn_calls


def test_targets_and_options_reach_uvicorn_and_the_workers(program_module: str, manager: PluginManager,
                                                           uvicorn_calls: list[dict[str, Any]]) -> None:
    from dspyo3_production.serve.app import config_from_env

    result = _invoke(manager, [f"{program_module}:program", f"qa2={program_module}:build", "--port", "8123",
                               "--workers", "3", "--max-in-flight", "5", "--request-timeout", "7.5"])
    assert result.exit_code == 0, result.output
    (call,) = uvicorn_calls
    assert call["app"] == "dspyo3_production.serve.app:app_from_environment" and call["factory"] is True
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.1", 8123, 3)
    assert (call["loop"], call["http"], call["timeout_graceful_shutdown"]) == ("uvloop", "httptools", 8)
    config = config_from_env(call["environ"]["DSPYO3_SERVE_CONFIG"])
    assert [p.target for p in config.programs] == [f"{program_module}:program", f"qa2={program_module}:build"]
    assert (config.port, config.workers, config.max_in_flight, config.request_timeout) == (8123, 3, 5, 7.5)
    listening = [line for line in result.output.splitlines() if "listening on" in line]
    assert listening == ["dspyo3 serve: listening on http://127.0.0.1:8123 (3 workers; programs: program, qa2)"]


def test_targets_replace_the_configured_programs(program_module: str, tmp_path: Path, manager: PluginManager,
                                                 uvicorn_calls: list[dict[str, Any]]) -> None:
    from dspyo3_production.serve.app import config_from_env

    config_file = tmp_path / "serve.toml"
    config_file.write_text(f'[serve]\nport = 8200\nrequest_timeout = 3\n\n[[serve.programs]]\n'
                           f'target = "{program_module}:build"\nname = "configured"\n')
    result = _invoke(manager, ["--config", str(config_file)])
    assert result.exit_code == 0, result.output
    config = config_from_env(uvicorn_calls[-1]["environ"]["DSPYO3_SERVE_CONFIG"])
    assert [(p.target, p.name) for p in config.programs] == [(f"{program_module}:build", "configured")]
    assert (config.port, config.request_timeout) == (8200, 3)
    assert uvicorn_calls[-1]["environ"]["DSPYO3_CONFIG"] == str(config_file.resolve())  # the workers read it too

    result = _invoke(manager, ["--config", str(config_file), f"{program_module}:program", "--port", "8201"])
    assert result.exit_code == 0, result.output
    config = config_from_env(uvicorn_calls[-1]["environ"]["DSPYO3_SERVE_CONFIG"])
    assert [p.target for p in config.programs] == [f"{program_module}:program"]
    assert config.port == 8201


def test_a_wrong_config_fails_with_one_line(program_module: str, tmp_path: Path, manager: PluginManager,
                                            uvicorn_calls: list[dict[str, Any]]) -> None:
    result = _invoke(manager, ["--config", str(tmp_path / "missing.toml"), f"{program_module}:program"])
    assert result.exit_code == 1 and "no config file" in _error_lines(result.output)[0]
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nworkerz = 2\n")
    result = _invoke(manager, ["--config", str(bad), f"{program_module}:program"])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert "workerz" in line
    assert not uvicorn_calls


def test_two_targets_under_one_name_are_refused(program_module: str, manager: PluginManager,
                                                uvicorn_calls: list[dict[str, Any]]) -> None:
    result = _invoke(manager, [f"{program_module}:program", f"program={program_module}:build"])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert "program" in line and "NAME=TARGET" in line
    assert not uvicorn_calls


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["--port", "0"], "--port", id="port-0"),
    pytest.param(["--workers", "0"], "--workers", id="workers-0"),
    pytest.param(["--request-timeout", "0"], "--request-timeout", id="timeout-0"),
    pytest.param(["--replicas", "2"], "--replicas is for Ray Serve", id="replicas-without-ray"),
    pytest.param(["--ray", "--workers", "2"], "with --ray use --replicas", id="workers-with-ray"),
])
def test_wrong_options_are_usage_errors(args: list[str], says: str, program_module: str, manager: PluginManager,
                                        uvicorn_calls: list[dict[str, Any]]) -> None:
    result = _invoke(manager, [f"{program_module}:program", *args])
    assert result.exit_code == 2, result.output
    assert says in _error_lines(result.output)[0]
    assert not uvicorn_calls


def test_hash_key_reads_stdin_and_prints_the_sha256(manager: PluginManager) -> None:
    key = "sk-live-0123456789abcdef"
    result = _invoke(manager, ["hash-key"], input=key + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == hashlib.sha256(key.encode()).hexdigest()
    assert key not in result.output


@pytest.mark.parametrize(("stdin", "says"), [("", "no key on stdin"), ("  \n", "no key on stdin"),
                                             ("one\ntwo\n", "more than one line")])
def test_hash_key_without_one_key_fails(stdin: str, says: str, manager: PluginManager) -> None:
    result = _invoke(manager, ["hash-key"], input=stdin)
    assert result.exit_code == 1, result.output
    assert says in _error_lines(result.output)[0]


def test_hash_key_takes_no_key_argument(manager: PluginManager) -> None:
    result = _invoke(manager, ["hash-key", "sk-live-on-the-command-line"])
    assert result.exit_code == 2, result.output


# -- real server processes -----------------------------------------------------------------------------------------

LM_LATENCY = 1.0  # seconds the loopback LM takes per answer: requests are surely in flight when SIGTERM comes


@pytest.fixture
def slow_lm() -> Iterator[LMServer]:
    """The loopback LM answering every field after :data:`LM_LATENCY` seconds."""
    with LMServer(digest_responder(latency=LM_LATENCY)) as server:
        yield server


def _start(exe: str, args: list[str], env: dict[str, str], cwd: Path, lm: LMServer) -> subprocess.Popen[str]:
    env = {**env, "DSPYO3_LM": "openai/gpt-4o-mini", "DSPYO3_LM_API_BASE": lm.api_base,
           "DSPYO3_LM_API_KEY": "sk-test-abcdefghijklmnop"}
    env.pop("DSPYO3_REDIS_URL", None)
    return subprocess.Popen([exe, "serve", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_healthy(process: subprocess.Popen[str], base: str) -> None:
    """Poll /healthz until the server answers (the process loads DSPy and the programs first)."""
    for _ in range(1200):
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"dspyo3 serve exited with {process.returncode}: {stderr}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail("dspyo3 serve did not answer /healthz")


def _ask(base: str, name: str, question: str) -> httpx.Response:
    with httpx.Client(timeout=60.0) as client:
        return client.post(f"{base}/v1/programs/{name}", json={"question": question})


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_sigterm_drains_requests_in_flight_refuses_new_ones_and_exits_0(
        program_module: str, tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, slow_lm: LMServer) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(dspyo3_exe, [f"{program_module}:program", "--port", str(port), "--request-timeout", "30"],
                     cli_env, tmp_path, slow_lm)
    try:
        _wait_healthy(process, base)
        count = 6
        with ThreadPoolExecutor(count) as pool:
            run = uuid.uuid4().hex  # never asked before: no cache (DSPy's disk cache included) answers it
            answers = [pool.submit(_ask, base, "program", f"question {i} of {run}") for i in range(count)]
            while len(slow_lm.requests) < count:  # every request has reached the LM: all of them are in flight
                assert not any(answer.done() for answer in answers), [a.result().text for a in answers if a.done()]
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            refused = None
            while refused is None:
                try:
                    httpx.get(f"{base}/healthz", timeout=5.0)
                except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                    # refused, or (a probe that reached the backlog as the socket closed) reset unanswered
                    refused = not all(answer.done() for answer in answers)
            responses = [answer.result() for answer in answers]
        assert refused, "a new connection was still accepted after SIGTERM while requests were in flight"
        assert [r.status_code for r in responses] == [200] * count, [r.text for r in responses]
        assert len({r.json()["outputs"]["answer"] for r in responses}) == count  # each got its own answer
        assert process.wait(timeout=60) == 0
        _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr
        assert [line for line in stderr.splitlines() if "listening on" in line] == [
            f"dspyo3 serve: listening on {base} (1 worker; programs: program)"]
    finally:
        _stop(process)


def test_two_workers_answer_concurrent_requests_and_stop_on_sigterm(
        program_module: str, tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str, slow_lm: LMServer) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(dspyo3_exe, [f"qa={program_module}:build", "--port", str(port), "--workers", "2"],
                     cli_env, tmp_path, slow_lm)
    try:
        _wait_healthy(process, base)
        with ThreadPoolExecutor(8) as pool:
            run = uuid.uuid4().hex
            responses = list(pool.map(lambda i: _ask(base, "qa", f"question {i} of {run}"), range(8)))
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        assert {r.headers["x-dspyo3-program-version"] for r in responses} == {"local"}
        workers = _children(process.pid)
        assert len(workers) >= 2, workers  # the supervisor runs two server processes
        with ThreadPoolExecutor(8) as pool:  # SIGTERM with requests in flight: every worker drains its own
            answers = [pool.submit(_ask, base, "qa", f"late question {i} of {run}") for i in range(8)]
            while len(slow_lm.requests) < 16:
                assert not any(answer.done() for answer in answers), [a.result().text for a in answers if a.done()]
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            late = [answer.result() for answer in answers]
        assert [r.status_code for r in late] == [200] * 8, [r.text for r in late]
        assert process.wait(timeout=60) == 0
        _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and _alive(pid)]
    finally:
        _stop(process)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that run Python (uvicorn's workers; Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"multiprocessing" in cmdline and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_address_in_use_fails_before_loading(program_module: str, manager: PluginManager,
                                                uvicorn_calls: list[dict[str, Any]]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _invoke(manager, [f"{program_module}:program", "--port", str(port)])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert "listening on" not in result.output and not uvicorn_calls


def test_sigterm_while_the_programs_load_exits_0(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str,
                                                 slow_lm: LMServer) -> None:
    name = f"served_slow_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "importing"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)\n" + PROGRAM_MODULE)
    process = _start(dspyo3_exe, [f"{name}:program", "--port", str(free_port())], cli_env, tmp_path, slow_lm)
    try:
        for _ in range(1200):
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), process.communicate()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        _, stderr = process.communicate()
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
    finally:
        _stop(process)
