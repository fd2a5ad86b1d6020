"""Embedders. The offline default needs no model download and says what it is: a lexical embedder.

:class:`LexicalEmbedder` hashes stemmed words (and, optionally, word bigrams) into a fixed number of dimensions
with signs (feature hashing), weights them ``1 + log(tf)`` and L2-normalises: cosine similarity is then a
TF-weighted word overlap. It finds documents that share words with the query, like BM25 does, and nothing a
neural embedder would find beyond that; it exists so the dense and hybrid paths run anywhere, offline.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections import Counter
from collections.abc import Sequence

import dspyo3_native as native

__all__ = ["LexicalEmbedder"]


class LexicalEmbedder:
    """Offline, deterministic, lexical: feature-hashed stemmed words, unit length.

    Args:
        dim: vector size (collisions fall as it grows).
        language: Snowball stemmer and stopword language (``dspyo3_native.Tokenizer``).
        bigrams: also hash adjacent word pairs.
    """

    name = "lexical-hash"

    def __init__(self, dim: int = 1024, language: str = "english", bigrams: bool = False) -> None:
        if dim < 8:
            raise ValueError(f"dim must be at least 8, got {dim}")
        self.dim = dim
        self.bigrams = bigrams
        self.tokenizer = native.Tokenizer(stopwords=language, stemmer=language)
        self.model = f"{self.name}-{dim}{'-bigrams' if bigrams else ''}-{language}"

    def _vector(self, tokens: Sequence[str]) -> list[float]:
        counts = Counter(tokens)
        if self.bigrams:
            counts.update(f"{a} {b}" for a, b in itertools.pairwise(tokens))
        vector = [0.0] * self.dim
        for token, tf in counts.items():
            h = zlib.crc32(token.encode())
            vector[h % self.dim] += (1.0 if (h >> 31) & 1 else -1.0) * (1.0 + math.log(tf))
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` (same signature as ``dspy.Embedder``'s callable)."""
        return [self._vector(tokens) for tokens in self.tokenizer.tokenize_batch(list(texts))]
