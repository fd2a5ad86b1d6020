"""Failures the optimize and registry commands must not report as success: a run where every trial failed (every
LM call refused), an evaluation whose examples failed, a registry listing of a path that holds no registry. Each
exits non-zero with the first error's reason on stderr (keys masked), driven through the real CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from click.testing import CliRunner, Result

from dspyo3_core.cli import build_cli
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_optimize.data import load_examples, split
from dspyo3_optimize.examples import gsm8k_program
from dspyo3_optimize.registry import ProgramRegistry
from dspyo3_optimize.testing import GSM8KResponder

from .conftest import GSM8K_TRAIN, gsm8k_run_toml

RIGHT_KEY = "sk-the-right-key-0123456789"
WRONG_KEY = "sk-a-wrong-key-abcdefghijkl"

CONFIG = gsm8k_run_toml("refused", limit=8, dev_size=3, trials=[("labeled", 0, 2), ("one-demo", 1, 0)])


@pytest.fixture
def locked_server(responder: GSM8KResponder) -> Iterator[LMServer]:
    """The GSM8K loopback LM behind a key the client does not have: every call gets 401, with the key the
    request sent echoed in the message (as some gateways do)."""
    with LMServer(responder, api_key=RIGHT_KEY, echo_key=True) as server:
        yield server


def _use_lm(monkeypatch: pytest.MonkeyPatch, server: LMServer, key: str = WRONG_KEY) -> None:
    """Make profile ``sim`` (the server, uncached: answers cached by other tests must not hide a failure) the
    default, with ``key`` in ``$SIM_API_KEY``."""
    Path(os.environ["DSPYO3_CONFIG"]).write_text(
        '[lm]\ndefault = "sim"\n\n[lm.profiles.sim]\nprovider = "openai-compatible"\nmodel = "gsm8k-sim"\n'
        f'api_base = "{server.api_base}"\napi_key_env = "SIM_API_KEY"\ncache = false\nnum_retries = 0\n')
    monkeypatch.setenv("SIM_API_KEY", key)


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), list(args))


def _error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_run_where_every_lm_call_is_refused_exits_1_with_the_first_reason(
        tmp_path: Path, locked_server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "optimize.toml"
    config.write_text(CONFIG)
    _use_lm(monkeypatch, locked_server)

    result = _invoke("optimize", "run", str(config), "--no-progress", "--json")
    assert locked_server.rejected > 0
    assert result.exit_code == 1, result.output[-3000:]
    error = _error_line(result)
    assert error.startswith("Error: all 3 trials failed; the first error (trial #0 baseline): LMAuthError: "), error
    assert "Incorrect API key provided" in error and "dspyo3 lm test" in error
    # (DSPy's own log lines are masked by the CLI's entry point, which CliRunner bypasses: check ours)
    assert WRONG_KEY not in error and WRONG_KEY not in result.stdout and "****" in error
    report = json.loads(result.stdout)  # the report is still printed and written
    assert report["status"] == "failed" and report["error"] == error.removeprefix("Error: ")
    assert [t["status"] for t in report["trials"]] == ["failed"] * 3  # no trial "finished" with a score of 0
    assert report["best_trial"] is None
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written["status"] == "failed" and "LMAuthError" in written["trials"][1]["reason"]
    assert WRONG_KEY not in (tmp_path / "run" / "report.json").read_text()
    assert WRONG_KEY not in (tmp_path / "run" / "checkpoint.json").read_text()

    # with the key fixed, resuming runs the failed trials again (none of them was checkpointed as finished)
    _use_lm(monkeypatch, locked_server, RIGHT_KEY)
    fixed = _invoke("optimize", "run", str(config), "--no-progress", "--json")
    assert fixed.exit_code == 0, fixed.output[-3000:]
    again = json.loads(fixed.stdout)
    assert again["status"] == "finished" and again["error"] is None
    assert [t["status"] for t in again["trials"]] == ["finished"] * 3 and again["resumed_trials"] == []


def test_a_failed_run_prints_one_error_line_and_no_library_noise(
        tmp_path: Path, locked_server: LMServer, monkeypatch: pytest.MonkeyPatch, dspyo3_exe: str) -> None:
    """Through the console script, with the default progress bar: DSPy's per-example ERROR records (whole examples
    attached) and its own tqdm bars stay out of the way unless -v asks for them."""
    import subprocess

    config = tmp_path / "optimize.toml"
    config.write_text(gsm8k_run_toml("refused", limit=5, dev_size=2, trials=[("labeled", 0, 2), ("one-demo", 1, 0)]))
    _use_lm(monkeypatch, locked_server)
    env = {**os.environ, "SIM_API_KEY": WRONG_KEY}
    quiet = subprocess.run([dspyo3_exe, "optimize", "run", str(config), "--fresh"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 1, quiet.stderr[-3000:]
    assert "dspy" not in quiet.stderr.replace("dspyo3", "") and "Example(" not in quiet.stderr, quiet.stderr[-3000:]
    assert "it/s" not in quiet.stderr and "Average Metric" not in quiet.stderr  # no tqdm bar of DSPy's
    assert len([line for line in quiet.stderr.splitlines() if line.startswith("Error: ")]) == 1, quiet.stderr
    assert WRONG_KEY not in quiet.stderr + quiet.stdout
    verbose = subprocess.run([dspyo3_exe, "-v", "optimize", "run", str(config), "--fresh"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 1 and "dspy.teleprompt" in verbose.stderr, verbose.stderr[-3000:]
    assert WRONG_KEY not in verbose.stderr + verbose.stdout


def test_run_where_some_calls_fail_is_not_a_failed_run(tmp_path: Path, gsm8k_server: LMServer,
                                                       responder: GSM8KResponder,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call about one dev question is refused: each trial has one failed example of three and the others
    scored, so the run worked (exit status 0)."""
    dev = split(load_examples(GSM8K_TRAIN, preset="gsm8k", limit=8), dev_size=3)[1]
    refused = json.dumps(dev[0].question)[1:-1]

    def answer(request: dict[str, Any]) -> Reply | str:
        if refused in json.dumps(request["messages"]):
            return Reply(status=400, error_message="this question is refused (test)")
        return responder(request)

    config = tmp_path / "optimize.toml"
    config.write_text(CONFIG)
    gsm8k_server.responder = answer
    _use_lm(monkeypatch, gsm8k_server, "test")
    result = _invoke("optimize", "run", str(config), "--no-progress", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    assert report["status"] == "finished" and report["error"] is None
    assert [t["status"] for t in report["trials"]] == ["finished"] * 3
    assert [t["failures"] for t in report["trials"]] == [1, 1, 1]


@pytest.fixture
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "registry"
    ProgramRegistry(root).register("gsm8k", gsm8k_program(), factory="dspyo3_optimize.examples:gsm8k_program",
                                   metric="gsm8k", extra={"preset": "gsm8k"})
    monkeypatch.setenv("DSPYO3_REGISTRY", str(root))
    return root


def _dataset(tmp_path: Path, questions: list[tuple[str, str]]) -> Path:
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in questions))
    return data


