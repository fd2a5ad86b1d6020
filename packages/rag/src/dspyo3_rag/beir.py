"""BEIR-layout data sets and the retrieval metrics ``dspyo3 rag eval`` reports.

A BEIR folder has ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (header ``query-id corpus-id score``). Metrics follow BEIR's conventions: a retrieved
document whose id equals the query id is ignored, gain is the judged relevance, queries without judgements are
not evaluated.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dspyo3_core.files import loads_json

__all__ = ["BeirData", "BeirFormatError", "evaluate", "load_beir"]


_FIX = "fix or remove that line, or download the data set again"
_FIX_FILE = "save it as UTF-8, or download the data set again"


class BeirFormatError(ValueError):
    """A folder that is not in BEIR layout, or a file in it that cannot be read; the message says which and why."""


@dataclass
class BeirData:
    """A BEIR-layout data set: the corpus, the judged queries and their judgements."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR folder; documents are ``title + " " + text`` (one field, as the Anserini and bm25s baselines)."""
    folder = Path(folder)
    missing = [p for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / p).is_file()]
    if missing:
        raise BeirFormatError(f"{folder} is not in BEIR layout: missing {', '.join(missing)}")
    qrels: dict[str, dict[str, int]] = {}
    path = folder / "qrels" / f"{split}.tsv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = next(reader, [])
            if header[:2] != ["query-id", "corpus-id"]:
                raise BeirFormatError(f"{path}: expected a 'query-id corpus-id score' header, got {header}")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) < 3:
                    raise BeirFormatError(f"{path}:{line}: expected 'query-id<TAB>corpus-id<TAB>score', got {row}")
                try:
                    if int(row[2]) > 0:
                        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
                except ValueError:
                    raise BeirFormatError(f"{path}:{line}: score {row[2]!r} is not an integer") from None
        except UnicodeDecodeError as exc:
            raise BeirFormatError(f"{path}: not UTF-8 text ({exc}); {_FIX_FILE}") from None
        except csv.Error as exc:  # a NUL byte, an unterminated quote at the end of the file
            raise BeirFormatError(f"{path}:{reader.line_num}: not tab-separated text ({exc}); {_FIX}") from None
    doc_ids, doc_texts = [], []
    seen: set[str] = set()
    for line, record in _jsonl(folder / "corpus.jsonl"):
        if "_id" not in record:
            raise BeirFormatError(f"{folder / 'corpus.jsonl'}:{line}: a document needs an _id")
        if str(record["_id"]) in seen:
            raise BeirFormatError(f"{folder / 'corpus.jsonl'}:{line}: _id {record['_id']!r} appears twice")
        seen.add(str(record["_id"]))
        doc_ids.append(str(record["_id"]))
        doc_texts.append(f"{record.get('title') or ''} {record.get('text') or ''}".strip())
    query_ids, query_texts = [], []
    for _, record in _jsonl(folder / "queries.jsonl"):
        if str(record.get("_id")) in qrels:
            query_ids.append(str(record["_id"]))
            query_texts.append(str(record.get("text", "")))
    if not query_ids:
        raise BeirFormatError(f"{folder}: no query in queries.jsonl has a judgement in qrels/{split}.tsv")
    return BeirData(folder.name, doc_ids, doc_texts, query_ids, query_texts, qrels)


def _jsonl(path: Path) -> list[tuple[int, dict[str, object]]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BeirFormatError(f"{path}: not UTF-8 text ({exc}); {_FIX_FILE}") from None
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = loads_json(text, source=f"{path}:{line}")
        except json.JSONDecodeError as exc:
            raise BeirFormatError(f"{path}:{line}: not JSON ({exc.msg}); {_FIX}") from None
        except ValueError as exc:  # nested too deeply for Python
            raise BeirFormatError(f"{exc}; {_FIX}") from None
        if not isinstance(record, dict):
            raise BeirFormatError(f"{path}:{line}: expected a JSON object; {_FIX}")
        records.append((line, record))
    return records


def evaluate(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean ``ndcg@10``, ``recall@10``, ``recall@100`` and ``mrr@10`` of a run (query id -> ranked doc ids)."""
    ndcg, r10, r100, mrr = [], [], [], []
    for qid, judged in qrels.items():
        relevant = {doc: gain for doc, gain in judged.items() if gain > 0}
        if not relevant:
            continue
        ranked = list(dict.fromkeys(doc for doc in run.get(qid, []) if doc != qid))  # a repeated id counts once
        dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
        ndcg.append(dcg / idcg if idcg else 0.0)
        r10.append(len(set(ranked[:10]) & set(relevant)) / len(relevant))
        r100.append(len(set(ranked[:100]) & set(relevant)) / len(relevant))
        mrr.append(next((1 / (rank + 1) for rank, doc in enumerate(ranked[:10]) if relevant.get(doc, 0) > 0), 0.0))
    n = len(ndcg) or 1
    return {"ndcg@10": round(sum(ndcg) / n, 4), "recall@10": round(sum(r10) / n, 4),
            "recall@100": round(sum(r100) / n, 4), "mrr@10": round(sum(mrr) / n, 4)}
