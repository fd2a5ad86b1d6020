"""Token-budgeted context packing and maximal-marginal-relevance (MMR) selection."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from dspyo3_rag.retrieve import Passage

__all__ = ["count_tokens", "mmr", "pack_context"]


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # LiteLLM (a DSPy dependency) ships tiktoken's cl100k_base / o200k_base files: use them offline
        try:
            import litellm

            bundled = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"
            if bundled.is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
        except ImportError:
            pass
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:
        raise ValueError(f"unknown tiktoken encoding {name!r} (cl100k_base and o200k_base work offline)") from exc


def count_tokens(text: str, encoding: str = "cl100k_base") -> int:
    """Tokens of ``text`` in a tiktoken encoding."""
    return len(_encoding(encoding).encode(text))


def pack_context(passages: Sequence[Passage], max_tokens: int, *, encoding: str = "cl100k_base",
                 truncate_last: bool = True) -> list[Passage]:
    """The best-ranked passages that fit in ``max_tokens`` (in rank order). A passage that does not fit is skipped
    (smaller ones after it may still fit); with ``truncate_last`` the remaining budget is filled with the start of
    the first passage that did not fit."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    enc = _encoding(encoding)
    packed: list[Passage] = []
    left = max_tokens
    truncated = False
    for passage in passages:
        tokens = enc.encode(passage.long_text)
        if len(tokens) <= left:
            packed.append(passage)
            left -= len(tokens)
        elif truncate_last and not truncated and left > 0:
            packed.append(replace(passage, long_text=enc.decode(tokens[:left]),
                                  metadata={**passage.metadata, "truncated": True}))
            left = 0
            truncated = True
        if left == 0:
            break
    return packed


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def mmr(query: Sequence[float], candidates: Sequence[tuple[Passage, Sequence[float]]], k: int,
        lambda_: float = 0.5) -> list[Passage]:
    """Maximal marginal relevance: pick ``k`` passages trading relevance to ``query`` (weight ``lambda_``) against
    similarity to those already picked, so near-duplicates do not crowd the context."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
    relevance = [_cosine(query, vector) for _, vector in candidates]
    chosen: list[int] = []
    while len(chosen) < min(k, len(candidates)):
        best, best_score = -1, -math.inf
        for i in range(len(candidates)):
            if i in chosen:
                continue
            redundancy = max((_cosine(candidates[i][1], candidates[j][1]) for j in chosen), default=0.0)
            score = lambda_ * relevance[i] - (1 - lambda_) * redundancy
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return [candidates[i][0] for i in chosen]
