"""dspyo3-rag: retrieval for DSPy.

* :mod:`dspyo3_rag.stores`: the vector-store interface (:class:`~dspyo3_rag.stores.VectorStore`), Qdrant, migration;
* :mod:`dspyo3_rag.embed`: embedders (the offline :class:`~dspyo3_rag.embed.LexicalEmbedder`);
* :mod:`dspyo3_rag.retrieve`: BM25, dense and hybrid retrievers;
* :mod:`dspyo3_rag.beir`, :mod:`dspyo3_rag.evaluation`: BEIR data and ``dspyo3 rag eval``.
"""

__version__ = "0.1.0"
