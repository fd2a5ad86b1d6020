"""Datasets for optimizer runs and evaluation: JSONL or CSV files into ``dspy.Example`` lists, a seeded train/dev
split, presets for known datasets (GSM8K) and a content hash that identifies a dataset in the registry."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy

from dspyo3_core.files import loads_json, read_jsonl
from dspyo3_core.gsm8k import final_answer, rationale

Record = dict[str, Any]


class DataError(ValueError):
    """A dataset file or its layout is unusable (bad path, format, rows or split); the message names the file,
    the row and the fix."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset file does not exist."""


def gsm8k_record(record: Mapping[str, Any]) -> Record:
    """GSM8K's ``answer`` is a worked solution ending in ``#### 42``: keep the final number as ``answer`` and the
    solution as ``rationale``."""
    solution = str(record.get("answer", ""))
    if "question" not in record:
        raise DataError(f"a gsm8k row needs a question field; it has {sorted(record)}")
    return {"question": str(record["question"]), "answer": final_answer(solution).replace(",", ""),
            "rationale": rationale(solution)}


PRESETS: dict[str, tuple[Callable[[Mapping[str, Any]], Record], tuple[str, ...]]] = {
    "gsm8k": (gsm8k_record, ("question",)),
}
"""Preset name -> (record transform, input fields)."""


def read_records(path: str | Path) -> list[Record]:
    """Rows of a ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects) or ``.csv`` file."""
    file = Path(path)
    if not file.is_file():
        raise DatasetNotFoundError(f"dataset file {file} does not exist; check the path (relative paths are "
                                   "read from the config file's directory)")
    suffix = file.suffix.lower()
    if suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    if suffix == ".json":
        try:
            data = loads_json(file.read_bytes(), source=str(file))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except ValueError as exc:  # not UTF-8, or nested too deeply
            raise DataError(f"{file}: not a JSON dataset ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise DataError(f"{file}: a .json dataset must be a list of objects")
        return [dict(row) for row in data]
    if suffix in (".jsonl", ".ndjson"):
        rows: list[Record] = []
        try:  # a dataset's last line is data, not a log line a crash may have torn: a bad one is an error too
            for number, row in enumerate(read_jsonl(file, skip_torn_last=False), 1):
                if not isinstance(row, dict):
                    raise DataError(f"{file}: record {number} (blank lines not counted) must be a JSON object, "
                                    f"got {type(row).__name__}")
                rows.append(row)
        except DataError:
            raise
        except ValueError as exc:  # read_jsonl names file:line
            raise DataError(f"{exc}; fix or remove that line") from None
        return rows
    raise DataError(f"{file}: unknown dataset format {suffix!r}; use .jsonl, .json or .csv")


def load_examples(path: str | Path, *, inputs: Sequence[str] | None = None, preset: str | None = None,
                  limit: int | None = None, offset: int = 0,
                  transform: Callable[[Mapping[str, Any]], Record] | None = None) -> list[dspy.Example]:
    """Load a dataset file as ``dspy.Example`` objects with their input fields set.

    Args:
        path: a ``.jsonl``, ``.json`` or ``.csv`` file.
        inputs: the input field names (the rest are labels); a preset supplies them.
        preset: a known dataset layout (``"gsm8k"``).
        limit: keep at most this many rows (after ``offset``).
        offset: skip this many rows first.
        transform: a function applied to each row before it becomes an example.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise DataError(f"unknown dataset preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        preset_transform, preset_inputs = PRESETS[preset]
        transform = transform or preset_transform
        inputs = inputs or preset_inputs
    if not inputs:
        raise DataError(f"{path}: say which fields are inputs (inputs = [\"question\"]) or use a preset")
    rows = read_records(path)[offset:]
    if limit is not None:
        rows = rows[:limit]
    examples: list[dspy.Example] = []
    for number, row in enumerate(rows, offset + 1):
        record = transform(row) if transform else dict(row)
        missing = [name for name in inputs if name not in record]
        if missing:
            raise DataError(f"{path}: row {number} has no input field(s) {missing}; it has {sorted(record)}")
        examples.append(dspy.Example(**record).with_inputs(*inputs))
    return examples


def split(examples: Sequence[dspy.Example], *, dev_fraction: float = 0.5, seed: int = 0,
          dev_size: int | None = None) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Shuffle with ``seed`` and split into (train, dev); ``dev_size`` overrides ``dev_fraction``."""
    if not 0 < dev_fraction < 1 and dev_size is None:
        raise DataError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_dev = dev_size if dev_size is not None else max(1, round(len(items) * dev_fraction))
    if not 0 < n_dev < len(items):
        raise DataError(f"cannot split {len(items)} examples into train and a dev set of {n_dev}; "
                         "load more rows or change dev_fraction / dev_size")
    return items[n_dev:], items[:n_dev]


def dataset_hash(examples: Sequence[dspy.Example]) -> str:
    """``sha256:<hex>`` of the examples' fields and input keys (order matters), to record what a program saw."""
    digest = hashlib.sha256()
    for example in examples:
        payload = {"data": dict(example.items()), "inputs": sorted(example.inputs().keys())}
        digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()
