"""One exit-status rule across every command group, driven through the real ``dspyo3`` executable.

2: the command line itself is wrong (an unknown option, a missing argument, a malformed option value).
1: the command was understood but could not do its job (a named file, program, tool or profile that does not exist,
   a setup that lacks something, a service that is down).
Either way stderr carries one ``Error:`` line and no traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

USAGE = [
    pytest.param(["lm", "list", "--nope"], "No such option", id="unknown-option"),
    pytest.param(["rag", "search"], "Missing argument", id="missing-argument"),
    pytest.param(["agents", "tools", "call", "calculator", "--args", "{oops"], "--args is not JSON",
                 id="args-not-json"),
    pytest.param(["cache", "stats", "--redis-url", "notaurl"], "Invalid value for --redis-url", id="redis-url"),
    pytest.param(["optimize", "compare", "a@1.0.0", "b@1.0.0", "--data", "test.jsonl", "--gate", "gain>1"],
                 "unknown gate field 'gain'", id="malformed-gate"),
    pytest.param(["serve"], "no program to serve", id="serve-without-target"),
    pytest.param(["serve", "served:program", "--port", "0"], "Invalid value for '--port'", id="serve-port-0"),
    pytest.param(["serve", "served:program", "--replicas", "2"], "--replicas is for Ray Serve",
                 id="serve-replicas-without-ray"),
]

FAILURES = [
    pytest.param(["optimize", "run", "missing.toml"], "missing.toml", id="optimize-run-missing-config"),
    pytest.param(["optimize", "evaluate", "gsm8k@1.0.0", "--data", "missing.jsonl"], "no program 'gsm8k'",
                 id="optimize-evaluate-unknown-program"),
    pytest.param(["optimize", "compare", "gsm8k@1.0.0", "gsm8k@2.0.0", "--data", "missing.jsonl"],
                 "no program 'gsm8k'", id="optimize-compare-unknown-program"),
    pytest.param(["agents", "trace", "missing.jsonl"], "missing.jsonl", id="agents-trace-missing-file"),
    pytest.param(["agents", "tools", "call", "nope"], "unknown tool 'nope'", id="unknown-tool"),
    pytest.param(["agents", "run", "hi", "--tool", "nope"], "unknown tool(s) ['nope']", id="agents-run-unknown-tool"),
    pytest.param(["lm", "test", "nope"], "nope", id="unknown-profile"),
    pytest.param(["registry", "show", "nothere"], "nothere", id="unknown-program"),
    pytest.param(["cache", "stats"], "no Redis configured", id="no-redis-configured"),
    pytest.param(["cache", "stats", "--redis-url", "redis://127.0.0.1:1"], "cannot reach Redis", id="redis-down"),
    pytest.param(["metrics", "show", "--multiprocess-dir", "nothere"], "no metrics directory nothere",
                 id="metrics-dir-missing"),
    pytest.param(["serve", "no_such_module_xyz:program"], "cannot import 'no_such_module_xyz'",
                 id="serve-unknown-module"),
    pytest.param(["serve", "qa@prod"], "no program 'qa'", id="serve-unknown-registry-program"),
    pytest.param(["serve", "--config", "missing.toml", "qa@prod"], "no config file missing.toml",
                 id="serve-missing-config"),
]


def _run(exe: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**env, "DSPYO3_LM": "offline/extractive"}
    env.pop("DSPYO3_REDIS_URL", None)
    return subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize(("args", "says"), USAGE)
def test_a_wrong_command_line_exits_2(args: list[str], says: str, tmp_path: Path, cli_env: dict[str, str],
                                      dspyo3_exe: str) -> None:
    done = _run(dspyo3_exe, args, cli_env, tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert says in done.stderr, done.stderr
    _one_error_line(done.stderr)


@pytest.mark.parametrize(("args", "says"), FAILURES)
def test_a_command_that_cannot_do_its_job_exits_1(args: list[str], says: str, tmp_path: Path,
                                                  cli_env: dict[str, str], dspyo3_exe: str) -> None:
    done = _run(dspyo3_exe, args, cli_env, tmp_path)
    assert done.returncode == 1, (done.returncode, done.stderr)
    line = _one_error_line(done.stderr)
    assert says in line, line
    assert "Usage:" not in done.stderr  # not presented as a mistake in the command line
