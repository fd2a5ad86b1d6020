"""dspyo3-types' parser on hostile LM answers (48 KB, 300 KB, 1 MB), every parse mode, against same-run anchors.

    python benchmarks/parse_hostile.py [--repeat 3] [--json out.json] [--plot out.png]

Hostile answers are the ones that make a backtracking parser quadratic or a per-item parser slow: many unclosed XML
tags, opening tags that never end, megabytes of character references (repeated, distinct, among text, one of a
million digits), many or broken ``[[ ## field ## ]]`` headers, megabytes of blank lines, code fences that never close,
deep or unterminated JSON, long streams for ``parse_partial``. Each must parse or raise ``OutputParseError``
(checked). For each mode and size the slowest input is reported (best of ``--repeat`` runs), with anchors from the
same run: ``json.loads`` of a well-formed JSON document of the same size, and DSPy's own ``ChatAdapter.parse`` /
``XMLAdapter.parse`` on the same chat / XML input. The target is every 1 MB input in < 50 ms. The last stdout line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from common import best_time, emit, log, output_args
from parse import Answer  # the same typed signature as the parse benchmark

from dspyo3_core.testing import chat_reply
from dspyo3_types.parse import OutputParseError, parse_output, parse_partial

SIZES = {"48KB": 48_000, "300KB": 300_000, "1MB": 1_000_000}
TARGET_MS = 50.0


VALUES = {"answer": "Paris", "count": 3, "score": 0.5, "tags": ["a", "b"], "mood": "happy",
          "place": {"city": "Paris", "population": 2100000}}
CHAT = chat_reply(**VALUES)
XML = "".join(f"<{k}>{v if isinstance(v, str | int | float) else json.dumps(v)}</{k}>" for k, v in VALUES.items())
JSON = json.dumps(VALUES)


def repeat(unit: str, size: int) -> str:
    return unit * (size // len(unit) + 1)


def numbered(template: str, size: int, start: int = 0) -> str:
    """``template`` filled with start, start + 1, ... until the text has ``size`` characters or more."""
    parts, total, n = [], 0, start
    while total < size:
        parts.append(template.format(n))
        total += len(parts[-1])
        n += 1
    return "".join(parts)


def hostile(mode: str, size: int) -> dict[str, str]:
    """Named hostile answers of about ``size`` characters for one mode."""
    r = lambda unit: repeat(unit, size)  # noqa: E731
    distinct = lambda template, start=0: numbered(template, size, start)  # noqa: E731
    if mode == "xml":
        rest = XML.replace("<answer>Paris</answer>", "")
        return {"tags never closed": rest + r("<answer>"), "opening tags never ended": rest + r("<answer "),
                "unclosed tags": r("<answer>") + XML, "endless opening tag": "<answer " + r("x") + XML,
                "opening tags without >": r("<answer ") + XML, "closing tags only": XML[:-8] + r("</answer>"),
                "named entities": XML.replace("Paris", r("&amp;"), 1),
                "numeric references": XML.replace("Paris", r("&#x41;"), 1),
                "named and numeric references": XML.replace("Paris", r("&eacute;&#233;"), 1),
                "references among varied text": XML.replace("Paris", distinct("&#233;{} "), 1),
                "distinct numeric references": XML.replace("Paris", distinct("&#{};", start=65), 1),
                "distinct named references": XML.replace("Paris", distinct("&amp{};"), 1),
                "a reference of a million digits": XML.replace("Paris", "&#" + r("9") + ";", 1),
                "bare ampersands": XML.replace("Paris", r("& "), 1)}
    if mode == "chat":
        return {"trailing blank lines": CHAT + r("\n"), "blank lines, no header": r("\n") + "x",
                "trailing whitespace lines": CHAT + r("\n \t"), "blank lines": r("\n") + CHAT,
                "whitespace lines": r("\n \t") + "\n" + CHAT,
                "many headers": r("[[ ## answer ## ]]\n") + CHAT, "broken headers": r("[[ ## answer ## \n") + CHAT,
                "one huge line": r("x [[ ## count ## ]] ") + "\n" + CHAT, "huge value": CHAT.replace("Paris", r("a ")),
                "unknown headers": r("[[ ## other ## ]]\n") + CHAT, "CRLF blank lines": r("\r\n") + CHAT,
                "distinct unknown headers": distinct("[[ ## x{} ## ]]\n") + CHAT}
    if mode == "json":
        return {"open braces": r("{"), "deep arrays": '{"tags": ' + r("["), "unclosed fence": "```json\n" + r("```x"),
                "backticks": "```" + r("`"), "fence then prose": "```json\n" + JSON + r("\n``` x"),
                "unterminated string": '{"answer": "' + r("a"), "long list": JSON.replace('["a", "b"]',
                                                                                         "[" + r('"a", ') + '"b"]')}
    return {"open braces": r("{"), "long list": '{"answer": "x", "tags": [' + r('"a", '),
            "many keys": "{" + r('"count": 1, '), "long string": '{"answer": "' + r("a"),
            "escaped quotes": '{"answer": "' + r('\\"')}


def run(mode: str, text: str) -> str:
    """Parse, returning "ok" or "error" (an OutputParseError); anything else raised is a failure of the bench."""
    try:
        if mode == "partial":
            parse_partial(text, Answer)
        else:
            parse_output(text, Answer, "auto" if mode == "xml" else mode)
        return "ok"
    except OutputParseError:
        return "error"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    output_args(parser)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    theirs: dict[str, Callable[[str], Any]] = {"chat": lambda t: dspy.ChatAdapter().parse(Answer, t),
                                               "xml": lambda t: dspy.XMLAdapter().parse(Answer, t)}
    result: dict[str, Any] = {"target_ms": TARGET_MS, "modes": {}}
    bars = []
    worst_1mb = 0.0
    for mode in ("xml", "chat", "json", "partial"):
        result["modes"][mode] = {}
        for label, size in SIZES.items():
            document = json.dumps({"items": [VALUES] * (size // len(JSON) + 1)})
            anchor, _ = best_time(lambda document=document: json.loads(document), args.repeat)
            rows = {}
            for name, text in hostile(mode, size).items():
                seconds, outcome = best_time(lambda text=text, mode=mode: run(mode, text), args.repeat)
                row = {"ms": round(seconds * 1000, 2), "outcome": outcome}
                if mode in theirs:
                    def dspy_parse(text: str = text, parse: Callable[[str], Any] = theirs[mode]) -> None:
                        try:
                            parse(text)
                        except Exception:  # DSPy's error types vary; only its time matters here
                            pass
                    dspy_seconds, _ = best_time(dspy_parse, args.repeat)
                    row["dspy_ms"] = round(dspy_seconds * 1000, 2)
                rows[name] = row
            worst = max(rows, key=lambda n: rows[n]["ms"])
            entry = {"slowest": worst, "ms": rows[worst]["ms"], "json_loads_same_size_ms": round(anchor * 1000, 2),
                     "inputs": rows}
            result["modes"][mode][label] = entry
            log(f"{mode} {label}: slowest {worst!r} {entry['ms']} ms (json.loads of {label}: "
                f"{entry['json_loads_same_size_ms']} ms)")
            if label == "1MB":
                worst_1mb = max(worst_1mb, entry["ms"])
                bars.append((f"dspyo3 {mode} 1MB", entry["ms"]))
        bars.append((f"json.loads 1MB ({mode} run)", result["modes"][mode]["1MB"]["json_loads_same_size_ms"]))
    result["slowest_1mb_ms"] = worst_1mb
    result["target_met"] = worst_1mb < TARGET_MS
    emit(result, args.json_path, args.plot_path, bars=bars, title="slowest hostile 1 MB answer, ms (lower is better)")


if __name__ == "__main__":
    main()
