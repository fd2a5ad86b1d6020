"""``dspyo3 agents tools list|call``, ``dspyo3 agents run`` (on the loopback LM server) and ``dspyo3 agents trace``
(rich table and ``--json``), through the real root CLI with the installed plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dspyo3_agents import TrajectoryLog
from dspyo3_core.cli import build_cli
from dspyo3_core.testing.server import LMServer

from .conftest import observations, react_responder


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_tools_list_table_and_json() -> None:
    table = invoke("agents", "tools", "list")
    assert table.exit_code == 0, table.output
    assert "calculator" in table.output and "expression (string)" in table.output
    assert "read_file" not in table.output  # disabled tools only with --all
    listing = json.loads(invoke("agents", "tools", "list", "--all", "--json").output)
    by_name = {t["name"]: t for t in listing}
    assert by_name["read_file"]["enabled"] is False and by_name["read_file"]["tags"] == ["files"]
    assert by_name["http_get"]["tags"] == ["network"] and by_name["http_get"]["max_concurrency"] == 4
    assert by_name["calculator"]["parameters"]["required"] == ["expression"]
    assert by_name["calculator"]["source"] == "dspyo3-agents"
    only_math = json.loads(invoke("agents", "tools", "list", "--tag", "math", "--json").output)
    assert [t["name"] for t in only_math] == ["calculator"]


def test_tools_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = invoke("agents", "tools", "call", "calculator", "--args", '{"expression": "2 ** 10"}')
    assert (ok.exit_code, ok.output.strip()) == (0, "1024")
    bad = invoke("agents", "tools", "call", "calculator", "--args", '{"expr": "1"}')
    assert bad.exit_code == 1
    assert "tool 'calculator': argument 'expression': missing (required)" in bad.output
    assert "argument 'expr': unexpected argument" in bad.output
    not_json = invoke("agents", "tools", "call", "calculator", "--args", "{oops")
    assert not_json.exit_code == 2 and "--args is not JSON" in not_json.output
    unknown = invoke("agents", "tools", "call", "nope")
    assert unknown.exit_code == 1 and "unknown tool 'nope'; known: calculator, current_time" in unknown.output
    (tmp_path / "notes.txt").write_text("hello from a file")
    monkeypatch.setenv("DSPYO3_AGENTS_FILES_ROOT", str(tmp_path))
    disabled = invoke("agents", "tools", "call", "read_file", "--args", '{"path": "notes.txt"}')
    assert disabled.exit_code == 1 and "is disabled (it is tagged files)" in disabled.output
    enabled = invoke("agents", "tools", "call", "read_file", "--enable", "--args", '{"path": "notes.txt"}')
    assert json.loads(enabled.output) == "hello from a file"
    escape = invoke("agents", "tools", "call", "read_file", "--enable", "--args", '{"path": "../../etc/passwd"}')
    assert escape.exit_code == 1 and "PermissionError" in escape.output


def calculate(fields: dict[str, str]) -> dict[str, Any]:
    if observations(fields):
        return {"tool": "finish"}
    return {"thought": "compute it", "tool": "calculator", "args": {"expression": "17 * 3"}}


def test_run_then_trace(lm_server: LMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm_server.responder = react_responder(calculate, lambda f: observations(f)[0])
    monkeypatch.setenv("DSPYO3_LM", "openai/test-model")
    monkeypatch.setenv("DSPYO3_LM_API_BASE", lm_server.api_base)
    monkeypatch.setenv("DSPYO3_LM_API_KEY", "test")
    trace = tmp_path / "trace.jsonl"
    question = f"What is 17 times 3? (asked at {time.time_ns()}, so DSPy's cache cannot answer it)"
    result = invoke("agents", "run", question, "--tag", "math", "--trace", str(trace), "--state",
                    f"sqlite:///{tmp_path}/state.db", "--run-id", "cli-1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["outputs"] == {"answer": "51"} and out["run_id"] == "cli-1" and out["stopped"] == "finish"
    assert [s["tool"] for s in out["steps"]] == ["calculator", "finish"] and out["steps"][0]["observation"] == 51

    plain = invoke("agents", "run", question, "--tool", "calculator", "--max-steps", "3")
    assert plain.exit_code == 0 and "51" in plain.output.splitlines()

    table = invoke("agents", "trace", str(trace))
    assert table.exit_code == 0, table.output
    assert "run cli-1 (agent)" in table.output and "calculator" in table.output and "17 * 3" in table.output
    assert "stopped: finish" in table.output
    events = json.loads(invoke("agents", "trace", str(trace), "--json").output)
    assert [e["event"] for e in events] == ["start", "step", "step", "finish"]
    assert events[1]["tool"] == "calculator" and events[1]["tokens"]["total_tokens"] > 0


def test_trace_marks_errors_interruptions_and_bad_files(tmp_path: Path) -> None:
    log = TrajectoryLog(tmp_path / "t.jsonl")
    log.write("start", "r1", agent="a", inputs={"question": "[[ ## markup ## ]]"})
    log.write("step", "r1", index=0, thought="try [bold]", tool="add", args={"a": "x"}, observation="Error: bad",
              error=True, duration=0.1, tokens={})
    log.write("resume", "r1", agent="a", from_step=1)
    log.write("start", "r2", agent="a", inputs={})
    shown = invoke("agents", "trace", str(tmp_path / "t.jsonl"), "--run", "r1")
    assert shown.exit_code == 0, shown.output
    assert "resumed after an interruption" in shown.output and "not finished" in shown.output
    assert "try [bold]" in shown.output and "run r2" not in shown.output
    (tmp_path / "bad.jsonl").write_text('{"event": "start"}\nnot json\n{"event": "step"}\n')
    broken = invoke("agents", "trace", str(tmp_path / "bad.jsonl"))
    assert broken.exit_code == 1 and "bad.jsonl:2 is not JSON" in broken.output


def test_an_append_after_a_torn_line_keeps_the_file_readable(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    log = TrajectoryLog(path)
    log.write("start", "r1", agent="a", inputs={})
    with open(path, "ab") as handle:  # a crash in the middle of writing a step
        handle.write(b'{"event": "step", "run_id": "r1", "index": 0, "thou')
    log.write("resume", "r1", agent="a", from_step=0)
    log.write("finish", "r1", agent="a", outputs={"answer": "x"}, stopped="finish", steps=0, seconds=0.1, tokens={})
    assert path.read_bytes().count(b"\n") == 4  # the torn line was ended, not glued to the next event
    events = json.loads(invoke("agents", "trace", str(path), "--json").output)
    assert [e["event"] for e in events] == ["start", "resume", "finish"]
    shown = invoke("agents", "trace", str(path))
    assert shown.exit_code == 0, shown.output


def test_the_installed_console_script() -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("dspyo3")), "agents", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for verb in ("run", "tools", "trace"):
        assert verb in done.stdout


def test_run_that_runs_out_of_steps_exits_1_with_the_reason(lm_server: LMServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def never_finishes(fields: dict[str, str]) -> dict[str, Any]:
        return {"thought": "again", "tool": "calculator", "args": {"expression": "1 + 1"}}

    lm_server.responder = react_responder(never_finishes, lambda f: "2")
    monkeypatch.setenv("DSPYO3_LM", "openai/test-model")
    monkeypatch.setenv("DSPYO3_LM_API_BASE", lm_server.api_base)
    monkeypatch.setenv("DSPYO3_LM_API_KEY", "test")
    question = f"Loop forever ({time.time_ns()})"
    result = invoke("agents", "run", question, "--tool", "calculator", "--max-steps", "2")
    assert result.exit_code == 1, result.output
    assert "stopped (max_steps) before it finished the task; raise --max-steps (was 2)" in result.output
    as_json = invoke("agents", "run", question + " again", "--tool", "calculator", "--max-steps", "2", "--json")
    assert as_json.exit_code == 1 and '"stopped": "max_steps"' in as_json.output
