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
    assert "OFFLINE DEMO" in result.stdout and "not a" in result.stdout


def test_scripted_demo_says_its_lm_is_not_a_model(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    out = tmp_path / "demo.json"
    result = run(dspyo3_exe, cli_env, "demo", "--n", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["lm_is_model"] is False
