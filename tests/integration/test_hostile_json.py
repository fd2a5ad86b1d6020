"""JSON nested too deeply for Python, in every file we read back: a clear error naming the file, never a
RecursionError or a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DEEP = "[" * 100_000 + "]" * 100_000


def test_trajectory(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    from dspyo3_agents.trajectory import read_trajectory

    path = tmp_path / "run.jsonl"
    path.write_text('{"event": "start", "run_id": "r"}\n' + DEEP + "\n" + '{"event": "finish", "run_id": "r"}\n')
    with pytest.raises(ValueError, match=r"run\.jsonl:2 is JSON nested too deeply"):
        list(read_trajectory(path))
    done = subprocess.run([dspyo3_exe, "agents", "trace", str(path)], env=cli_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "nested too deeply" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr


def test_optimizer_checkpoint(tmp_path: Path) -> None:
    from dspyo3_optimize.runner import Run, RunError

    (tmp_path / "checkpoint.json").write_text(DEEP)
    with pytest.raises(RunError, match=r"checkpoint\.json is not valid JSON"):
        Run(tmp_path).load_checkpoint()
    (tmp_path / "checkpoint.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="not a checkpoint"):
        Run(tmp_path).load_checkpoint()


def test_registry_metadata(tmp_path: Path) -> None:
    import dspy

    from dspyo3_optimize.registry import IntegrityError, ProgramRegistry

    registry = ProgramRegistry(tmp_path / "reg")
    registry.register("qa", dspy.Predict("question -> answer"))
    (tmp_path / "reg" / "qa" / "versions" / "1.0.0" / "meta.json").write_text(DEEP)
    with pytest.raises(IntegrityError, match=r"meta\.json is not valid metadata"):
        registry.meta("qa", "1.0.0")


def test_dataset_file(tmp_path: Path) -> None:
    from dspyo3_optimize.data import DataError, read_records

    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(DataError, match=r"deep\.json: not a JSON dataset .*nested too deeply"):
        read_records(tmp_path / "deep.json")


@pytest.mark.parametrize("raw", [DEEP, "[1, 2]", "\xff not json"])
def test_agent_state_written_by_something_else(tmp_path: Path, raw: str) -> None:
    import sqlite3

    from dspyo3_agents.state import CorruptStateError, SQLiteStateStore

    store = SQLiteStateStore(tmp_path / "state.db")
    store.save(store.load("run-1").__class__("run-1", {"step": 1}))
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE dspyo3_agent_state SET data = ? WHERE key = ?", (raw, "run-1"))
    with pytest.raises(CorruptStateError, match=r"agent state 'run-1' in SQLite .*delete it"):
        store.load("run-1")