QUESTIONS = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3"), ("What is 6 * 7?", "42")]


def test_evaluate_where_every_example_fails_exits_1_with_the_first_reason(
        tmp_path: Path, registry_dir: Path, locked_server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_lm(monkeypatch, locked_server)
    data = _dataset(tmp_path, QUESTIONS)
    result = _invoke("optimize", "evaluate", "gsm8k@dev", "--data", str(data))
    assert result.exit_code == 1, result.output[-3000:]
    error = _error_line(result)
    assert error.startswith("Error: all 3 examples failed; the first (#0): LMAuthError: "), error
    assert "Incorrect API key provided" in error and "dspyo3 lm test" in error
    assert "(3 failed)" in result.stdout
    assert WRONG_KEY not in error and "****" in error

    as_json = _invoke("optimize", "evaluate", "gsm8k@dev", "--data", str(data), "--json")
    assert as_json.exit_code == 1
    summary = json.loads(as_json.stdout)
    assert summary["failures"] == 3 and summary["first_error"]["index"] == 0
    assert summary["first_error"]["error"].startswith("LMAuthError: ")


def test_evaluate_with_some_failed_examples_shows_the_reason_and_exits_0(
        tmp_path: Path, registry_dir: Path, gsm8k_server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(request: dict[str, Any]) -> Reply | str:
        if "7 - 4" in json.dumps(request["messages"]):
            return Reply(status=400, error_message="this question is refused (test)")
        return "[[ ## reasoning ## ]]\nAdd.\n\n[[ ## answer ## ]]\n5\n\n[[ ## completed ## ]]"

    gsm8k_server.responder = answer
    _use_lm(monkeypatch, gsm8k_server, "test")
    result = _invoke("optimize", "evaluate", "gsm8k@dev", "--data", str(_dataset(tmp_path, QUESTIONS)))
    assert result.exit_code == 0, result.output[-3000:]
    assert "on 3 examples (1 failed)" in result.stdout
    assert "warning: 1 of 3 examples failed and score 0; the first (#1): " in result.stderr
    assert "this question is refused (test)" in result.stderr


def test_registry_list_tells_no_registry_from_an_empty_one(tmp_path: Path, registry_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _invoke("registry", "list")
    assert listed.exit_code == 0 and listed.stdout.startswith("gsm8k "), listed.output

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("not a registry")
    for where in (tmp_path / "missing", elsewhere):
        for extra in ([], ["--json"], ["gsm8k"]):
            monkeypatch.setenv("DSPYO3_REGISTRY", str(where))
            result = _invoke("registry", "list", *extra)
            assert result.exit_code == 1, (where, extra, result.output)
            error = _error_line(result)
            assert error.startswith(f"Error: no registry at {where}; point at one with --registry"), error
            assert "DSPYO3_REGISTRY" in error and "[optimize]" in error
            assert result.stdout == ""
    flag = _invoke("registry", "--registry", str(tmp_path / "missing"), "list")
    assert flag.exit_code == 1 and "no registry at" in flag.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DSPYO3_REGISTRY", str(empty))
    result = _invoke("registry", "list")
    assert result.exit_code == 0 and f"registry {empty} is empty" in result.stdout, result.output
    as_json = _invoke("registry", "list", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []

    monkeypatch.setenv("DSPYO3_REGISTRY", str(registry_dir))
    unknown = _invoke("registry", "list", "nothere")
    assert unknown.exit_code == 1 and "no program 'nothere' in the registry" in _error_line(unknown)
    assert "programs: gsm8k" in unknown.stderr


def test_registry_exists_on_every_backend(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    assert not ProgramRegistry("memory://nowhere-registry").exists()
    registry = ProgramRegistry("memory://somewhere-registry")
    registry.register("qa", dspy.Predict("question -> answer"))
    assert registry.exists() and registry.names() == ["qa"]
    assert not ProgramRegistry(tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert ProgramRegistry(tmp_path / "empty").exists()  # an empty directory: an empty registry


def test_compare_where_every_example_failed_never_passes_a_gate(
        tmp_path: Path, registry_dir: Path, locked_server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ProgramRegistry(registry_dir).register("gsm8k", gsm8k_program(), metric="gsm8k", extra={"preset": "gsm8k"})
    _use_lm(monkeypatch, locked_server)
    data = _dataset(tmp_path, QUESTIONS)
    result = _invoke("optimize", "compare", "gsm8k@1.0.0", "gsm8k@1.0.1", "--data", str(data), "--gate", "delta>=0")
    assert result.exit_code == 1, result.output[-3000:]  # no comparison: a failure, never a pass
    error = _error_line(result)
    assert "every example of A failed (3), so nothing was compared; the first (#0): LMAuthError" in error, error
    assert "PASS" not in result.output and WRONG_KEY not in result.output
