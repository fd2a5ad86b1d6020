"""benchmarks/agents.py runs and prints the JSON it promises (shape only: figures are measured, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_agents_benchmark_shape(tmp_path: Path) -> None:
    out, plot = tmp_path / "agents.json", tmp_path / "agents.png"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "agents.py"), "--calls", "20", "--repeat", "3",
                           "--json", str(out), "--plot", str(plot)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert {"registry_call_us", "dspy_tool_call_us", "added_us", "registry_dspy_tool_us", "plain_call_us"} <= set(last)
    assert last["added_us"] == round(last["registry_call_us"] - last["dspy_tool_call_us"], 3)
    assert all(last[k] > 0 for k in ("registry_call_us", "dspy_tool_call_us"))
    assert plot.stat().st_size > 0
