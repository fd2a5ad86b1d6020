"""The ``rag`` plugin of dspyo3: vector stores and embedders for the registries, and ``dspyo3 rag`` commands."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from dspyo3_core import hookimpl
from dspyo3_core.registry import EmbedderSpec, RerankerSpec, VectorStoreSpec


@click.group(name="rag", help="Retrieval for DSPy: stores, embedders, BM25, hybrid retrieval, evaluation.")
def rag_group() -> None:
    """``dspyo3 rag``."""


def _root(directory: Path | None) -> Path:
    import os

    if directory is not None:
        return directory
    if os.environ.get("DSPYO3_RAG_DIR"):
        return Path(os.environ["DSPYO3_RAG_DIR"])
    import platformdirs

    return Path(platformdirs.user_data_dir("dspyo3")) / "rag"


_DIR_OPTION = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                           help="where collections live (default: $DSPYO3_RAG_DIR or the user data dir)")


_PROGRESS_OPTION = click.option("--progress/--no-progress", default=True, show_default=True,
                                help="progress bars on stderr (only drawn when stderr is a terminal)")
_SHOW_SKIPPED = 20  # skipped files listed one per line; the rest counted


def _store_option(help_text: str) -> Callable[[Any], Any]:
    return click.option("--store", "store", metavar="NAME", help=help_text)


def _open_collection(directory: Path | None, collection: str, store: str | None) -> Any:
    """``RagCollection`` for the command line: store problems as one-line errors."""
    from dspyo3_rag.collection import RagCollection
    from dspyo3_rag.stores.base import StoreError

    try:
        return RagCollection(_root(directory), collection, store=store)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _echo_warnings() -> Iterator[None]:
    """Warnings raised inside (e.g. a keyword index rebuilt) echoed as ``warning: ...`` lines on stderr."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for item in caught:
                click.echo(f"warning: {item.message}", err=True)


@rag_group.command("index")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--collection", required=True, help="collection name (created if missing)")
@click.option("--chunk-words", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), default=40, show_default=True)
@click.option("--rebuild", is_flag=True,
              help="re-create the collection's vector store from its chunks.jsonl first (after it was deleted or "
                   "damaged)")
@_store_option("vector store of a new collection: qdrant, chroma, pinecone or any registered store name "
               "(default: the collection's own store; for a new one, dspyo3_rag.collection.DEFAULT_STORE)")
@_PROGRESS_OPTION
@_DIR_OPTION
def index_command(paths: tuple[Path, ...], collection: str, chunk_words: int, overlap: int, rebuild: bool,
                  store: str | None, progress: bool, directory: Path | None) -> None:
    """Chunk, embed and index files (.txt, .md, .markdown, .mdx, .rst, .jsonl, ... in any letter case; folders are
    walked, hidden files and folders skipped) into COLLECTION. Files skipped are listed on stderr with the reason.

    Every run first repairs what an interrupted earlier run left (vectors of chunks that were never committed);
    with no PATHS it only repairs (or, with --rebuild, rebuilds)."""
    from dspyo3_rag.collection import RagCollection, id_clashes, scan_sources, source_labels
    from dspyo3_rag.stores.base import StoreError

    try:
        target = RagCollection(_root(directory), collection, store=store)
        if not paths and not target.exists:
            raise StoreError(f"collection {collection!r} does not exist under {target.dir.parent}; give the files "
                             f"to index: dspyo3 rag index PATH --collection {collection}")
        # everything is read before any write; files already in the collection keep their ids
        existing = target.chunks() if paths else {}
        sources = (scan_sources(paths, words=chunk_words, overlap=overlap, labels=source_labels(existing.values()))
                   if paths else None)
        chunks = sources.chunks if sources else []
        clashes = id_clashes(existing, chunks)
        if clashes:
            chunk_id, old, new = clashes[0]
            raise StoreError(f"chunk id {chunk_id!r} of {new} already belongs to {old} in {collection!r}; index "
                             f"{new}'s folder instead (its ids then start with the folder's name), or index it "
                             "into another collection")
        if sources and sources.skipped:
            for item in sources.skipped[:_SHOW_SKIPPED]:
                click.echo(f"skipped {item.path}: {item.reason}", err=True)
            if len(sources.skipped) > _SHOW_SKIPPED:
                click.echo(f"skipped {len(sources.skipped) - _SHOW_SKIPPED} more", err=True)
        repaired = None
        try:
            if rebuild:
                rebuilt = target.rebuild(progress=progress)
                click.echo(f"rebuilt the vector store of {collection!r} from {rebuilt} committed chunks")
            else:
                repaired = target.repair(progress=progress)
                if repaired:
                    click.echo(f"repaired {collection!r}: removed {repaired.removed} vectors of uncommitted "
                               f"chunks, re-embedded {repaired.restored} committed chunks")
            added = target.add(chunks, progress=progress) if chunks else 0
            total = len(target.chunks())
        finally:
            target.close()
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if paths:
        skipped = f"; skipped {len(sources.skipped)} files (listed above)" if sources and sources.skipped else ""
        click.echo(f"indexed {added} chunks into {collection!r} ({total} in all) at {target.dir}{skipped}")
    elif repaired is not None and not repaired:
        click.echo(f"{collection!r} is consistent ({total} chunks) at {target.dir}")


