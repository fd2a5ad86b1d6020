"""RAG collections at real sizes: add, memory, disk, reopen and query latency per vector store, SciFact quality,
and BM25 alone against bm25s.

    python benchmarks/rag_scale.py [--sizes 10000,100000,1000000] [--stores qdrant,qdrant-edge,chroma,...]
                                   [--bm25-sizes 5000,50000,500000] [--data DIR] [--json F] [--plot F]

Corpus. Built from BEIR SciFact (``--data``): its 5,183 documents (``title + " " + text``, their own ids) come
first, then synthetic documents recombined from SciFact's sentences until the size is reached. SciFact's texts are
split into sentences after ``.``, ``!`` or ``?`` followed by white space (sentences under 4 words are dropped); each
synthetic document ``syn-<n>`` joins 3 to 8 sentences drawn uniformly with replacement from that pool, by a
``random.Random(--seed)`` (default 24) consumed in document order, so a size always gives the same documents and
a smaller size is a prefix of a larger one. A document is one chunk (about 80-220 words: under the CLI's 200-word
window, so nothing is split further) with metadata ``{"source": "scifact"|"synthetic"}``. Documents are
generated lazily and handed to one ``add`` call as a generator, which the collection consumes a batch at a time,
so generating 1M chunks never holds more than one batch.

Per size and store, each step in a fresh child process (its peak RSS is the child's ``ru_maxrss`` from
``wait4``; a child above ``--max-rss-mb`` or ``--timeout`` is stopped and reported under ``skipped``):
- ``build``: ``RagCollection(..., store=NAME)`` (the collection API; a store the API or the plugin registry does
  not offer is reported under ``skipped`` with the reason), one streaming ``add``, ``close``: ``add_s``,
  ``peak_rss_mb`` (ru_maxrss: memory-mapped store files the child touched count in it) and ``peak_anon_mb`` (its
  own heap, sampled); then ``disk_mb`` (allocated blocks of the collection folder);
- ``query``: reopen (``RagCollection`` + its hybrid retriever ready, what a command does before answering:
  ``reopen_s``), then ``--queries`` (200) SciFact queries one call each, k=10, for BM25, dense and hybrid:
  ``*_p50_ms`` / ``*_p99_ms`` (a kind stops after ``--query-budget-s`` and says how many queries it ran);
  ``query_rss_mb``;
- ``search_cli_s``: ``dspyo3 rag search QUERY --collection ... --json`` end to end (median wall time of 3).

``scifact_ndcg10``: the collection holding SciFact's own corpus (the 5k size), its BM25 and hybrid retrievers on
SciFact's 300 judged test queries (top 100, nDCG@10 by BEIR's conventions), with the offline lexical embedder.

``bm25``: the native index alone against bm25s at ``--bm25-sizes`` documents of the same corpus, tokenized alike
(lowercase, bm25s's English stopwords, English Snowball stemming, tokens of 2+ characters; Lucene k1=1.2 b=0.75),
k=10 over SciFact's 1,109 queries (batch call, best of 3, garbage collector paused), one and two threads (bm25s's
``n_threads``, dspyo3's ``RAYON_NUM_THREADS``); each contender in a child of its own, whose ``ru_maxrss`` is its
RSS (both hold the corpus texts as Python strings). bm25s runs twice: with its default backend (NumPy, what
``bm25s.BM25()`` uses: ``bm25s_*``) and with its Numba backend (``backend="numba"``, JIT-compiled, the first call
excluded by best-of-3: ``bm25s_numba_*``); the ratios are against each.

The last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, best_time, emit, evaluate_run, load_beir, log

SCRIPT = str(Path(__file__).resolve())
COLLECTION = "scale"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


# -- corpus ----------------------------------------------------------------------------------------------------

def corpus(data_dir: Path, n: int, seed: int) -> Iterator[tuple[str, str, str]]:
    """The first ``n`` documents ``(id, text, source)``: SciFact's own, then recombined ones (see the module
    docstring). Lazy: only the sentence pool is held."""
    data = load_beir(data_dir)
    count = 0
    for doc_id, text in zip(data.doc_ids, data.doc_texts, strict=True):
        if count >= n:
            return
        yield doc_id, text, "scifact"
        count += 1
    pool = [s for text in data.doc_texts for s in _SENTENCE.split(text) if len(s.split()) >= 4]
    del data
    rng = random.Random(seed)
    synthetic = 0
    while count < n:
        sentences = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(3, 8))]
        yield f"syn-{synthetic:07d}", " ".join(sentences), "synthetic"
        synthetic += 1
        count += 1


def query_sample(data_dir: Path, n: int, seed: int) -> list[str]:
    """``n`` SciFact queries (all 1,109 of them, not only the judged ones), drawn by ``seed``."""
    import json as _json

    lines = (data_dir / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [_json.loads(line)["text"] for line in lines if line.strip()]
    random.Random(seed).shuffle(texts)
    return (texts * (n // len(texts) + 1))[:n]


# -- child processes -------------------------------------------------------------------------------------------

class Skip(Exception):
    """The store cannot be measured here; the message says why."""


def open_collection(root: Path, store: str) -> Any:
    """``RagCollection(root, COLLECTION, store=store)`` through the public collection API; :class:`Skip` when the
    API or the plugin registry does not offer ``store``."""
    from dspyo3_core.plugins import get_plugin_manager
    from dspyo3_rag.collection import RagCollection

    names = get_plugin_manager().registry("dspyo3_register_vector_stores").names()
    if store not in names:
        raise Skip(f"no vector store {store!r} is registered (registered: {', '.join(sorted(names))})")
    if "store" in inspect.signature(RagCollection).parameters:
        try:
            return RagCollection(root, COLLECTION, store=store)
        except ImportError as exc:
            raise Skip(f"{store}: {exc}") from None
    if store == "qdrant":  # collections without a store choice hold their vectors in embedded Qdrant
        return RagCollection(root, COLLECTION)
    raise Skip("RagCollection at this commit has no store choice (its vectors are always in embedded Qdrant)")


def _done(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def worker_build(args: argparse.Namespace) -> None:
    from dspyo3_rag.collection import Chunk

    root = Path(args.dir)
    try:
        coll = open_collection(root, args.store)
    except Skip as exc:
        _done({"skipped": str(exc), "unavailable": True})
        return
    started = time.perf_counter()

    def chunks() -> Iterator[Chunk]:  # one streaming add: the collection consumes these a batch at a time
        for n, (doc_id, text, source) in enumerate(corpus(args.data, args.size, args.seed), start=1):
            yield Chunk(doc_id, text, {"source": source})
            if n % 100_000 == 0:
                log(f"  {args.store}: {n:,} chunks in {time.perf_counter() - started:.0f}s")

    try:
        added = coll.add(chunks(), total=args.size)
    except ImportError as exc:  # an adapter whose engine is not installed raises at first use
        _done({"skipped": f"{args.store}: {exc}", "unavailable": True})
        return
    finally:
        coll.close()
    _done({"add_s": round(time.perf_counter() - started, 2), "chunks": added})


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return round(statistics.median(ordered) * 1000, 2), round(p99 * 1000, 2)


def worker_query(args: argparse.Namespace) -> None:
    root = Path(args.dir)
    started = time.perf_counter()
    coll = open_collection(root, args.store)
    hybrid = coll.retriever("hybrid")
    reopen_s = time.perf_counter() - started
    queries = query_sample(args.data, args.queries, args.seed)
    first = time.perf_counter()
    hybrid.search_batch([queries[0]], 10)
    first_query_ms = (time.perf_counter() - first) * 1000
    out: dict[str, Any] = {"reopen_s": round(reopen_s, 3), "first_query_ms": round(first_query_ms, 2)}
    for kind in ("bm25", "dense", "hybrid"):
        retriever = hybrid if kind == "hybrid" else coll.retriever(kind)
        times: list[float] = []
        budget = time.perf_counter() + args.query_budget_s
        for query in queries:
            t = time.perf_counter()
            hits = retriever.search_batch([query], 10)
            times.append(time.perf_counter() - t)
            if not hits[0]:
                raise RuntimeError(f"{kind}: no hit for {query!r}")
            if time.perf_counter() > budget:
                break
        out[f"{kind}_p50_ms"], out[f"{kind}_p99_ms"] = _percentiles(times)
        out[f"{kind}_queries"] = len(times)
        log(f"  {args.store}: {kind} p50 {out[f'{kind}_p50_ms']} ms, p99 {out[f'{kind}_p99_ms']} ms "
            f"over {len(times)} queries")
        if kind != "hybrid":
            del retriever
    coll.close()
    _done(out)


def worker_ndcg(args: argparse.Namespace) -> None:
    from dspyo3_rag.collection import Chunk

    data = load_beir(args.data)
    root = Path(args.dir)
    try:
        coll = open_collection(root, args.store)
    except Skip as exc:
        _done({"skipped": str(exc), "unavailable": True})
        return
    coll.add([Chunk(i, t, {"source": "scifact"}) for i, t in zip(data.doc_ids, data.doc_texts, strict=True)])
    coll.close()
    coll = open_collection(root, args.store)
    out = {}
    for kind in ("bm25", "hybrid"):
        hits = coll.retriever(kind).search_batch(data.query_texts, 100)
        run = {q: [p.id for p in ps] for q, ps in zip(data.query_ids, hits, strict=True)}
        out[kind] = round(evaluate_run(run, data.qrels)["ndcg@10"], 4)
    coll.close()
    _done(out)


def worker_bm25(args: argparse.Namespace) -> None:
    """One contender of the BM25 comparison (``args.impl``) at ``args.size`` documents."""
    import gc

    from bm25s.stopwords import STOPWORDS_EN

    docs = [text for _, text, _ in corpus(args.data, args.size, args.seed)]
    ids = [str(i) for i in range(len(docs))]
    queries = query_sample(args.data, 1109, args.seed)
    stopwords = list(STOPWORDS_EN)
    gc.collect()
    out: dict[str, Any] = {"corpus_rss_mb": round(_rss_mb(os.getpid()), 1)}
    if args.impl == "dspyo3":
        import dspyo3_native

        def build() -> Any:
            index = dspyo3_native.BM25(variant="lucene", k1=1.2, b=0.75, stopwords=stopwords, stemmer="english",
                                       ascii_fold=False, min_token_len=2)
            index.add(ids, docs)
            return index

        t = time.perf_counter()
        index = build()
        out["index_s"] = round(time.perf_counter() - t, 2)
        gc.collect()
        out["indexed_rss_mb"] = round(_rss_mb(os.getpid()), 1)
        query_s, _ = best_time(lambda: index.search_batch(queries, k=10), 3, collect_garbage=False)
        out[f"qps_{args.threads}t"] = round(len(queries) / query_s, 1)
    else:
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        t = time.perf_counter()
        tokens = bm25s.tokenize(docs, stopwords=stopwords, stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75,
                               backend="numba" if args.impl == "bm25s_numba" else "numpy")
        retriever.index(tokens, show_progress=False)
        del tokens
        out["index_s"] = round(time.perf_counter() - t, 2)
        gc.collect()
        out["indexed_rss_mb"] = round(_rss_mb(os.getpid()), 1)
        for threads in (1, 2):
            def run(threads: int = threads) -> Any:
                q = bm25s.tokenize(queries, stopwords=stopwords, stemmer=stemmer, show_progress=False)
                return retriever.retrieve(q, k=10, show_progress=False, n_threads=threads)

            query_s, _ = best_time(run, 3, collect_garbage=False)
            out[f"qps_{threads}t"] = round(len(queries) / query_s, 1)
    _done(out)


# -- parent ----------------------------------------------------------------------------------------------------

def _rss_mb(pid: int, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child(args: argparse.Namespace, worker: str, extra: list[str],
          env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run this script as ``--worker WORKER`` in a fresh process (its own process group); its JSON plus
    ``rss_mb`` (ru_maxrss, which counts the pages of memory-mapped files the child touched) and ``anon_mb`` (the
    peak of its anonymous memory, ``RssAnon``, sampled every 0.2 s), or ``{"skipped": reason}`` on a time-out, a
    memory cap or a failure."""
    cmd = [sys.executable, SCRIPT, "--worker", worker, "--data", str(args.data), "--seed", str(args.seed), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    killed: list[str] = []
    anon_peak = [0.0]

    def watch() -> None:
        deadline = time.monotonic() + args.timeout
        while proc.poll() is None:
            anon_peak[0] = max(anon_peak[0], _rss_mb(proc.pid, "RssAnon:"))
            if time.monotonic() > deadline:
                killed.append(f"stopped after the {args.timeout:g} s time limit (--timeout)")
            elif _rss_mb(proc.pid) > args.max_rss_mb:
                killed.append(f"stopped above {args.max_rss_mb:,} MB RSS (--max-rss-mb)")
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    if killed:
        return {"skipped": killed[0]}
    if proc.returncode != 0 or not output.strip():
        return {"skipped": f"{worker} failed (exit {proc.returncode}; see stderr above)"}
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["anon_mb"] = round(anon_peak[0], 1)
    return result


def disk_mb(folder: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return round(total / 2**20, 1)


def search_cli(args: argparse.Namespace, root: Path, store: str) -> float:
    """Median wall time of 3 ``dspyo3 rag search`` runs (hybrid, the default) in fresh processes."""
    exe = shutil.which("dspyo3", path=str(Path(sys.executable).parent)) or "dspyo3"
    help_text = subprocess.run([exe, "rag", "search", "--help"], capture_output=True, text=True).stdout
    store_args = ["--store", store] if "--store" in help_text else []
    times = []
    for query in query_sample(args.data, 3, args.seed + 1):
        t = time.perf_counter()
        subprocess.run([exe, "rag", "search", query, "--collection", COLLECTION, "--dir", str(root), "--json",
                        *store_args], check=True, capture_output=True, env={**os.environ, "DSPYO3_RAG_DIR": str(root)})
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 3)


def measure_store(args: argparse.Namespace, size: int, store: str, work: Path,
                  skipped: dict[str, str]) -> dict[str, Any] | None:
    root = work / f"{store}-{size}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        log(f"{store} @ {size:,}: build")
        built = child(args, "build", ["--size", str(size), "--store", store, "--dir", str(root)])
        if "skipped" in built:
            skipped[f"{size}/{store}"] = built["skipped"]
            log(f"{store} @ {size:,}: skipped: {built['skipped']}")
            return None
        row: dict[str, Any] = {"add_s": built["add_s"], "peak_rss_mb": built["rss_mb"],
                               "peak_anon_mb": built["anon_mb"], "disk_mb": disk_mb(root / COLLECTION)}
        log(f"{store} @ {size:,}: add {row['add_s']}s, peak {row['peak_rss_mb']:,} MB (anonymous "
            f"{row['peak_anon_mb']:,} MB), disk {row['disk_mb']} MB")
        queried = child(args, "query", ["--store", store, "--dir", str(root), "--queries", str(args.queries),
                                        "--query-budget-s", str(args.query_budget_s)])
        if "skipped" in queried:
            skipped[f"{size}/{store}/query"] = queried["skipped"]
        else:
            queried["query_rss_mb"] = queried.pop("rss_mb")
            queried["query_anon_mb"] = queried.pop("anon_mb")
            row.update(queried)
            log(f"{store} @ {size:,}: reopen {row['reopen_s']}s")
            try:
                row["search_cli_s"] = search_cli(args, root, store)
            except subprocess.CalledProcessError as exc:
                skipped[f"{size}/{store}/search_cli"] = f"dspyo3 rag search exited {exc.returncode}: " \
                                                        f"{(exc.stderr or b'').decode()[-300:].strip()}"
        return row
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stores", default="qdrant-edge,qdrant,chroma",
                        help="vector store names (the rag plugin's registry); the first measured one gives "
                             "scifact_ndcg10")
    parser.add_argument("--bm25-sizes", default="5000,50000,500000")
    parser.add_argument("--data", type=Path, default=DATA / "scifact", help="BEIR-layout SciFact folder")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--query-budget-s", type=float, default=300.0,
                        help="per retriever kind; a slower kind stops early and reports how many queries ran")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    parser.add_argument("--max-rss-mb", type=int, default=12000, help="a child above this RSS is stopped")
    parser.add_argument("--work-dir", type=Path, help="where collections are built (default: a temporary folder)")
    parser.add_argument("--skip-ndcg", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the collections built under --work-dir")
    parser.add_argument("--json", dest="json_path", help="also write the result here")
    parser.add_argument("--plot", dest="plot_path", help="write a bar chart (PNG) of hybrid p99 per size/store")
    parser.add_argument("--worker", choices=["build", "query", "ndcg", "bm25"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["dspyo3", "bm25s", "bm25s_numba"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        {"build": worker_build, "query": worker_query, "ndcg": worker_ndcg, "bm25": worker_bm25}[args.worker](args)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    bm25_sizes = [int(s) for s in args.bm25_sizes.split(",") if s.strip()]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rag-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    unavailable: dict[str, str] = {}  # stores the API does not offer: not tried again at every size
    result: dict[str, Any] = {"sizes": {}, "bm25": {}, "scifact_ndcg10": {}, "scifact_ndcg10_by_store": {}}
    try:
        if not args.skip_ndcg:
            for store in stores:
                root = work / f"ndcg-{store}"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                log(f"{store}: SciFact nDCG@10")
                got = child(args, "ndcg", ["--store", store, "--dir", str(root)])
                shutil.rmtree(root, ignore_errors=True)
                if "skipped" in got:
                    skipped[f"ndcg/{store}"] = got["skipped"]
                    if got.get("unavailable"):
                        unavailable[store] = got["skipped"]
                    continue
                got.pop("rss_mb", None)
                got.pop("anon_mb", None)
                result["scifact_ndcg10_by_store"][store] = got
                if not result["scifact_ndcg10"]:
                    result["scifact_ndcg10"] = {**got, "store": store}
                log(f"{store}: nDCG@10 bm25 {got['bm25']}, hybrid {got['hybrid']}")
        for size in sizes:
            for store in stores:
                if store in unavailable:
                    skipped[f"{size}/{store}"] = unavailable[store]
                    continue
                row = measure_store(args, size, store, work, skipped)
                if row is not None:
                    result["sizes"].setdefault(str(size), {})[store] = row
        for size in bm25_sizes:
            row = {}
            for impl, threads in (("dspyo3", 1), ("dspyo3", 2), ("bm25s", 0), ("bm25s_numba", 0)):
                log(f"bm25 @ {size:,}: {impl}" + (f" {threads} thread(s)" if threads else " 1 and 2 threads"))
                got = child(args, "bm25", ["--size", str(size), "--impl", impl, "--threads", str(threads or 1)],
                            env={"RAYON_NUM_THREADS": str(threads or 1)})
                if "skipped" in got:
                    skipped[f"bm25/{size}/{impl}"] = got["skipped"]
                    continue
                for key in ("qps_1t", "qps_2t"):
                    if key in got:
                        row[f"{impl}_{key}"] = got[key]
                if threads in (0, 1):
                    row[f"{impl}_rss_mb"] = got["rss_mb"]
                    row[f"{impl}_index_s"] = got["index_s"]
                    # RSS once the index is built less RSS with only the corpus loaded: the index's own memory
                    row[f"{impl}_index_mb"] = round(got["indexed_rss_mb"] - got["corpus_rss_mb"], 1)
            for anchor, suffix in (("bm25s", ""), ("bm25s_numba", "_numba")):
                if "dspyo3_qps_1t" in row and f"{anchor}_qps_1t" in row:
                    row[f"qps_ratio_1t{suffix}"] = round(row["dspyo3_qps_1t"] / row[f"{anchor}_qps_1t"], 2)
                    row[f"rss_ratio{suffix}"] = round(row["dspyo3_rss_mb"] / row[f"{anchor}_rss_mb"], 2)
            log(f"bm25 @ {size:,}: {row}")
            result["bm25"][str(size)] = row
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["skipped"] = skipped
    result["settings"] = {"seed": args.seed, "queries": args.queries, "k": 10,
                          "query_budget_s": args.query_budget_s, "stores": stores, "cpus": os.cpu_count(),
                          "parent_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    bars = [(f"{store} {size}", row.get("hybrid_p99_ms", 0.0)) for size, rows in result["sizes"].items()
            for store, row in rows.items()]
    emit(result, args.json_path, args.plot_path if bars else None, bars=bars, title="hybrid p99 (ms) per size/store")


if __name__ == "__main__":
    main()
