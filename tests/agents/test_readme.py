"""The Python examples in packages/agents/README.md run as written and print what they say."""

from __future__ import annotations

from pathlib import Path

from dspyo3_core.testing.readme import run_python_blocks

README = Path(__file__).resolve().parents[2] / "packages" / "agents" / "README.md"


def test_readme_examples_run(tmp_path: Path) -> None:
    registry, agent, state, parallel = run_python_blocks(README, tmp_path, expect=4)
    assert registry[:3] == ["{'description': 'the first addend.', 'type': 'integer'}", "5", "HI"]
    assert registry[3].startswith("a | tool 'add': argument 'a': Input should be a valid integer")
    assert "argument 'b': missing (required). Expected arguments: a (integer), b (integer)" in registry[3]
    assert registry[4] == "['shout']"
    assert agent[0] == "42 finish 3"
    assert agent[1].startswith("Error: tool 'multiply': argument 'a': Input should be")
    assert agent[2] == "42"
    assert state == ["1 2", "{'turns': ['hello']}"]
    assert parallel == ["['0', '1', '4', '9', '16']", "14"]
    assert (tmp_path / "trajectory.jsonl").exists() and (tmp_path / "agent-state.db").exists()
