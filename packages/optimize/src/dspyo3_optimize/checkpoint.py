"""An optimizer run's checkpoint (:class:`Checkpoint`, ``checkpoint.json``) and its directory (:class:`RunDirectory`).

The checkpoint records the run's id, the fingerprint of the configuration it was written for, time and cost spent
so far, and one record per trial (``running``, ``finished``, ``failed`` or ``interrupted``). A finished trial's
record names its program state file (``trials/<n>.json``) and that file's sha256.

A checkpoint file is data: :meth:`Checkpoint.from_dict` checks every field it reads back and refuses a file that
does not hold what this version writes, with a :class:`CheckpointError` naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from dspyo3_core.files import append_jsonl, atomic_write_text, loads_json, read_jsonl
from dspyo3_optimize.common import jsonable, now, sha256_hex, state_checksum
from dspyo3_optimize.run_config import RunError

if TYPE_CHECKING:
    from dspyo3_optimize.run_config import RunConfig

CHECKPOINT_VERSION = 1
"""The checkpoint format this version writes and reads."""

TRIAL_STATUSES: tuple[str, ...] = ("running", "finished", "failed", "interrupted")
"""What a trial record's ``status`` may be."""

RUN_STATUSES: tuple[str, ...] = ("running", "finished", "failed", "interrupted", "crashed", "time_budget_exceeded",
                                 "cost_budget_exceeded")
"""What a run's ``status`` may be."""

_FRESH = "delete it (or run with --fresh) to start over"


