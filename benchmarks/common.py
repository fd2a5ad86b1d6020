"""Helpers shared by the benchmark scripts: BEIR-layout loading, IR metrics, timing, JSON and plot output."""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DSPYO3_DATA_DIR") or REPO.parent / "shared" / "data")


@dataclass
class BeirData:
    """A BEIR-layout data set: corpus, queries with judgements, and the judgements."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``; keeps the queries that have judgements.

    Documents are ``title + " " + text`` (one field, as Anserini's and bm25s's BEIR baselines use).
    """
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / p).is_file()]
    if missing:
        raise SystemExit(f"{folder} is not in BEIR layout: missing {', '.join(missing)}")
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open() as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            raise SystemExit(f"{folder}/qrels/{split}.tsv: expected a 'query-id corpus-id score' header, got {header}")
        for row in reader:
            if len(row) >= 3 and int(row[2]) > 0:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    doc_ids, doc_texts = [], []
    with (folder / "corpus.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            doc_ids.append(str(record["_id"]))
            doc_texts.append(f"{record.get('title', '')} {record.get('text', '')}".strip())
    query_ids, query_texts = [], []
    with (folder / "queries.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            if str(record["_id"]) in qrels:
                query_ids.append(str(record["_id"]))
                query_texts.append(record["text"])
    return BeirData(folder.name, doc_ids, doc_texts, query_ids, query_texts, qrels)


def evaluate_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and recall@100 over the judged queries (BEIR conventions: a result whose id equals the query
    id is ignored; gain = relevance)."""
    ndcgs, recalls = [], []
    for qid, relevant in qrels.items():
        ranked = [doc for doc in run.get(qid, []) if doc != qid]
        dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
        ndcgs.append(dcg / idcg if idcg else 0.0)
        recalls.append(len(set(ranked[:100]) & set(relevant)) / len(relevant))
    return {"ndcg@10": round(sum(ndcgs) / len(ndcgs), 4), "recall@100": round(sum(recalls) / len(recalls), 4)}


def best_time(fn: Callable[[], Any], repeat: int, *, collect_garbage: bool = True) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs of ``fn`` and the last result.

    With ``collect_garbage=False`` the cyclic garbage collector is paused while ``fn`` runs (as ``timeit`` does),
    so the time does not depend on how many unrelated objects the process happens to hold.
    """
    best, result = math.inf, None
    for _ in range(repeat):
        result = None
        gc.collect()
        if not collect_garbage:
            gc.disable()
        try:
            started = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return best, result


def log(message: str) -> None:
    """Progress line on stderr (stdout's last line is the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any], json_path: str | None, plot_path: str | None,
         bars: Iterable[tuple[str, float]] = (), title: str = "") -> None:
    """Print ``result`` as the last line of stdout, optionally write it as JSON and a bar chart PNG."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels, values = zip(*bars, strict=True)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh(labels, values, color=["#c0504d" if "dspyo3" in label else "#4f81bd" for label in labels])
        ax.set_title(title)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.1f}", va="center")
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
    print(json.dumps(result))
