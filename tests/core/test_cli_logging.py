"""The CLI keeps DSPy's own chatter (log lines, printed progress, tqdm bars) out of the way unless asked (-v)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.optimize.conftest import gsm8k_run_toml

CONFIG = gsm8k_run_toml("quiet", limit=6, dev_size=2, trials=[("boot", 1, 0)])


def test_optimize_run_is_quiet_by_default_and_verbose_with_v(tmp_path: Path, cli_env: dict[str, str],
                                                             dspyo3_exe: str) -> None:
    (tmp_path / "optimize.toml").write_text(CONFIG)
    env = {**cli_env, "DSPYO3_LM": "offline/extractive"}
    quiet = subprocess.run([dspyo3_exe, "optimize", "run", "optimize.toml", "--no-progress", "--json"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    json.loads(quiet.stdout)  # stdout is the report alone
    assert "Bootstrapped" not in quiet.stdout + quiet.stderr, quiet.stderr
    assert "it/s" not in quiet.stderr and " INFO dspy" not in quiet.stderr, quiet.stderr
    loud = subprocess.run([dspyo3_exe, "-v", "optimize", "run", "optimize.toml", "--no-progress", "--json", "--fresh"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    json.loads(loud.stdout)
    assert "Bootstrapped" in loud.stderr, loud.stderr