class CheckpointError(RunError):
    """A checkpoint file does not hold a checkpoint this version can resume; the message names the file, what is
    wrong and the fix."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trial_record(key: str, record: Any, problem: list[str]) -> tuple[int, dict[str, Any]] | None:
    """``(index, record)`` for a valid trial record; appends what is wrong to ``problem`` otherwise."""
    if not (key.isdigit() and (key == "0" or not key.startswith("0"))):
        problem.append(f"trials key {key!r} is not a trial number")
        return None
    where = f"trial {key}"
    if not isinstance(record, dict):
        problem.append(f"{where} is not a JSON object")
        return None
    if record.get("status") not in TRIAL_STATUSES:
        problem.append(f"{where} has status {record.get('status')!r}, not one of {', '.join(TRIAL_STATUSES)}")
        return None
    if "index" in record and record["index"] != int(key):
        problem.append(f"{where} records index {record['index']!r}")
        return None
    attempts = record.get("attempts", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        problem.append(f"{where} has attempts {attempts!r}, not a count")
        return None
    if record["status"] == "finished":
        for name in ("score", "ci_low", "ci_high"):
            value = record.get(name)
            if not (_is_number(value) or (name != "score" and value is None)):
                problem.append(f"{where} has {name} {value!r}, not a number")
                return None
        state_file = record.get("state_file")
        path = PurePosixPath(state_file.replace("\\", "/")) if isinstance(state_file, str) else None
        if path is None or path.is_absolute() or path.parts[:1] != ("trials",) or ".." in path.parts:
            problem.append(f"{where} has state_file {state_file!r}, not a file under trials/")
            return None
        if not isinstance(record.get("state_sha256"), str):
            problem.append(f"{where} has no state_sha256")
            return None
        scores = record.get("candidate_scores", [])
        if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
            problem.append(f"{where} has candidate_scores that are not a list of numbers")
            return None
    return int(key), record


@dataclass
class Checkpoint:
    """What a run has done so far (``checkpoint.json``).

    Attributes:
        run_id: the run's id (kept across sessions; registered versions record it).
        fingerprint: sha256 of :attr:`fingerprint_parts`; a checkpoint is only resumed by the same configuration.
        fingerprint_parts: program, program state, LM, metric, trials, baseline and data hashes it was written for.
        created_at: ISO-8601 UTC time of the first session.
        elapsed_seconds: wall time of all sessions so far.
        cost_usd: USD spent by all sessions so far (None when nothing tracks cost).
        trials: trial index -> its record (``status``, ``attempts``; a finished one its scores and state file).
        status: the run's status when the last session stopped (``running`` while one runs).
        registered: the version the best trial was registered as (``name``, ``version``, ``registry``, ``stage``).
        sessions: how many sessions (processes) have worked on the run.
        version: the checkpoint format (:data:`CHECKPOINT_VERSION`).
    """

    run_id: str
    fingerprint: str
    fingerprint_parts: dict[str, Any] | None = None
    created_at: str = field(default_factory=now)
    elapsed_seconds: float = 0.0
    cost_usd: float | None = 0.0
    trials: dict[int, dict[str, Any]] = field(default_factory=dict)
    status: str = "running"
    registered: dict[str, Any] | None = None
    sessions: int = 0
    version: int = CHECKPOINT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (trial indices as string keys)."""
        return {
            "version": self.version, "run_id": self.run_id, "fingerprint": self.fingerprint,
            "fingerprint_parts": self.fingerprint_parts, "created_at": self.created_at,
            "elapsed_seconds": self.elapsed_seconds, "cost_usd": self.cost_usd,
            "trials": {str(index): record for index, record in sorted(self.trials.items())},
            "status": self.status, "registered": self.registered, "sessions": self.sessions,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "checkpoint") -> Checkpoint:
        """Read back :meth:`to_dict`'s form, checking every field (unknown keys are ignored).

        Raises:
            CheckpointError: ``data`` is not a checkpoint of this format; the message names ``source``, the field
                and the fix.
        """
        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{source} is not a valid checkpoint ({what}); {_FRESH}")

        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source} is not a checkpoint (a JSON object); {_FRESH}")
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{source} has checkpoint version {data.get('version')!r}, this dspyo3-optimize "
                                  f"writes {CHECKPOINT_VERSION}; start over with --fresh")
        for key in ("run_id", "fingerprint", "created_at"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise bad(f"{key} is {data.get(key)!r}, not a non-empty string")
        parts = data.get("fingerprint_parts")
        if parts is not None and not isinstance(parts, dict):
            raise bad("fingerprint_parts is not a JSON object")
        elapsed = data.get("elapsed_seconds", 0.0)
        if not _is_number(elapsed) or not math.isfinite(elapsed) or elapsed < 0:
            raise bad(f"elapsed_seconds is {elapsed!r}, not a number >= 0")
        cost = data.get("cost_usd")
        if cost is not None and (not _is_number(cost) or not math.isfinite(cost) or cost < 0):
            raise bad(f"cost_usd is {cost!r}, not a number >= 0")
        status = data.get("status", "running")
        if status not in RUN_STATUSES:
            raise bad(f"status is {status!r}, not one of {', '.join(RUN_STATUSES)}")
        sessions = data.get("sessions", 0)
        if not isinstance(sessions, int) or isinstance(sessions, bool) or sessions < 0:
            raise bad(f"sessions is {sessions!r}, not a count")
        registered = data.get("registered")
        if registered is not None and not (isinstance(registered, dict) and isinstance(registered.get("name"), str)
                                           and isinstance(registered.get("version"), str)):
            raise bad("registered is not a JSON object with the name and version of a registered program")
        raw_trials = data.get("trials", {})
        if not isinstance(raw_trials, dict):
            raise bad("trials is not a JSON object of trial records")
        trials: dict[int, dict[str, Any]] = {}
        for key, record in raw_trials.items():
            problem: list[str] = []
            parsed = _trial_record(str(key), record, problem)
            if parsed is None:
                raise bad(problem[0])
            trials[parsed[0]] = parsed[1]
        return cls(run_id=data["run_id"], fingerprint=data["fingerprint"], fingerprint_parts=parts,
                   created_at=data["created_at"], elapsed_seconds=float(elapsed),
                   cost_usd=None if cost is None else float(cost), trials=trials, status=status,
                   registered=registered, sessions=sessions)

    def finished(self) -> list[int]:
        """Indices of the finished trials, in order."""
        return sorted(index for index, record in self.trials.items() if record.get("status") == "finished")

    def best(self) -> tuple[int | None, float | None]:
        """The finished trial with the highest score (the first of equal ones) and its score; ``(None, None)``
        when none finished."""
        best: tuple[int | None, float | None] = (None, None)
        for index in self.finished():
            score = float(self.trials[index]["score"])
            if best[1] is None or score > best[1]:
                best = (index, score)
        return best

    def records(self) -> list[dict[str, Any]]:
        """The trial records in index order."""
        return [self.trials[index] for index in sorted(self.trials)]


def fingerprint_parts(config: RunConfig, program: Any, lm_name: str | None, train_hash: str,
                      dev_hash: str) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: each part hashed or named so that it is the same in every
    process for the same configuration (LM objects by model name, the program by its DSPy state)."""
    from dspyo3_optimize.metrics import metric_name

    return {
        "program": config.program if isinstance(config.program, str) else type(config.program).__name__,
        "program_state": state_checksum(program),
        "lm": lm_name,
        "metric": metric_name(config.metric),
        "trials": jsonable([t.__dict__ for t in config.trials]),
        "baseline": config.baseline,
        "train": train_hash,
        "dev": dev_hash,
    }


def fingerprint(parts: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of :func:`fingerprint_parts` (canonical JSON)."""
    return "sha256:" + sha256_hex(json.dumps(parts, sort_keys=True).encode())


def fingerprint_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What changed between the parts a checkpoint was written for and the current ones, for the error message."""
    if not old:
        return "program, LM, metric, trials or data changed"
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            changed.append(f"{key}: {a!r} -> {b!r}" if key in ("lm", "program", "metric", "baseline")
                           else f"{key} changed")
    return "; ".join(changed) or "the configuration changed"


class RunDirectory:
    """One run's directory: ``checkpoint.json``, ``events.jsonl``, ``trials/<n>.json``, ``report.json``,
    ``scores.png``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        self.checkpoint_path = out_dir / "checkpoint.json"
        self.events_path = out_dir / "events.jsonl"

    def load_checkpoint(self) -> Checkpoint | None:
        """The checkpoint, or None when there is none.

        Raises:
            CheckpointError: the file is not valid JSON or not a checkpoint this version can resume.
        """
        if not self.checkpoint_path.is_file():
            return None
        try:
            data = loads_json(self.checkpoint_path.read_bytes(), source=str(self.checkpoint_path))
        except ValueError:  # also UnicodeDecodeError, and input nested too deeply
            raise CheckpointError(f"{self.checkpoint_path} is not valid JSON; {_FRESH}") from None
        return Checkpoint.from_dict(data, source=str(self.checkpoint_path))

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint atomically."""
        atomic_write_text(self.checkpoint_path,
                          json.dumps(checkpoint.to_dict(), indent=2, sort_keys=True, default=str))

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to ``events.jsonl`` (whole lines, even with concurrent writers)."""
        append_jsonl(self.events_path, {"event": kind, "at": now(), "pid": os.getpid(), **fields}, default=str)

    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far (a line torn by a crash is skipped)."""
        if not self.events_path.is_file():
            return []
        return [e for e in read_jsonl(self.events_path, torn_prefix='{"event"') if isinstance(e, dict)]
