"""Datasets (JSONL, CSV, presets, seeded split, hash), metrics by import path, and the [optimize] table."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from dspyo3_core.config import ConfigError
from dspyo3_core.gsm8k import last_number
from dspyo3_optimize.data import dataset_hash, load_examples, split
from dspyo3_optimize.metrics import UniversalMetric, numeric_match, resolve_metric
from dspyo3_optimize.settings import optimize_settings

from .conftest import GSM8K_TRAIN


def test_gsm8k_preset_and_split() -> None:
    examples = load_examples(GSM8K_TRAIN, preset="gsm8k", limit=10)
    assert len(examples) == 10 and examples[0].answer == "72" and list(examples[0].inputs().keys()) == ["question"]
    train, dev = split(examples, dev_size=4, seed=7)
    assert len(train) == 6 and len(dev) == 4
    assert split(examples, dev_size=4, seed=7) == (train, dev)  # the seed fixes the split
    assert split(examples, dev_size=4, seed=8) != (train, dev)
    assert dataset_hash(dev) == dataset_hash(list(dev)) != dataset_hash(train)
    with pytest.raises(ValueError, match="cannot split 10 examples"):
        split(examples, dev_size=10)


def test_csv_jsonl_and_errors(tmp_path: Path) -> None:
    csv_file = tmp_path / "qa.csv"
    csv_file.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    rows = load_examples(csv_file, inputs=["question"])
    assert [r.answer for r in rows] == ["4", "Paris"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not JSON: .*; fix or remove that line"):
        load_examples(bad, inputs=["question"])
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1 has no input field\(s\) \['question'\]; it has \['q'\]"):
        load_examples(good, inputs=["question"])
    with pytest.raises(ValueError, match="say which fields are inputs"):
        load_examples(good)
    with pytest.raises(ValueError, match="unknown dataset preset 'gsm9k'; known: gsm8k"):
        load_examples(good, preset="gsm9k")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl", inputs=["q"])


def test_metrics() -> None:
    example = dspy.Example(question="q", answer="1,234").with_inputs("question")
    assert numeric_match(example, dspy.Prediction(answer="The total is $1234."))
    assert not numeric_match(example, dspy.Prediction(answer="1235"))
    assert last_number("3.50 dollars") == "3.5" and last_number("none") is None
    assert resolve_metric("dspyo3_optimize.metrics:exact_match").__name__ == "exact_match"
    with pytest.raises(ValueError, match="unknown metric 'acc'; use a built-in"):
        resolve_metric("acc")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_metric("dspyo3_optimize.metrics:nope")
    seen = []
    wrapped = UniversalMetric(lambda gold, pred: seen.append((gold, pred)) or 1.0)
    assert wrapped("g", "p", None, "pred_name", "pred_trace") == 1.0 and seen == [("g", "p")]  # GEPA's five args


def test_optimize_table(isolated_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = isolated_config / "dspyo3.toml"
    project.write_text('[optimize]\nregistry = "redis://127.0.0.1:1/0"\nexecutor = "ray"\n')
    settings = optimize_settings()
    assert settings.registry == "redis://127.0.0.1:1/0" and settings.executor == "ray"
    monkeypatch.setenv("DSPYO3_REGISTRY", "/tmp/elsewhere")
    assert optimize_settings().registry == "/tmp/elsewhere"
    project.write_text('[optimize]\nregistri = "x"\n')
    with pytest.raises(ConfigError, match=r"^unknown key 'registri' \(did you mean 'registry'\?\) in \[optimize\]; "
                                         r"known keys: concurrency, executor, registry, trusted_programs$"):
        optimize_settings()
    project.write_text('[optimize]\nexecutor = "dask"\n')
    with pytest.raises(ConfigError, match="use one of local, ray"):
        optimize_settings()
