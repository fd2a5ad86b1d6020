"""The ``rag`` plugin of dspyo3: vector stores and embedders for the registries, and ``dspyo3 rag`` commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from dspyo3_core import hookimpl
from dspyo3_core.registry import EmbedderSpec, VectorStoreSpec


@click.group(name="rag", help="Retrieval for DSPy: stores, embedders, BM25, hybrid retrieval, evaluation.")
def rag_group() -> None:
    """``dspyo3 rag``."""


@rag_group.command("eval")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
@click.option("--retriever", type=click.Choice(["bm25", "dense", "hybrid"]), default="bm25", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--k", "k", type=click.IntRange(min=10), default=100, show_default=True, help="passages per query")
@click.option("--json", "as_json", is_flag=True, help="last line: one flat JSON object")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="bar chart of the metrics (PNG)")
def eval_command(data_dir: Path, retriever: str, split: str, k: int, as_json: bool, plot: Path | None) -> None:
    """Retrieval quality on a BEIR-layout data set: ndcg@10, recall@10, recall@100, mrr@10, queries/s."""
    from dspyo3_rag.beir import BeirFormatError
    from dspyo3_rag.evaluation import evaluate_retriever

    try:
        result = evaluate_retriever(data_dir, retriever, split=split, k=k, progress=not as_json)
    except BeirFormatError as exc:
        raise click.ClickException(str(exc)) from None
    if plot is not None:
        _plot(result, plot)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['dataset']} / {retriever}: {result['queries']} queries")
    for key in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "qps"):
        click.echo(f"  {key:<11} {result[key]}")


def _plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
    fig, ax = plt.subplots(figsize=(6, 3))
    values = [float(result[key]) for key in keys]  # type: ignore[arg-type]
    ax.bar(keys, values, color="#4f81bd")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result['dataset']} / {result['retriever']}")
    for x, value in enumerate(values):
        ax.text(x, value, f"{value:.3f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the ``dspyo3 rag`` command group."""
    cli.add_command(rag_group)


@hookimpl
def dspyo3_register_vector_stores(register: Callable[[VectorStoreSpec], None]) -> None:
    """Qdrant (embedded local mode by default, or a server by URL) and Chroma (local directory or a server)."""
    from dspyo3_rag.stores.chroma import ChromaStore
    from dspyo3_rag.stores.qdrant import QdrantStore

    register(VectorStoreSpec("qdrant", QdrantStore, "Qdrant: embedded (path= or in memory) or a server (url=)"))
    register(VectorStoreSpec("chroma", ChromaStore, "Chroma: persistent (path=), in memory, or a server (host=)"))


@hookimpl
def dspyo3_register_embedders(register: Callable[[EmbedderSpec], None]) -> None:
    """The offline lexical embedder (no download; honest about being lexical)."""
    from dspyo3_rag.embed import LexicalEmbedder

    register(EmbedderSpec("lexical", LexicalEmbedder, "offline feature-hashed words (lexical, not semantic)"))
