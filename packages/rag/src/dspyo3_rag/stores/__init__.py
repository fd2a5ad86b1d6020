"""Vector stores behind one interface (:class:`VectorStore`), and migration between them."""

from dspyo3_rag.stores.base import Hit, StoreError, VectorStore, migrate

__all__ = ["Hit", "StoreError", "VectorStore", "migrate"]