@rag_group.command("search")
@click.argument("query")
@click.option("--collection", required=True)
@click.option("--k", type=click.IntRange(min=1, max=100), default=5, show_default=True)
@click.option("--retriever", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_store_option("the collection's vector store (checked against the one it was made with)")
@_DIR_OPTION
def search_command(query: str, collection: str, k: int, retriever: str, as_json: bool, store: str | None,
                   directory: Path | None) -> None:
    """The best passages of COLLECTION for QUERY (BM25 is loaded from the collection's keyword index, not
    rebuilt)."""
    from rich.console import Console
    from rich.markup import escape

    from dspyo3_rag.stores.base import StoreError

    target = _open_collection(directory, collection, store)
    try:
        with _echo_warnings():
            passages = target.search(query, k, retriever)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        target.close()
    if as_json:
        click.echo(json.dumps([{"id": p.id, "score": p.score, "text": p.long_text, "metadata": p.metadata}
                               for p in passages]))
        return
    console = Console()
    for rank, p in enumerate(passages, start=1):
        console.print(f"[bold]{rank}. {escape(p.id)}[/bold]  score {p.score:.4f}")
        console.print(f"   {escape(p.long_text[:300])}")


@rag_group.command("ask")
@click.argument("question")
@click.option("--collection", required=True)
@click.option("--k", type=click.IntRange(min=1, max=20), default=4, show_default=True)
@click.option("--profile", help="LM profile (default: the configured default, or DSPYO3_LM)")
@_store_option("the collection's vector store (checked against the one it was made with)")
@_DIR_OPTION
def ask_command(question: str, collection: str, k: int, profile: str | None, store: str | None,
                directory: Path | None) -> None:
    """Answer QUESTION from COLLECTION with the configured LM, citing the passages used."""
    import dspy

    from dspyo3_core.config import ConfigError, build_lm, load_settings
    from dspyo3_rag.stores.base import StoreError

    try:
        lm = build_lm(load_settings().profile(profile))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    target = _open_collection(directory, collection, store)
    try:
        with _echo_warnings():
            passages = target.search(question, k)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        target.close()
    context = [f"[{p.id}] {p.long_text}" for p in passages]
    program = dspy.ChainOfThought("context: list[str], question: str -> answer: str, cited_ids: list[str]")
    with dspy.context(lm=lm):
        result = program(context=context, question=question)
    click.echo(result.answer)
    known = {p.id for p in passages}
    cited = [c for c in (result.cited_ids or []) if c in known] or [p.id for p in passages]
    click.echo("sources: " + ", ".join(cited))


@rag_group.command("demo")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write a JSON summary here")
def demo_command(json_path: str | None) -> None:
    """The RAG job end to end: index a shipped corpus, evaluate retrieval, answer with citations."""
    from dspyo3_rag.demo import run_demo

    run_demo(json_path=json_path)


@rag_group.command("eval")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
@click.option("--retriever", type=click.Choice(["bm25", "dense", "hybrid"]), default="bm25", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--k", "k", type=click.IntRange(min=10), default=100, show_default=True, help="passages per query")
@click.option("--json", "as_json", is_flag=True, help="last line: one flat JSON object")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="bar chart of the metrics (PNG; needs the extra dspyo3-rag[plot])")
@_PROGRESS_OPTION
def eval_command(data_dir: Path, retriever: str, split: str, k: int, as_json: bool, plot: Path | None,
                 progress: bool) -> None:
    """Retrieval quality on a BEIR-layout data set: ndcg@10, recall@10, recall@100, mrr@10, queries/s."""
    from dspyo3_rag.beir import BeirFormatError
    from dspyo3_rag.evaluation import evaluate_retriever
    from dspyo3_rag.stores.base import StoreError

    pyplot = _pyplot() if plot is not None else None  # before the run: a missing extra must not cost the run
    try:
        result = evaluate_retriever(data_dir, retriever, split=split, k=k, progress=progress)
    except (BeirFormatError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    # the results first: a plot that cannot be written loses nothing
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['dataset']} / {retriever}: {result['queries']} queries")
        for key in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "qps"):
            click.echo(f"  {key:<11} {result[key]}")
    if plot is not None:
        try:
            _plot(pyplot, result, plot)
        except OSError as exc:
            raise click.ClickException(f"cannot write the plot {plot}: {exc.strerror or exc}; the results above "
                                       "are complete") from None


