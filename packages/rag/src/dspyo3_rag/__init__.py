"""dspyo3-rag: retrieval for DSPy: Qdrant, Chroma and Pinecone stores, embedders, native BM25, hybrid fusion,
reranking, context packing, retrieval evaluation.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 rag`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
