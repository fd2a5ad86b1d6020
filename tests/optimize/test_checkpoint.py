"""The run checkpoint is data: what is read back is checked, and a bad file is refused with an error naming the file,
the field and the fix (start over with --fresh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_optimize import RunConfig, TrialSpec, run
from dspyo3_optimize.common import canonical, sha256_hex
from dspyo3_optimize.runner import Run, RunError, load_trial_program


def _tiny(tmp_path: Path, train: list[Any], lm: Any) -> RunConfig:
    """One cheap trial (labeled demos only: no LM calls while compiling) on 2 dev examples."""
    return RunConfig(name="tiny", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                     trials=[TrialSpec("bootstrap_fewshot", {"max_bootstrapped_demos": 0, "max_labeled_demos": 1})],
                     out_dir=tmp_path / "run", trainset=train[:2], devset=train[2:4], lm=lm, baseline=False,
                     concurrency=2)


def _valid() -> dict[str, Any]:
    return {
        "version": 1, "run_id": "tiny-0123abcd", "fingerprint": "sha256:00", "fingerprint_parts": {"lm": "x"},
        "created_at": "2026-01-01T00:00:00+00:00", "elapsed_seconds": 1.5, "cost_usd": 0.25, "status": "finished",
        "registered": None, "sessions": 1,
        "trials": {"0": {"index": 0, "name": "baseline", "status": "finished", "optimizer": "baseline",
                         "attempts": 1, "score": 0.5, "ci_low": 0.0, "ci_high": 1.0, "candidate_scores": [],
                         "state_file": "trials/0.json", "state_sha256": "sha256:00"},
                   "1": {"index": 1, "name": "mipro", "status": "failed", "optimizer": "mipro_v2", "attempts": 2,
                         "error": "LMAuthError: ****", "reason": "LMAuthError: ****"}},
    }


def test_a_valid_checkpoint_round_trips(tmp_path: Path) -> None:
    from dspyo3_optimize.checkpoint import Checkpoint, RunDirectory

    rundir = RunDirectory(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps(_valid()))
    checkpoint = rundir.load_checkpoint()
    assert isinstance(checkpoint, Checkpoint)
    assert sorted(checkpoint.trials) == [0, 1] and checkpoint.finished() == [0] and checkpoint.best() == (0, 0.5)
    assert checkpoint.cost_usd == 0.25 and checkpoint.sessions == 1 and checkpoint.status == "finished"
    rundir.save_checkpoint(checkpoint)
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == _valid()  # the file format is unchanged


def _with(change: Any) -> dict[str, Any]:
    data = _valid()
    change(data)
    return data


BAD = [
    ("trials is a list", lambda d: d.update(trials=[]), "trials is not a JSON object"),
    ("sessions is text", lambda d: d.update(sessions="two"), "sessions is 'two', not a count"),
    ("run_id missing", lambda d: d.pop("run_id"), "run_id is None"),
    ("negative cost", lambda d: d.update(cost_usd=-1), "cost_usd is -1"),
    ("unknown run status", lambda d: d.update(status="done"), "status is 'done'"),
    ("trial key not a number", lambda d: d["trials"].update({"x": d["trials"].pop("1")}), "'x' is not a trial"),
    ("trial not an object", lambda d: d["trials"].update({"1": "failed"}), "trial 1 is not a JSON object"),
    ("unknown trial status", lambda d: d["trials"]["1"].update(status="ok"), "trial 1 has status 'ok'"),
    ("score is text", lambda d: d["trials"]["0"].update(score="high"), "trial 0 has score 'high'"),
    ("attempts negative", lambda d: d["trials"]["1"].update(attempts=-1), "trial 1 has attempts -1"),
    ("state file outside the run", lambda d: d["trials"]["0"].update(state_file="../../etc/passwd"),
     "not a file under trials/"),
    ("absolute state file", lambda d: d["trials"]["0"].update(state_file="/etc/passwd"), "not a file under trials/"),
    ("registered is text", lambda d: d.update(registered="1.0.0"), "registered is not a JSON object"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_checkpoint_is_refused_naming_the_file_and_the_fix(tmp_path: Path, change: Any, message: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(_with(change)))
    with pytest.raises(RunError) as caught:
        Run(tmp_path).load_checkpoint()
    text = str(caught.value)
    assert str(path) in text and message in text and "--fresh" in text, text


def test_resuming_from_a_damaged_checkpoint_is_a_clean_error(tmp_path: Path, gsm8k_train: list[Any],
                                                              gsm8k_lm: Any) -> None:
    config = _tiny(tmp_path, gsm8k_train, gsm8k_lm)
    first = run(config)
    assert first.status == "finished"
    path = tmp_path / "run" / "checkpoint.json"
    data = json.loads(path.read_text())
    data["trials"]["0"]["score"] = None  # a finished trial without a score
    path.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"checkpoint\.json is not a valid checkpoint \(trial 0 has score None"):
        run(config)
    assert run(config, resume=False).status == "finished"  # --fresh starts over


def test_a_trial_state_file_outside_the_run_directory_is_not_read(tmp_path: Path) -> None:
    program = dspy.Predict("question -> answer")
    blob = canonical(program.dump_state())
    (tmp_path / "elsewhere.json").write_bytes(blob)  # a file the checkpoint points at, checksum and all
    data = _valid()
    data["trials"]["0"].update(state_file="../elsewhere.json", state_sha256="sha256:" + sha256_hex(blob))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match="not a file under trials/"):
        load_trial_program(tmp_path / "run", 0, dspy.Predict("question -> answer"))


def test_loading_a_trial_that_did_not_finish_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps(_valid()))
    with pytest.raises(RunError, match="no finished trial 1 in"):
        load_trial_program(tmp_path, 1, dspy.Predict("question -> answer"))
