"""Embedders. The offline default needs no model download and says what it is: a lexical embedder.

:class:`LexicalEmbedder` hashes stemmed words (and, optionally, word bigrams) into a fixed number of dimensions
with signs (feature hashing), weights them ``1 + log(tf)`` and L2-normalises: cosine similarity is then a
TF-weighted word overlap. It finds documents that share words with the query, like BM25 does, and nothing a
neural embedder would find beyond that; it exists so the dense and hybrid paths run anywhere, offline.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import threading
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import dspyo3_native as native

__all__ = ["CachedEmbedder", "FastEmbedEmbedder", "LexicalEmbedder", "LiteLLMEmbedder",
           "SentenceTransformerEmbedder"]


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


class LiteLLMEmbedder:
    """Any LiteLLM embedding model through ``dspy.Embedder`` (``openai/text-embedding-3-small``, an
    OpenAI-compatible server with ``api_base=``, ...). Keyword arguments go to the embedding call."""

    def __init__(self, model: str, *, batch_size: int = 200, **kwargs: object) -> None:
        import dspy

        # the cache key of CachedEmbedder: the model and every option that changes the vectors (not credentials)
        options = {k: v for k, v in sorted(kwargs.items()) if k not in {"api_key", "api_base", "timeout"}}
        self.model = model + (f"|{json.dumps(options, sort_keys=True, default=str)}" if options else "")
        self._embedder = dspy.Embedder(model, batch_size=batch_size, caching=False, **kwargs)

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``."""
        if not texts:
            return []
        return [[float(x) for x in row] for row in self._embedder(list(texts))]


class FastEmbedEmbedder:
    """A ``fastembed`` model (``pip install 'dspyo3-rag[fastembed]'``); the model is downloaded on first use unless
    it is in fastembed's cache already."""

    def __init__(self, model: str = "BAAI/bge-small-en-v1.5", **kwargs: object) -> None:
        try:
            from fastembed import TextEmbedding
        except ImportError:
            from dspyo3_core.failures import install_advice

            advice = install_advice('dspyo3-rag', 'fastembed')
            raise ImportError(f"the fastembed embedder needs fastembed: {advice}") from None
        self.model = model
        self._model = TextEmbedding(model_name=model, **kwargs)

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``."""
        return [[float(x) for x in row] for row in self._model.embed(list(texts))]


class SentenceTransformerEmbedder:
    """A ``sentence-transformers`` model (``pip install 'dspyo3-rag[sentence-transformers]'``), loaded from the
    local Hugging Face cache or downloaded once; vectors are L2-normalised."""

    def __init__(self, model: str = "sentence-transformers/all-MiniLM-L6-v2", **kwargs: object) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            from dspyo3_core.failures import install_advice

            raise ImportError("the sentence-transformers embedder needs sentence-transformers: "
                              f"{install_advice('dspyo3-rag', 'sentence-transformers')}") from None
        self.model = model
        self._model = SentenceTransformer(model, **kwargs)

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``."""
        vectors = self._model.encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in row] for row in vectors]


class CachedEmbedder:
    """A persistent embedding cache in front of any embedder, keyed by the model name and a hash of the text.

    SQLite (one file, transactions: a crash never leaves a half-written entry); only the texts not cached yet are
    sent to the embedder, in one batch.
    """

    def __init__(self, embedder: Callable[[Sequence[str]], Sequence[Sequence[float]]], path: str | os.PathLike[str],
                 *, model: str | None = None) -> None:
        import sqlite3

        self.embedder = embedder
        name = model or getattr(embedder, "model", None)
        if not name:
            raise ValueError("CachedEmbedder needs model=...: the cache key must name what made the vectors "
                             "(this embedder has no .model)")
        self.model = str(name)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings (model TEXT, key TEXT, vector BLOB, "
                         "PRIMARY KEY (model, key))")
        self._db.commit()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``, from the cache where possible."""
        keys = [self._key(t) for t in texts]
        with self._lock:
            found: dict[str, list[float]] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({','.join('?' * len(chunk))})",
                    [self.model, *chunk]).fetchall()
                found.update((key, list(array("d", blob))) for key, blob in rows)
        missing = [i for i, key in enumerate(keys) if key not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            vectors = self.embedder([texts[i] for i in missing])
            with self._lock, self._db:
                for i, vector in zip(missing, vectors, strict=True):
                    values = [float(x) for x in vector]
                    found[keys[i]] = values
                    self._db.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                                     (self.model, keys[i], array("d", values).tobytes()))
        return [found[key] for key in keys]

    def close(self) -> None:
        """Close the cache file."""
        self._db.close()
