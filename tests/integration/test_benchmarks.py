"""The benchmark scripts run on any BEIR-layout folder and print the JSON the issues promise (shape only: figures
are measured by running them, never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dspyo3_core.testing.phoenix import PhoenixProcess

REPO = Path(__file__).resolve().parents[2]


def tiny_beir(root: Path) -> Path:
    """A BEIR-layout folder of our own: 6 documents, 3 judged queries."""
    docs = {
        "d1": ("Vitamin D", "Vitamin D deficiency raises fracture risk in older adults."),
        "d2": ("Statins", "Statins lower cholesterol and cardiovascular events."),
        "d3": ("Sleep", "Short sleep is associated with weight gain."),
        "d4": ("Exercise", "Aerobic exercise improves insulin sensitivity."),
        "d5": ("Coffee", "Coffee intake shows no link with arrhythmia."),
        "d6": ("Bones", "Calcium and vitamin D supplements and bone density."),
    }
    root.mkdir()
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items())
    )
    queries = {"q1": "vitamin D and fractures", "q2": "cholesterol lowering drugs", "q3": "sleep and weight"}
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td6\t1\nq2\td2\t1\nq3\td3\t1\n")
    return root


def test_bm25_benchmark_on_any_beir_folder(tmp_path: Path) -> None:
    data = tiny_beir(tmp_path / "tiny")
    out = tmp_path / "bm25.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bm25.py"), "--data", str(data), "--repeat", "1",
         "--threads", "1", "--json", str(out), "--plot", str(tmp_path / "bm25.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert last["dataset"] == "tiny"
    for side in ("dspyo3", "bm25s"):
        assert set(last[side]) >= {"ndcg@10", "recall@100", "index_s", "qps"}
        assert 0.0 <= last[side]["ndcg@10"] <= 1.0
    assert last["dspyo3"]["recall@100"] == 1.0  # every judged document contains a query term
    assert set(last["ratio"]) == {"qps", "index"}
    assert (tmp_path / "bm25.png").stat().st_size > 0


def test_bm25_benchmark_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bm25.py"), "--data", str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "not in BEIR layout: missing corpus.jsonl, queries.jsonl, qrels/test.tsv" in result.stderr


def test_kernels_benchmark_shape(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels.py"), "--duration", "0.3"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"lru", "fusion", "rate_limiter"}
    assert {"dspyo3", "cachetools", "speedup"} <= set(last["lru"]["get_hit_ns"])
    assert set(last["rate_limiter"]["accuracy"]) == {"dspyo3", "aiolimiter"}


def test_parse_benchmark_shape(tmp_path: Path) -> None:
    out = tmp_path / "parse.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "parse.py"), "--answers", "50",
                             "--json", str(out), "--plot", str(tmp_path / "parse.png")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"answers", "chat", "json"}
    assert set(last["chat"]) == {"dspyo3_us", "dspy_us", "speedup"}
    assert json.loads(out.read_text()) == last and (tmp_path / "parse.png").stat().st_size > 0


def test_lm_throughput_benchmark_shape() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lm_throughput.py"), "--requests", "40",
                             "--concurrency", "8", "--latency-ms", "20"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"limit_rps", "run_many_rps", "parallel_rps", "gather_rps", "efficiency", "cpu_us_per_request"} <= set(
        figures)
    assert set(figures["cpu_us_per_request"]) == {"run_many", "parallel", "gather"}
    assert figures["same_answers"] is True and figures["limit_rps"] == 400


@pytest.mark.parametrize("adapter", ["chat", "native"])
def test_lm_transport_benchmark_shape(adapter: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lm_transport.py"), "--requests", "40",
                             "--concurrency", "8", "--latency-ms", "20", "--adapter", adapter],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures["cpu_us_per_request"]) == set(figures["rps"]) == {"litellm", "native", "engine", "floor",
                                                                                "rust", "httpx"}
    assert figures["limit_rps"] == 400 and figures["same_predictions"] is True and figures["adapter"] == adapter
    # figures to report (benchmarks/RESULTS.md), not speeds to assert
    assert figures["cpu_ratio"] > 0 and figures["engine_cpu_ratio"] > 0 and figures["floor_cpu_ratio"] > 0, figures


def test_rate_limit_benchmark_shape(redis_url: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rate_limit.py"), "--rate", "100",
                             "--requests", "40", "--concurrency", "8"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"rate", "local_rps", "local_error", "redis_rps", "redis_error", "aiolimiter_rps"} <= set(figures)


def test_cache_benchmark_shape(tmp_path: Path, redis_binary: str) -> None:
    out = tmp_path / "cache.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cache.py"), "--gets", "200", "--repeat", "3",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"memory_hit_us", "dspy_memory_hit_us", "redis_hit_us", "redis_get_us"}
    assert all(value > 0 for value in figures.values()), figures
    assert json.loads(out.read_text()) == figures


def test_overhead_benchmark_shape() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--calls", "20",
                             "--rounds", "20"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"bare_us", "stack_us", "added_us"}
    assert figures["bare_us"] > 0 and figures["stack_us"] > 0, figures


def test_tracing_benchmark_shape(phoenix: PhoenixProcess) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tracing.py"), "--calls", "10",
                             "--rounds", "10", "--endpoint", phoenix.otlp_http],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"added_us_per_call", "spans_per_call"}
    assert set(figures["added_us_per_call"]) == set(figures["spans_per_call"]) == {"off", "on", "openinference"}
    detail = json.loads(result.stdout.strip().splitlines()[-2])
    assert set(detail["median_us_per_call"]) >= {"base", "oi_base", "openinference"}
    assert figures["spans_per_call"]["openinference"] > 0, figures  # its spans reached the counting exporter
    if figures["added_us_per_call"]["on"] is None:  # the production tracer is not there: the reason is given
        assert detail["not_measured"]["on"], detail
    else:
        assert figures["spans_per_call"]["on"] >= 1 and figures["spans_per_call"]["off"] == 0, figures


def test_adapter_benchmark_shape(tmp_path: Path) -> None:
    out = tmp_path / "adapter.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adapter.py"), "--calls", "5", "--rounds", "1",
                             "--json", str(out), "--plot", str(tmp_path / "adapter.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures == json.loads(out.read_text())
    shapes = {"demos0", "demos2", "demos16", "context50k"}
    assert set(figures["cpu_us_per_call"]) == set(figures["dspy_lm"]) == set(figures["json_adapter"]) == shapes
    for side in figures["cpu_us_per_call"].values():
        assert set(side) == {"dspy", "native"} and side["dspy"] > 0 and side["native"] > 0
    assert figures["same_outputs"] is True  # both adapters sent the same messages and predicted the same
    assert (tmp_path / "adapter.png").stat().st_size > 0
