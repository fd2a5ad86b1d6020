"""The examples in packages/optimize/README.md run as written and print what they say; the TOML config it shows
runs through ``dspyo3 optimize run`` against the loopback LM."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from dspyo3_core.testing.readme import run_python_blocks

README = Path(__file__).resolve().parents[2] / "packages" / "optimize" / "README.md"


def test_readme_python_examples(tmp_path: Path) -> None:
    quick, registry, stats = ([line for line in lines if not line.startswith("Bootstrapped ")]
                              for lines in run_python_blocks(README, tmp_path, expect=3, timeout=180))
    assert quick == ["finished [0.35, 1.0] 1.0.0", "mcnemar-exact 0.65 0.0002"]
    assert (tmp_path / "runs" / "apples" / "scores.png").is_file()
    assert (tmp_path / "registry" / "apples" / "versions" / "1.0.0" / "program.json").is_file()
    assert registry == ["['1.0.0', '1.0.1'] {'dev': '1.0.1', 'prod': '1.0.1'}", "Answer in one word.",
                        "Answer in one word."]
    assert stats == ["mcnemar-exact 0.4 0.0078", "['PASS delta>0.02 (value 0.4)', 'PASS p<0.05 (value 0.0078125)']"]


def test_readme_config_runs(tmp_path: Path, lm_env: dict[str, str], dspyo3_exe: str) -> None:
    toml = re.search(r"```toml\n(# optimize\.toml.*?)```", README.read_text(), re.S)
    assert toml is not None
    config = tmp_path / "optimize.toml"
    config.write_text(toml.group(1))
    env = dict(lm_env, DSPYO3_REGISTRY=str(tmp_path / "registry"))
    result = subprocess.run([dspyo3_exe, "optimize", "run", str(config), "--json", "--no-progress"], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["status"] == "finished" and [t["name"] for t in report["trials"]] == [
        "baseline", "bootstrap_fewshot", "mipro-light"]
    assert report["registered"]["name"] == "gsm8k-cot" and report["registered"]["version"] == "1.0.0"
    assert report["best_score"] > report["trials"][0]["score"]
    assert (tmp_path / "runs" / "gsm8k-cot" / "report.json").is_file()
    listed = subprocess.run([dspyo3_exe, "registry", "list", "gsm8k-cot"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0 and listed.stdout.startswith("1.0.0")