def _pyplot() -> Any:
    """``matplotlib.pyplot`` (Agg backend), or a one-line error naming the extra that provides it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from dspyo3_core.failures import install_advice

        raise click.ClickException(f"--plot needs matplotlib, which is not installed ({exc}); "
                                   f"{install_advice('dspyo3-rag', 'plot')} (or run without --plot)") from None
    return plt


def _plot(plt: Any, result: dict[str, object], path: Path) -> None:
    keys = ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
    fig, ax = plt.subplots(figsize=(6, 3))
    values = [float(result[key]) for key in keys]  # type: ignore[arg-type]
    ax.bar(keys, values, color="#4f81bd")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result['dataset']} / {result['retriever']}")
    for x, value in enumerate(values):
        ax.text(x, value, f"{value:.3f}", ha="center", va="bottom")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the ``dspyo3 rag`` command group."""
    cli.add_command(rag_group)


@hookimpl
def dspyo3_register_vector_stores(register: Callable[[VectorStoreSpec], None]) -> None:
    """Qdrant (embedded local mode, or a server by URL), Qdrant Edge (in-process engine), Chroma (local directory
    or a server) and Pinecone (the pinecone SDK; one index per collection)."""
    from dspyo3_rag.stores.chroma import ChromaStore
    from dspyo3_rag.stores.pinecone import PineconeStore
    from dspyo3_rag.stores.qdrant import QdrantStore
    from dspyo3_rag.stores.qdrant_edge import QdrantEdgeStore

    register(VectorStoreSpec("qdrant", QdrantStore, "Qdrant: embedded (path= or in memory) or a server (url=)"))
    register(VectorStoreSpec("qdrant-edge", QdrantEdgeStore, "Qdrant Edge: Qdrant's engine in-process, HNSW and "
                                                             "on-disk segments (path=, or a temporary folder)"))
    register(VectorStoreSpec("chroma", ChromaStore, "Chroma: persistent (path=), in memory, or a server (host=)"))
    register(VectorStoreSpec("pinecone", PineconeStore, "Pinecone: one serverless index per collection (api_key= or "
                                                        "PINECONE_API_KEY; prefix= to share a project)"))


@hookimpl
def dspyo3_register_embedders(register: Callable[[EmbedderSpec], None]) -> None:
    """The offline lexical embedder (no download; honest about being lexical), LiteLLM embeddings, and fastembed /
    sentence-transformers models when their extras are installed."""
    from dspyo3_rag.embed import FastEmbedEmbedder, LexicalEmbedder, LiteLLMEmbedder, SentenceTransformerEmbedder

    register(EmbedderSpec("lexical", LexicalEmbedder, "offline feature-hashed words (lexical, not semantic)"))
    register(EmbedderSpec("litellm", LiteLLMEmbedder, "any LiteLLM embedding model through dspy.Embedder"))
    register(EmbedderSpec("fastembed", FastEmbedEmbedder, "fastembed ONNX models (extra dspyo3-rag[fastembed])"))
    register(EmbedderSpec("sentence-transformers", SentenceTransformerEmbedder,
                          "sentence-transformers models (extra dspyo3-rag[sentence-transformers])"))


@hookimpl
def dspyo3_register_rerankers(register: Callable[[RerankerSpec], None]) -> None:
    """An LM reranker through DSPy, and a cross-encoder (needs sentence-transformers)."""
    from dspyo3_rag.rerank import CrossEncoderReranker, LMReranker

    register(RerankerSpec("lm", LMReranker, "the configured LM orders the passages (dspy.Predict)"))
    register(RerankerSpec("cross-encoder", CrossEncoderReranker, "sentence-transformers cross-encoder"))
