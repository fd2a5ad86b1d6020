"""BM25 on a BEIR data set: dspyo3's native index against bm25s, same tokenization, same run.

    python benchmarks/bm25.py [--data DIR] [--json out.json] [--plot out.png]

Both sides: lowercase, bm25s's English stopword list, English Snowball stemming, tokens of 2+ characters,
Lucene BM25 with the same k1 and b. ``index_s`` includes tokenization. ``qps`` is queries per second including
query tokenization, best of ``--repeat`` runs, with ``--threads`` worker threads on both sides (bm25s's
``n_threads``, dspyo3's rayon pool via ``RAYON_NUM_THREADS``, set before the native module loads). Python's
cyclic garbage collector is paused inside every timed section, for both sides, as ``timeit`` does. The last
stdout line is the JSON result; ``ratio`` is dspyo3 over bm25s (> 1 means dspyo3 is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, best_time, emit, evaluate_run, load_beir, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "scifact", help="BEIR-layout folder")
    parser.add_argument("--k1", type=float, default=1.2)
    parser.add_argument("--b", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path", help="also write the result here")
    parser.add_argument("--plot", dest="plot_path", help="also write a bar chart (PNG) here")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import bm25s
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    import dspyo3_native

    data = load_beir(args.data)
    log(f"{data.name}: {len(data.doc_ids)} documents, {len(data.query_ids)} judged queries, {args.threads} threads")
    stopwords = list(STOPWORDS_EN)
    k = min(100, len(data.doc_ids))  # bm25s refuses k larger than the corpus

    # -- dspyo3 ----------------------------------------------------------------------------------------------
    def build_ours() -> dspyo3_native.BM25:
        index = dspyo3_native.BM25(variant="lucene", k1=args.k1, b=args.b, stopwords=stopwords, stemmer="english",
                                   ascii_fold=False, min_token_len=2)
        index.add(data.doc_ids, data.doc_texts)
        return index

    ours_index_s, ours = best_time(build_ours, args.repeat, collect_garbage=False)
    ours_query_s, ours_hits = best_time(lambda: ours.search_batch(data.query_texts, k=k), args.repeat,
                                        collect_garbage=False)
    ours_loop_s, _ = best_time(lambda: [ours.search(q, k=k) for q in data.query_texts], args.repeat,
                                collect_garbage=False)
    ours_run = {qid: [doc for doc, _ in hits] for qid, hits in zip(data.query_ids, ours_hits, strict=True)}
    log(f"dspyo3: index {ours_index_s:.3f}s, {len(data.query_ids) / ours_query_s:,.0f} q/s")

    # -- bm25s -----------------------------------------------------------------------------------------------
    stemmer = Stemmer.Stemmer("english")

    def build_theirs() -> bm25s.BM25:
        tokens = bm25s.tokenize(data.doc_texts, stopwords=stopwords, stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25(method="lucene", k1=args.k1, b=args.b)
        retriever.index(tokens, show_progress=False)
        return retriever

    def query_theirs(retriever: bm25s.BM25):  # type: ignore[no-untyped-def]
        tokens = bm25s.tokenize(data.query_texts, stopwords=stopwords, stemmer=stemmer, show_progress=False)
        return retriever.retrieve(tokens, k=k, show_progress=False, n_threads=args.threads)

    theirs_index_s, theirs = best_time(build_theirs, args.repeat, collect_garbage=False)
    theirs_query_s, (doc_idx, _scores) = best_time(lambda: query_theirs(theirs), args.repeat,
                                                       collect_garbage=False)
    theirs_run = {qid: [data.doc_ids[i] for i in row] for qid, row in zip(data.query_ids, doc_idx, strict=True)}
    log(f"bm25s: index {theirs_index_s:.3f}s, {len(data.query_ids) / theirs_query_s:,.0f} q/s")

    n = len(data.query_ids)
    result = {
        "dataset": data.name,
        "dspyo3": {**evaluate_run(ours_run, data.qrels), "index_s": round(ours_index_s, 4),
                   "qps": round(n / ours_query_s, 1), "qps_one_call_per_query": round(n / ours_loop_s, 1)},
        "bm25s": {**evaluate_run(theirs_run, data.qrels), "index_s": round(theirs_index_s, 4),
                  "qps": round(n / theirs_query_s, 1), "version": bm25s.__version__},
        "ratio": {"qps": round(theirs_query_s / ours_query_s, 2), "index": round(theirs_index_s / ours_index_s, 2)},
        "settings": {"documents": len(data.doc_ids), "queries": n, "k": k, "k1": args.k1, "b": args.b,
                     "threads": args.threads, "repeat": args.repeat, "gc": "paused in timed sections (as timeit)",
                     "tokenizer": "lowercase, bm25s STOPWORDS_EN, english snowball, min 2 chars"},
    }
    emit(result, args.json_path, args.plot_path, title=f"BM25 queries/s on {data.name} ({args.threads} threads)",
         bars=[("bm25s", result["bm25s"]["qps"]), ("dspyo3", result["dspyo3"]["qps"])])


if __name__ == "__main__":
    main()
