"""dspyo3-rag installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestRagPlugin(PluginContract):
    distribution = "dspyo3-rag"
    entry_point = "rag"


def test_rag_registers_its_stores_embedders_and_rerankers() -> None:
    from dspyo3_core.plugins import PluginManager

    manager = PluginManager()
    assert {"qdrant", "chroma", "pinecone"} <= set(manager.registry("dspyo3_register_vector_stores").names())
    assert {"lexical", "litellm", "fastembed", "sentence-transformers"} <= set(
        manager.registry("dspyo3_register_embedders").names())
    assert {"lm", "cross-encoder"} <= set(manager.registry("dspyo3_register_rerankers").names())
    spec = manager.registry("dspyo3_register_vector_stores").get("pinecone")
    assert spec.factory.__name__ == "PineconeStore"
