"""The GSM8K helpers ``dspyo3 demo`` and dspyo3-optimize share."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from dspyo3_core import demo
from dspyo3_core.gsm8k import FALLBACK_QUESTIONS, exact_number, final_answer, last_number, load_gsm8k, rationale


def test_final_answer_and_rationale_split_a_worked_solution() -> None:
    solution = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $18.\n#### 1,018"
    assert final_answer(solution) == "1,018" and rationale(solution).endswith("$18.")
    assert final_answer("42") == "42"


@pytest.mark.parametrize(("text", "number"), [
    ("The total is $1,234.", "1234"), ("3.50 dollars", "3.5"), ("-7 degrees", "-7"), ("10.0", "10"),
    ("first 3 then 12", "12"), ("none", None), ("", None),
])
def test_last_number(text: str, number: str | None) -> None:
    assert last_number(text) == number


def test_exact_number_compares_the_last_numbers() -> None:
    gold = dspy.Example(question="q", answer="1,234").with_inputs("question")
    assert exact_number(gold, dspy.Prediction(answer="So the answer is 1234.00"))
    assert not exact_number(gold, dspy.Prediction(answer="1235"))
    assert not exact_number(gold, dspy.Prediction(answer="no idea"))
    assert not exact_number(gold, dspy.Prediction(reasoning="no answer field"))
    assert not exact_number(dspy.Example(answer="n/a"), dspy.Prediction(answer="3"))


def test_load_gsm8k_reads_the_shared_file_or_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYO3_DATA_DIR", str(tmp_path / "nowhere"))
    examples, source = load_gsm8k(2)
    assert [e.answer for e in examples] == [q["answer"] for q in FALLBACK_QUESTIONS[:2]] and "fallback" in source
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": f"Q{i}: 2 + {i}?", "answer": f"2 + {i} = {2 + i}\n#### {2 + i:,}"} for i in range(1000, 1003)]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("DSPYO3_DATA_DIR", str(tmp_path))
    examples, source = load_gsm8k(2)
    assert source == str(tmp_path / "gsm8k" / "test.jsonl")
    assert [(e.question, e.answer) for e in examples] == [("Q1000: 2 + 1000?", "1,002"), ("Q1001: 2 + 1001?", "1,003")]
    assert list(examples[0].inputs().keys()) == ["question"]


def test_demo_uses_the_shared_helpers() -> None:
    assert demo.exact_number is exact_number and demo.load_gsm8k is load_gsm8k
    assert demo._offline_answer({"question": "It costs $1,234.50 in total"})["answer"] == "1234.5"
    assert demo._offline_answer({"question": "no digits"})["answer"] == "unknown"


def test_optimize_uses_the_same_helpers() -> None:
    pytest.importorskip("dspyo3_optimize")
    from dspyo3_optimize import metrics, testing
    from dspyo3_optimize.data import gsm8k_record

    assert metrics.numeric_match is exact_number and metrics.BUILTIN_METRICS["gsm8k"] is exact_number
    assert testing.last_number is last_number
    record = gsm8k_record({"question": "q", "answer": "work\n#### 1,018"})
    assert record == {"question": "q", "answer": "1018", "rationale": "work"}
