"""Embedders: LiteLLM (through dspy.Embedder) against the loopback server, and the persistent cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dspyo3_core.testing import LMServer
from dspyo3_core.testing.server import embedding_of
from dspyo3_rag.embed import CachedEmbedder, LexicalEmbedder, LiteLLMEmbedder


def test_litellm_embedder_against_the_loopback_server() -> None:
    with LMServer() as server:
        embed = LiteLLMEmbedder("openai/text-embedding-3-small", api_base=server.api_base, api_key="k")
        vectors = embed(["alpha", "beta"])
        expected = [embedding_of("alpha"), embedding_of("beta")]
        assert [pytest.approx(v, rel=1e-6) for v in expected] == vectors  # dspy.Embedder returns float32
        assert server.requests[0]["input"] == ["alpha", "beta"]


def test_cache_embeds_each_text_once_and_persists(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    inner = LexicalEmbedder(dim=32)

    def counting(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return inner(texts)

    cache = CachedEmbedder(counting, tmp_path / "cache.sqlite", model=inner.model)
    first = cache(["cats purr", "dogs bark"])
    second = cache(["dogs bark", "birds sing"])
    assert calls == [["cats purr", "dogs bark"], ["birds sing"]]
    assert second[0] == first[1] and (cache.hits, cache.misses) == (1, 3)
    cache.close()
    reopened = CachedEmbedder(counting, tmp_path / "cache.sqlite", model=inner.model)
    assert reopened(["cats purr"]) == [first[0]] and len(calls) == 2, "served from the file"
    other_model = CachedEmbedder(counting, tmp_path / "cache.sqlite", model="another-model")
    other_model(["cats purr"])
    assert len(calls) == 3, "keys include the model"


def test_cache_needs_a_model_name_for_plain_functions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs model="):
        CachedEmbedder(lambda texts: [[1.0] for _ in texts], tmp_path / "c.sqlite")
    a = LiteLLMEmbedder("openai/m", api_base="http://127.0.0.1:9/v1", api_key="secret", dimensions=8)
    assert a.model == 'openai/m|{"dimensions": 8}' and "secret" not in a.model


@pytest.mark.parametrize(("module", "factory", "extra"), [
    ("fastembed", "FastEmbedEmbedder", "fastembed"),
    ("sentence_transformers", "SentenceTransformerEmbedder", "sentence-transformers"),
])
def test_optional_embedders_name_their_extra(module: str, factory: str, extra: str) -> None:
    import importlib.util

    import dspyo3_rag.embed as embed

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    from dspyo3_core.failures import install_advice

    with pytest.raises(ImportError, match=re.escape(install_advice("dspyo3-rag", extra))):
        getattr(embed, factory)()
