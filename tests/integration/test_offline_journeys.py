"""The README's offline journeys, typed as a user types them: ``DSPYO3_LM=offline/extractive`` and ``dspyo3 ...``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("DSPYO3_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")


@pytest.fixture
def offline_env(cli_env: dict[str, str]) -> dict[str, str]:
    cli_env["DSPYO3_LM"] = "offline/extractive"
    return cli_env


def _run(exe: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_rag_index_then_ask(tmp_path: Path, offline_env: dict[str, str], dspyo3_exe: str) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keys.md").write_text("# Keys\n\nRotate API keys every 90 days. Keep them in the vault.\n\n"
                                               "The vault lives at vault.internal.\n")
    (tmp_path / "docs" / "cats.md").write_text("# Cats\n\nCats sleep for most of the day.\n")
    offline_env["DSPYO3_RAG_DIR"] = str(tmp_path / "store")
    index = _run(dspyo3_exe, "rag", "index", "docs", "--collection", "notes", env=offline_env, cwd=tmp_path)
    assert index.returncode == 0, index.stderr
    ask = _run(dspyo3_exe, "rag", "ask", "How often should API keys be rotated?", "--collection", "notes",
               env=offline_env, cwd=tmp_path)
    assert ask.returncode == 0, ask.stderr
    assert "Rotate API keys every 90 days." in ask.stdout
    assert "sources:" in ask.stdout and "keys.md#0" in ask.stdout


def test_agents_run_answers_with_a_tool(tmp_path: Path, offline_env: dict[str, str], dspyo3_exe: str) -> None:
    result = _run(dspyo3_exe, "agents", "run", "What is 17 * 23?", env=offline_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "391"
    assert "stopped by finish" in result.stderr


@pytest.mark.skipif(not (DATA_DIR / "gsm8k" / "train.jsonl").is_file(), reason="shared GSM8K data not present")
def test_optimize_run_promote_compare_gate(tmp_path: Path, offline_env: dict[str, str], dspyo3_exe: str) -> None:
    offline_env["DSPYO3_DATA_DIR"] = str(DATA_DIR)
    (tmp_path / "optimize.toml").write_text(
        '[run]\nname = "gsm8k-offline"\nprogram = "dspyo3_optimize.examples:gsm8k_program"\nmetric = "gsm8k"\n'
        'out_dir = "runs"\n\n[data]\npath = "$DSPYO3_DATA_DIR/gsm8k/train.jsonl"\npreset = "gsm8k"\nlimit = 8\n'
        'dev_size = 4\n\n[[trials]]\noptimizer = "bootstrap_fewshot"\n'
        "options = { max_bootstrapped_demos = 2, max_labeled_demos = 2 }\n\n"
        '[register]\nname = "gsm8k-cot"\n')
    run = _run(dspyo3_exe, "optimize", "run", "optimize.toml", "--no-progress", env=offline_env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "registered gsm8k-cot 1.0.0" in run.stdout
    assert json.loads((tmp_path / "runs" / "report.json").read_text())["trials"]
    promote = _run(dspyo3_exe, "registry", "promote", "gsm8k-cot", "1.0.0", "--to", "staging", env=offline_env,
                   cwd=tmp_path)
    assert promote.returncode == 0, promote.stderr
    compare = ["optimize", "compare", "gsm8k-cot@1.0.0", "gsm8k-cot@staging", "--data",
               str(DATA_DIR / "gsm8k" / "test.jsonl"), "--limit", "4"]
    held = _run(dspyo3_exe, *compare, "--gate", "delta>=0", env=offline_env, cwd=tmp_path)
    assert held.returncode == 0, held.stderr
    assert "gate PASS delta>=0" in held.stdout
    failed = _run(dspyo3_exe, *compare, "--gate", "delta>0.5", env=offline_env, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr  # documented: 1 when a gate fails
    assert "gate FAIL delta>0.5" in failed.stdout


def test_production_metrics_and_json_logs(tmp_path: Path, offline_env: dict[str, str], dspyo3_exe: str) -> None:
    (tmp_path / "dspyo3.toml").write_text("[production]\nmetrics = true\nlog_events = true\n")
    offline_env["PROMETHEUS_MULTIPROC_DIR"] = "metrics"  # as the README types it: created by the first run
    (tmp_path / "app.py").write_text(
        "import dspy\nimport dspyo3_core\nimport dspyo3_production as prod\n\n"
        "prod.configure_logging()  # JSON lines on stderr\n"
        "dspyo3_core.configure()   # the LM named by DSPYO3_LM\n"
        'print(dspy.Predict("question -> answer")(question="What is DSPy?").answer)\n')
    app = subprocess.run([sys.executable, "app.py"], env=offline_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert app.returncode == 0, app.stderr
    assert app.stdout.strip() == "What is DSPy?"  # extractive: nothing but the question to copy from
    events = [json.loads(line) for line in app.stderr.splitlines() if line.startswith("{")]
    calls = [e for e in events if e.get("event") == "lm_call"]
    assert len(calls) == 1 and calls[0]["model"] == "offline/extractive" and calls[0]["status"] == "ok"
    ask = _run(dspyo3_exe, "agents", "run", "What is 6 * 7?", env=offline_env, cwd=tmp_path)
    assert ask.returncode == 0 and ask.stdout.strip() == "42", ask.stderr
    shown = _run(dspyo3_exe, "metrics", "show", "--multiprocess-dir", "metrics", env=offline_env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    # one call from app.py, three from the agent (tool step, finish, extract)
    assert 'dspyo3_lm_requests_total{model="offline/extractive",status="ok"} 4.0' in shown.stdout


def test_lm_offline_serves_an_openai_compatible_endpoint(tmp_path: Path, offline_env: dict[str, str],
                                                         dspyo3_exe: str) -> None:
    server = subprocess.Popen([dspyo3_exe, "lm", "offline"], env=offline_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        api_base = server.stdout.readline().strip()
        assert api_base.startswith("http://127.0.0.1:") and api_base.endswith("/v1")
        env = {**offline_env, "DSPYO3_LM": "openai-compatible/offline", "DSPYO3_LM_API_BASE": api_base}
        result = _run(dspyo3_exe, "lm", "test", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ok"] is True
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert "not a model" in (server.stderr.read() if server.stderr else "")
