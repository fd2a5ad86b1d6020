"""``dspyo3 rag demo`` (``hatch run demo``): the RAG job end to end.

1. Index a small corpus shipped with the package (20 passages about the Solar System, BEIR layout) into an
   embedded Qdrant collection plus BM25, the way ``dspyo3 rag index`` does;
2. evaluate BM25, dense and hybrid retrieval on its 10 judged questions;
3. answer questions with a DSPy RAG program (``dspy.ChainOfThought`` over the retrieved passages) and print the
   answers with the passages they cite.

With an LM configured (``DSPYO3_LM`` or a dspyo3 profile) step 3 runs on it. Without one the demo says so and is
OFFLINE: the "LM" is the loopback server from ``dspyo3_core.testing`` answering with the first sentence of the
best passage it was given (an extractive baseline, not a model).
"""

from __future__ import annotations

import json
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from dspyo3_core.config import ConfigError, build_lm, load_settings
from dspyo3_core.testing import LMServer, field_responder
from dspyo3_rag.collection import Chunk, RagCollection
from dspyo3_rag.evaluation import evaluate_retriever

__all__ = ["DEMO_QUESTIONS", "demo_data_dir", "run_demo"]

DEMO_QUESTIONS = [
    "Which planet is the hottest, and why?",
    "What makes Europa interesting in the search for life?",
    "Why does Earth have seasons?",
]
_ID = re.compile(r"^\[([^\]]+)\]\s*(.*)$", re.S)


def demo_data_dir() -> Path:
    """The shipped BEIR-layout demo corpus."""
    return Path(str(resources.files("dspyo3_rag") / "demo_data" / "solar_system"))


class RAG(dspy.Module):
    """Retrieve, then answer from the passages, citing their ids."""

    def __init__(self, collection: RagCollection, k: int = 3) -> None:
        super().__init__()
        self.collection, self.k = collection, k
        self.answer = dspy.ChainOfThought(
            "context: list[str], question: str -> answer: str, cited_ids: list[str]")

    def forward(self, question: str) -> dspy.Prediction:
        passages = self.collection.search(question, self.k)
        context = [f"[{p.id}] {p.long_text}" for p in passages]
        result = self.answer(context=context, question=question)
        known = [p.id for p in passages]
        cited = [c for c in (result.cited_ids or []) if c in known] or known[:1]
        return dspy.Prediction(answer=result.answer, cited_ids=cited, passages=passages)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


def _extractive(inputs: dict[str, str]) -> dict[str, Any]:
    """The offline 'LM': from the best-ranked passage in the prompt, the sentence sharing most words with the
    question (the passage's title excluded), citing that passage."""
    try:
        context = json.loads(inputs.get("context", "[]"))
    except json.JSONDecodeError:
        context = []
    first = str(context[0]) if context else ""
    match = _ID.match(first)
    passage_id, text = (match.group(1), match.group(2)) if match else ("", first)
    sentences = re.split(r"(?<=[.!?])\s+", text)[1:] or [text]  # the first "sentence" is the title
    question = _words(inputs.get("question", ""))
    best = max(sentences, key=lambda s: len(_words(s) & question))
    return {"reasoning": "Offline extractive baseline: no model was called; this is the sentence of the "
                         "best-ranked passage that shares most words with the question.",
            "answer": best, "cited_ids": [passage_id] if passage_id else []}


def run_demo(*, json_path: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns (and with ``json_path`` writes) a summary."""
    console = console or Console()
    data = demo_data_dir()
    try:
        profile = load_settings().profile(None)
    except ConfigError:
        profile = None
    offline = profile is None
    if offline:
        console.print(Panel("OFFLINE DEMO: no LM is configured (set DSPYO3_LM=provider/model, e.g. "
                            "openai/gpt-4o-mini, or a dspyo3 profile). Answers come from the loopback server's "
                            "extractive baseline, not a model. Retrieval is real either way.", style="yellow"))

    with tempfile.TemporaryDirectory(prefix="dspyo3-rag-demo-") as tmp:
        collection = RagCollection(tmp, "solar_system")
        records = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines() if line.strip()]
        chunks = [Chunk(r["_id"], f"{r['title']}. {r['text']}", {"title": r["title"]}) for r in records]
        collection.add(chunks, progress=True)
        console.print(f"indexed {len(chunks)} passages into an embedded Qdrant collection + BM25")

        table = Table(title="retrieval on the demo's 10 judged questions")
        for column in ("retriever", "ndcg@10", "recall@10", "mrr@10"):
            table.add_column(column)
        evaluation = {}
        for kind in ("bm25", "dense", "hybrid"):
            metrics = evaluate_retriever(data, kind, k=10)
            evaluation[kind] = {key: metrics[key] for key in ("ndcg@10", "recall@10", "mrr@10")}
            table.add_row(kind, *(f"{value:.3f}" for value in evaluation[kind].values()))
        console.print(table)

        server = LMServer(responder=field_responder(_extractive)) if offline else None
        answers = []
        try:
            if server is not None:
                server.start()
                lm = dspy.LM("openai/dspyo3-offline-extractive", api_base=server.api_base, api_key="offline",
                             cache=False)
            else:
                assert profile is not None
                lm = build_lm(profile)
            program = RAG(collection)
            with dspy.context(lm=lm):
                for question in DEMO_QUESTIONS:
                    result = program(question=question)
                    answers.append({"question": question, "answer": result.answer, "cited_ids": result.cited_ids})
                    console.print(f"[bold]Q:[/bold] {escape(question)}")
                    console.print(f"[bold]A:[/bold] {escape(str(result.answer))}  "
                                  f"[dim]sources: {escape(', '.join(result.cited_ids))}[/dim]")
        finally:
            if server is not None:
                server.stop()
            collection.close()

    summary = {"mode": "offline (extractive loopback LM)" if offline else f"live ({profile.model if profile else ''})",
               "passages": len(chunks), "retrieval": evaluation, "answers": answers}
    if json_path:
        from dspyo3_core.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return summary
