"""GSM8K helpers shared by ``dspyo3 demo`` and dspyo3-optimize: the final answer of a worked solution, the last
number in a text, the exact-number metric, and the loader of the shared data set.

GSM8K's ``answer`` is a worked solution ending in ``#### 42``; the gold answer is what follows ``####``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
"""A number as GSM8K writes them: optional minus, digits with thousands separators, optional decimals."""

FALLBACK_QUESTIONS: list[dict[str, str]] = [
    {"question": "A baker makes 12 loaves an hour for 3 hours and sells 30. How many are left?", "answer": "6"},
    {"question": "Tom has 5 boxes of 8 pencils and gives away 12 pencils. How many pencils does he keep?",
     "answer": "28"},
    {"question": "A train travels 60 km each hour. How far does it go in 4 hours?", "answer": "240"},
    {"question": "Sara reads 15 pages a day. How many days does a 90-page book take her?", "answer": "6"},
]
"""Used only when ../shared/data is absent; written for this project, in GSM8K's format."""


def final_answer(solution: Any) -> str:
    """The text after the last ``####`` of a worked solution, stripped (the whole text when there is none)."""
    return str(solution).split("####")[-1].strip()


def rationale(solution: Any) -> str:
    """The worked solution before ``####``, stripped."""
    return str(solution).split("####")[0].strip()


def last_number(text: Any) -> str | None:
    """The last number in ``text``, thousands separators and trailing decimal zeros removed
    (``"... is $1,234.50."`` -> ``"1234.5"``); None when there is none."""
    found = NUMBER.findall(str(text))
    if not found:
        return None
    value = str(found[-1]).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def exact_number(example: Any, prediction: Any, trace: Any = None) -> bool:
    """Metric (GSM8K accuracy): the last number of ``prediction.answer`` equals the last number of
    ``example.answer`` (numerically, to 1e-6)."""
    gold = last_number(example.answer)
    predicted = last_number(getattr(prediction, "answer", ""))
    if gold is None or predicted is None:
        return False
    return gold == predicted or abs(float(gold) - float(predicted)) < 1e-6


def data_dir() -> Path:
    """``$DSPYO3_DATA_DIR``, else ``../shared/data``."""
    return Path(os.environ.get("DSPYO3_DATA_DIR") or "../shared/data")


def load_gsm8k(limit: int) -> tuple[list[Any], str]:
    """The first ``limit`` GSM8K test questions (``dspy.Example`` with input ``question`` and the final answer as
    ``answer``) from the shared data dir, or the built-in fallback set; and where they came from."""
    import dspy

    path = data_dir() / "gsm8k" / "test.jsonl"
    rows: list[dict[str, str]] = []
    source = str(path)
    if path.is_file():
        with path.open() as handle:
            for line in handle:
                if len(rows) >= limit:
                    break
                record = json.loads(line)
                rows.append({"question": record["question"], "answer": final_answer(record["answer"])})
    else:
        rows, source = FALLBACK_QUESTIONS[:limit], "built-in fallback questions (../shared/data not found)"
    return [dspy.Example(**row).with_inputs("question") for row in rows], source
