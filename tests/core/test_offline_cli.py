"""The offline LM is labelled as not a model wherever the CLI reports it: ``lm test``, ``doctor``, ``demo``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dspyo3_core.offline import OFFLINE_SHORT_LABEL


def run(exe: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_lm_test_ok_line_says_not_a_model(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "offline/extractive"
    result = run(dspyo3_exe, cli_env, "lm", "test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK env (offline/extractive)")
    assert "offline LM (extractive, not a model)" in result.stdout.splitlines()[0]
    as_json = json.loads(run(dspyo3_exe, cli_env, "lm", "test", "--json").stdout)
    assert as_json["ok"] is True and as_json["note"] == OFFLINE_SHORT_LABEL


def test_lm_test_of_a_real_endpoint_has_no_offline_note(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    from dspyo3_core.testing import LMServer

    with LMServer(responder=lambda request: "OK") as server:
        cli_env.update({"DSPYO3_LM": "openai-compatible/local", "DSPYO3_LM_API_BASE": server.api_base})
        result = run(dspyo3_exe, cli_env, "lm", "test", "--json")
    assert result.returncode == 0, result.stderr
    assert "note" not in json.loads(result.stdout)


def test_doctor_line_for_an_offline_profile(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "offline/extractive"
    result = run(dspyo3_exe, cli_env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    lm = [c for name, c in checks.items() if name.startswith("lm ")]
    assert [c["name"] for c in lm] == ["lm profile"]  # no key to look for, no endpoint to probe
    assert lm[0]["status"] == "ok"
    assert lm[0]["detail"].startswith(f"env: offline/extractive is the {OFFLINE_SHORT_LABEL}")


def test_demo_on_the_offline_lm_is_labelled(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "offline/extractive"
    out = tmp_path / "demo.json"
    result = run(dspyo3_exe, cli_env, "demo", "--n", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["mode"] == f"offline (offline/extractive: {OFFLINE_SHORT_LABEL})"
    assert summary["lm_is_model"] is False
    assert "OFFLINE DEMO" in result.stderr and "not a" in result.stderr


def test_scripted_demo_says_its_lm_is_not_a_model(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    out = tmp_path / "demo.json"
    result = run(dspyo3_exe, cli_env, "demo", "--n", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["lm_is_model"] is False


def _agents(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import pytest

    pytest.importorskip("dspyo3_agents")
    return run(exe, env, "agents", "run", *args)


def test_agents_run_every_tool_call_failed_exits_1(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_LM"] = "offline/extractive"
    result = _agents(dspyo3_exe, cli_env, "What is 17 / 0?")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # no error message presented as the answer
    failed = [line for line in result.stderr.splitlines() if "] tool call failed" in line]
    assert failed == ["[0] tool call failed: calculator({\"expression\": \"17 / 0\"}): tool 'calculator' failed: "
                      "ZeroDivisionError: division by zero"]
    assert result.stderr.splitlines()[-1].startswith(
        "Error: the agent finished without an answer: every tool call failed (first: tool 'calculator' failed: "
        "ZeroDivisionError: division by zero); try the call alone with `dspyo3 agents tools call calculator")
    as_json = _agents(dspyo3_exe, cli_env, "What is 17 / 0?", "--json")
    assert as_json.returncode == 1
    steps = json.loads(as_json.stdout)["steps"]
    assert [s["error"] for s in steps] == [True, False]
    assert sum("] tool call failed" in line for line in as_json.stderr.splitlines()) == 1


def test_agents_run_with_an_answer_despite_a_failed_tool_exits_0(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    from dspyo3_core.testing import LMServer

    def respond(request: dict[str, object]) -> str:
        messages = request["messages"]
        assert isinstance(messages, list)
        system, user = str(messages[0]["content"]), str(messages[-1]["content"])
        if "next_tool_name" not in system:  # the extract step: an LM that answers from what it knows
            return "[[ ## reasoning ## ]]\nThe tool failed.\n\n[[ ## answer ## ]]\nundefined\n\n[[ ## completed ## ]]"
        tool = "finish" if "observation_0" in user else "calculator"
        return (f"[[ ## next_thought ## ]]\nx\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
                f'[[ ## next_tool_args ## ]]\n{{"expression": "17 / 0"}}\n\n[[ ## completed ## ]]'
                if tool == "calculator" else
                "[[ ## next_thought ## ]]\nx\n\n[[ ## next_tool_name ## ]]\nfinish\n\n"
                "[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]")

    with LMServer(responder=respond) as server:
        cli_env.update({"DSPYO3_LM": "openai-compatible/scripted", "DSPYO3_LM_API_BASE": server.api_base})
        result = _agents(dspyo3_exe, cli_env, "What is 17 / 0?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "undefined"
    assert sum("tool call failed: calculator" in line for line in result.stderr.splitlines()) == 1
