"""`dspyo3 rag eval` on BEIR SciFact (../shared/data) and on bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dspyo3_rag.beir import BeirFormatError, evaluate, load_beir
from dspyo3_rag.evaluation import evaluate_retriever

SCIFACT = Path(os.environ.get("DSPYO3_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data")) / "scifact"
KEYS = {"retriever", "dataset", "ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "qps"}
needs_scifact = pytest.mark.skipif(not SCIFACT.is_dir(), reason="../shared/data/scifact is not present")


def _eval(dspyo3_exe: str, cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dspyo3_exe, "rag", "eval", *args], capture_output=True, text=True, env=cli_env,
                          timeout=900)


@needs_scifact
def test_bm25_on_scifact_meets_the_reference_and_reproduces(dspyo3_exe: str, cli_env: dict[str, str]) -> None:
    runs = []
    for _ in range(2):
        done = _eval(dspyo3_exe, cli_env, "--data", str(SCIFACT), "--retriever", "bm25", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert set(result) == KEYS
        runs.append({k: v for k, v in result.items() if k != "qps"})
    assert runs[0] == runs[1], "numbers reproduce across runs"
    assert runs[0]["queries"] == 300 and runs[0]["dataset"] == "scifact"
    assert runs[0]["ndcg@10"] >= 0.675, runs[0]


@needs_scifact
def test_hybrid_with_the_offline_embedder_is_not_worse_than_bm25() -> None:
    bm25 = evaluate_retriever(SCIFACT, "bm25")
    hybrid = evaluate_retriever(SCIFACT, "hybrid")
    assert hybrid["ndcg@10"] >= bm25["ndcg@10"], (hybrid, bm25)


def _tiny_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [("d1", "Cats", "cats purr and sleep"), ("d2", "Dogs", "dogs bark loudly"),
            ("d3", "Birds", "birds sing at dawn"), ("d4", "Fish", "fish swim in water")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                               for i, t, x in docs))
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "which animal purrs"}\n'
                                        '{"_id": "q2", "text": "animals that bark"}\n'
                                        '{"_id": "q3", "text": "no judgement"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return root


@pytest.mark.parametrize("kind", ["bm25", "dense", "hybrid"])
def test_every_retriever_on_a_tiny_corpus(tmp_path: Path, kind: str) -> None:
    result = evaluate_retriever(_tiny_beir(tmp_path / "tiny"), kind, k=10)
    assert set(result) == KEYS and result["queries"] == 2
    assert result["ndcg@10"] == 1.0 and result["mrr@10"] == 1.0


def test_cli_text_json_and_plot(tmp_path: Path, dspyo3_exe: str, cli_env: dict[str, str]) -> None:
    data = _tiny_beir(tmp_path / "tiny")
    done = _eval(dspyo3_exe, cli_env, "--data", str(data), "--retriever", "bm25", "--k", "10",
                 "--plot", str(tmp_path / "m.png"))
    assert done.returncode == 0, done.stderr
    assert "ndcg@10" in done.stdout and (tmp_path / "m.png").stat().st_size > 0


def test_bad_folders_are_clear_errors(tmp_path: Path, dspyo3_exe: str, cli_env: dict[str, str]) -> None:
    done = _eval(dspyo3_exe, cli_env, "--data", str(tmp_path), "--json")
    assert done.returncode == 1
    assert "is not in BEIR layout: missing corpus.jsonl, queries.jsonl, qrels/test.tsv" in done.stderr
    assert "Traceback" not in done.stderr
    data = _tiny_beir(tmp_path / "broken")
    (data / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\nnot json\n')
    with pytest.raises(BeirFormatError, match=r"corpus.jsonl:2: not JSON"):
        load_beir(data)


def test_metrics_follow_beir_conventions() -> None:
    qrels = {"q": {"a": 1, "b": 1}}
    assert evaluate({"q": ["q", "a", "x", "b"]}, qrels)["mrr@10"] == 1.0, "the query's own id is skipped"
    perfect = evaluate({"q": ["a", "b"]}, qrels)
    assert perfect["ndcg@10"] == 1.0 and perfect["recall@10"] == 1.0
    assert evaluate({"q": ["x", "a"]}, qrels)["mrr@10"] == 0.5


def test_metrics_count_a_repeated_id_once_and_ignore_zero_judgements() -> None:
    result = evaluate({"q": ["d", "d", "d"]}, {"q": {"d": 1, "e": 1, "z": 0}})
    assert result["ndcg@10"] <= 1.0 and result["recall@10"] == 0.5


def test_malformed_qrels_and_corpus_are_named(tmp_path: Path) -> None:
    data = _tiny_beir(tmp_path / "t")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(BeirFormatError, match=r"test.tsv:2: expected 'query-id<TAB>corpus-id<TAB>score'"):
        load_beir(data)
    data = _tiny_beir(tmp_path / "u")
    (data / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n')
    with pytest.raises(BeirFormatError, match="_id 'd1' appears twice"):
        load_beir(data)
    (data / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "caf\xe9"}\n')
    with pytest.raises(BeirFormatError, match="not UTF-8"):
        load_beir(data)


def test_deeply_nested_json_and_binary_qrels_are_clear_errors(tmp_path: Path, dspyo3_exe: str,
                                                               cli_env: dict[str, str]) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for name in ("corpus.jsonl", "queries.jsonl"):
        data = _tiny_beir(tmp_path / name)
        with (data / name).open("a") as handle:
            handle.write(deep + "\n")
        line = 5 if name == "corpus.jsonl" else 4
        with pytest.raises(BeirFormatError, match=rf"{name}:{line}: JSON nested too deeply.*fix or remove that line"):
            load_beir(data)
    done = _eval(dspyo3_exe, cli_env, "--data", str(tmp_path / "queries.jsonl"), "--json")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "queries.jsonl:4: JSON nested too deeply" in done.stderr
    data = _tiny_beir(tmp_path / "binary")
    (data / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\n\xff\xfe\x00\x01\n")
    with pytest.raises(BeirFormatError, match=r"test.tsv: not UTF-8 text"):
        load_beir(data)
