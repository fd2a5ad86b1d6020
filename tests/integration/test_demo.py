"""The README's main job: ``dspyo3 demo`` runs a DSPy program end to end through the plugin core, offline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def test_offline_demo(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    out = tmp_path / "demo.json"
    result = subprocess.run([dspyo3_exe, "demo", "--n", "5", "--json", str(out)], env=cli_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "OFFLINE DEMO" in result.stderr  # the banner and DSPy's bar on stderr; stdout is the JSON alone
    summary = json.loads(out.read_text())
    assert json.loads(result.stdout) == summary
    assert summary["mode"] == "offline (scripted loopback LM)"
    assert summary["examples"] == 5
    # every example is one ChainOfThought call: the hook wrapper and the HTTP server saw each of them
    assert summary["lm_calls_seen_by_hook"] == 5 == summary["http_requests_at_server"]
    assert summary["lm_errors"] == 0
    assert 0.0 <= summary["accuracy"] <= 1.0


def test_demo_fallback_questions_without_shared_data(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    cli_env["DSPYO3_DATA_DIR"] = str(tmp_path / "nowhere")
    out = tmp_path / "demo.json"
    result = subprocess.run([dspyo3_exe, "demo", "--n", "4", "--json", str(out)], env=cli_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["data"].startswith("built-in fallback")
    # the scripted baseline answers the last number of each question; none of the fallback answers is that
    assert summary["accuracy"] == 0.0


def test_rag_demo_is_the_main_job_offline(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    """`hatch run demo` runs `dspyo3 rag demo`: index, evaluate retrieval, answer with citations, offline."""
    out = tmp_path / "rag-demo.json"
    result = subprocess.run([dspyo3_exe, "rag", "demo", "--json", str(out)], env=cli_env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "OFFLINE DEMO" in result.stdout and "extractive baseline, not a model" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["mode"] == "offline (extractive loopback LM)" and summary["passages"] == 20
    assert summary["retrieval"]["bm25"]["recall@10"] == 1.0
    cited = {a["question"]: a["cited_ids"] for a in summary["answers"]}
    assert cited["Why does Earth have seasons?"] == ["seasons"]
    assert "tilt" in summary["answers"][2]["answer"]
    hatch = (Path(__file__).resolve().parents[2] / "hatch.toml").read_text()
    assert 'demo = "dspyo3 rag demo {args}"' in hatch
