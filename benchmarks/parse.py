"""dspyo3-types' parser against DSPy's own ChatAdapter / JSONAdapter parse, on the same LM answers.

    python benchmarks/parse.py [--answers 2000] [--json out.json] [--plot out.png]

Answers for a signature with str, int, float, list[str], Literal and a nested Pydantic model output, in ChatAdapter
(``[[ ## field ## ]]``) and JSON form; both parsers must give equal results on every answer (checked). The answers
are well formed: this measures the common path, not DSPy's repair of broken JSON (which we refuse instead). The
last stdout line is one JSON object; ``speedup`` is DSPy's time over ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
import pydantic
from common import emit, log

from dspyo3_core.testing import chat_reply
from dspyo3_types.parse import parse_output


class Place(pydantic.BaseModel):
    city: str
    population: int


class Answer(dspy.Signature):
    """Answer with structure."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    count: int = dspy.OutputField()
    score: float = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    mood: Literal["happy", "sad"] = dspy.OutputField()
    place: Place = dspy.OutputField()


def answers(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "paris", "rome", "nile", "everest"]
    return [{
        "answer": " ".join(rng.choices(words, k=rng.randint(1, 12))),
        "count": rng.randint(-1000, 10**6),
        "score": round(rng.random(), 6),
        "tags": rng.sample(words, rng.randint(0, 4)),
        "mood": rng.choice(["happy", "sad"]),
        "place": {"city": rng.choice(words).title(), "population": rng.randint(0, 10**7)},
    } for _ in range(n)]


def best(fn: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    args = parser.parse_args()
    if args.answers < 1:
        parser.error("--answers must be >= 1")
    import json

    values = answers(args.answers)
    chat = [chat_reply(**v) for v in values]
    as_json = [json.dumps(v) for v in values]
    chat_adapter, json_adapter = dspy.ChatAdapter(), dspy.JSONAdapter()

    log(f"checking both parsers agree on all {args.answers} answers in each format")
    for text in chat:
        assert chat_adapter.parse(Answer, text) == parse_output(text, Answer, "chat")
    for text in as_json:
        assert json_adapter.parse(Answer, text) == parse_output(text, Answer, "json")

    result: dict[str, Any] = {"answers": args.answers}
    bars = []
    for fmt, texts, theirs in (("chat", chat, chat_adapter), ("json", as_json, json_adapter)):
        ours = best(lambda texts=texts, fmt=fmt: [parse_output(t, Answer, fmt) for t in texts])
        dspy_time = best(lambda texts=texts, theirs=theirs: [theirs.parse(Answer, t) for t in texts])
        us_ours, us_dspy = ours / len(texts) * 1e6, dspy_time / len(texts) * 1e6
        log(f"{fmt}: dspyo3 {us_ours:.1f} us/answer, DSPy {us_dspy:.1f} us/answer")
        result[fmt] = {"dspyo3_us": round(us_ours, 2), "dspy_us": round(us_dspy, 2),
                       "speedup": round(dspy_time / ours, 2)}
        bars += [(f"dspyo3 {fmt}", us_ours), (f"DSPy {fmt}", us_dspy)]
    emit(result, args.json_path, args.plot_path, bars=bars, title="parse one LM answer, µs (lower is better)")


if __name__ == "__main__":
    main()
