//! `BM25`: the keyword index, with add / update / delete by id, batch search and save / load.

use std::path::PathBuf;

use dspyo3_kernels::bm25::{AllowList, Bm25Index, Bm25Params, Variant};
use dspyo3_kernels::bm25_mmap::MappedBm25;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyList, PyString};

use crate::convert::to_py;
use crate::tokenizer::{tokenizer_config, Stopwords};

/// Python `str` objects for document ids, by slot, valid for one index layout generation.
#[derive(Default)]
struct IdCache {
    layout: u64,
    ids: Vec<Py<PyString>>,
}

/// Lock `lock` for reading, waiting (if it is write-locked) without the GIL, so that a long `add()` on another
/// thread stalls neither other Python threads nor the caller's interpreter.
fn read_released<'a, T: Send + Sync>(py: Python<'_>, lock: &'a RwLock<T>) -> RwLockReadGuard<'a, T> {
    loop {
        if let Some(guard) = lock.try_read() {
            return guard;
        }
        py.detach(|| drop(lock.read()));
    }
}

/// Lock `lock`, waiting (if it is held) without the GIL.
fn lock_released<'a, T: Send>(py: Python<'_>, lock: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        py.detach(|| drop(lock.lock()));
    }
}

/// A BM25 index with add / update / delete by id, filtered and batch search, and atomic save / load.
///
/// Locking: no lock is ever waited for with the GIL held. Writers and searches take the index lock inside
/// `py.detach`; the read methods (`len`, `in`, `ids`, `tokenize`, ...) try the lock with the GIL and, if a
/// writer holds it, wait for it with the GIL released ([`read_released`]).
#[pyclass(frozen, name = "BM25", module = "dspyo3_native")]
struct PyBm25 {
    inner: Backend,
    ids: Mutex<IdCache>,
}

/// What a `BM25` object searches: an index in memory (mutable), or a saved file mapped read-only.
enum Backend {
    Owned(RwLock<Bm25Index>),
    Mapped(MappedBm25),
}

type Hits = Vec<(u32, f32)>;

/// The searches both backends answer, by document slot.
trait Searcher: Sync {
    fn allow(&self, ids: &[String]) -> AllowList;
    fn docs(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Hits;
    fn tokens_docs(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Hits;
    fn batch_docs(&self, queries: &[String], k: usize, allow: Option<&AllowList>) -> Vec<Hits>;
}

impl Searcher for Bm25Index {
    fn allow(&self, ids: &[String]) -> AllowList {
        self.allow_list(ids)
    }
    fn docs(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Hits {
        self.search_docs(query, k, allow)
    }
    fn tokens_docs(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Hits {
        self.search_tokens_docs(tokens, k, allow)
    }
    fn batch_docs(&self, queries: &[String], k: usize, allow: Option<&AllowList>) -> Vec<Hits> {
        self.search_batch_docs(queries, k, allow)
    }
}

impl Searcher for MappedBm25 {
    fn allow(&self, ids: &[String]) -> AllowList {
        self.allow_list(ids)
    }
    fn docs(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Hits {
        self.search_docs(query, k, allow)
    }
    fn tokens_docs(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Hits {
        self.search_tokens_docs(tokens, k, allow)
    }
    fn batch_docs(&self, queries: &[String], k: usize, allow: Option<&AllowList>) -> Vec<Hits> {
        self.search_batch_docs(queries, k, allow)
    }
}

const READ_ONLY: &str = "this index was opened read-only (mmap=True); load it with BM25.load(path) to change it";

impl PyBm25 {
    fn wrap(index: Bm25Index) -> Self {
        PyBm25 { inner: Backend::Owned(RwLock::new(index)), ids: Mutex::new(IdCache::default()) }
    }

    /// The in-memory index, or `ValueError` for a read-only mapped one.
    fn owned(&self) -> PyResult<&RwLock<Bm25Index>> {
        match &self.inner {
            Backend::Owned(lock) => Ok(lock),
            Backend::Mapped(_) => Err(PyValueError::new_err(READ_ONLY)),
        }
    }

    /// Run a search on the prepared index without the GIL; returns hits by slot and the layout they refer to.
    fn run<R: Send>(&self, py: Python<'_>, search: impl Fn(&dyn Searcher) -> R + Send + Sync) -> (R, u64) {
        py.detach(|| match &self.inner {
            Backend::Owned(lock) => {
                let index = Self::prepared(lock);
                (search(&*index), index.layout_generation())
            }
            Backend::Mapped(mapped) => (search(mapped), 0),
        })
    }

    /// Hits as `[(id, score), ...]` lists, reusing cached id strings; `None` if the layout changed meanwhile.
    fn to_python<'py>(&self, py: Python<'py>, batches: &[Hits], layout: u64) -> PyResult<Option<Vec<Bound<'py, PyList>>>> {
        let lock = match &self.inner {
            Backend::Owned(lock) => lock,
            Backend::Mapped(mapped) => {
                // ids read from the map per hit (no cache of every id: opening stays cheap)
                let mut out = Vec::with_capacity(batches.len());
                for hits in batches {
                    let mut items = Vec::with_capacity(hits.len());
                    for &(slot, score) in hits {
                        items.push((PyString::new(py, mapped.doc_id(slot).map_err(to_py)?), score as f64));
                    }
                    out.push(PyList::new(py, items)?);
                }
                return Ok(Some(out));
            }
        };
        let mut cache = lock_released(py, &self.ids);
        let needed = batches.iter().flatten().map(|&(slot, _)| slot as usize + 1).max().unwrap_or(0);
        if cache.layout != layout || cache.ids.len() < needed {
            let index = read_released(py, lock);
            if index.layout_generation() != layout {
                return Ok(None);
            }
            if cache.layout != layout {
                cache.ids.clear();
                cache.layout = layout;
            }
            for slot in cache.ids.len()..index.slots() {
                cache.ids.push(PyString::new(py, index.doc_id(slot as u32)).unbind());
            }
        }
        let mut out = Vec::with_capacity(batches.len());
        for hits in batches {
            let items = hits.iter().map(|&(slot, score)| (cache.ids[slot as usize].bind(py), score as f64));
            out.push(PyList::new(py, items)?);
        }
        Ok(Some(out))
    }

    fn search_many<'py>(
        &self,
        py: Python<'py>,
        search: impl Fn(&dyn Searcher) -> Vec<Hits> + Send + Sync,
    ) -> PyResult<Vec<Bound<'py, PyList>>> {
        loop {
            let (hits, layout) = self.run(py, &search);
            if let Some(out) = self.to_python(py, &hits, layout)? {
                return Ok(out);
            }
        }
    }

    fn search_one<'py>(
        &self,
        py: Python<'py>,
        search: impl Fn(&dyn Searcher) -> Hits + Send + Sync,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut lists = self.search_many(py, |index| vec![search(index)])?;
        Ok(lists.pop().expect("one list"))
    }

    /// A read guard on an index whose precomputed scores are current (refreshed after changes).
    fn prepared(lock: &RwLock<Bm25Index>) -> RwLockReadGuard<'_, Bm25Index> {
        {
            let index = lock.read();
            if !index.is_dirty() {
                return index;
            }
        }
        lock.write().prepare();
        lock.read()
    }
}

#[pymethods]
impl PyBm25 {
    #[new]
    #[pyo3(signature = (*, variant="lucene", k1=1.2, b=0.75, delta=0.5, lowercase=true, ascii_fold=true, stopwords=Stopwords::English, stemmer=Some("english".to_string()), min_token_len=1, max_token_len=64))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        variant: &str,
        k1: f32,
        b: f32,
        delta: f32,
        lowercase: bool,
        ascii_fold: bool,
        stopwords: Stopwords,
        stemmer: Option<String>,
        min_token_len: usize,
        max_token_len: usize,
    ) -> PyResult<Self> {
        let config = tokenizer_config(lowercase, ascii_fold, stopwords, stemmer, min_token_len, max_token_len);
        let params = Bm25Params { variant: Variant::parse(variant).map_err(to_py)?, k1, b, delta };
        Ok(PyBm25::wrap(Bm25Index::new(config, params).map_err(to_py)?))
    }

    /// Add (or replace, by id) documents; tokenized in parallel without the GIL. The texts are read in place
    /// (not copied) from the Python strings.
    fn add(&self, py: Python<'_>, ids: Vec<String>, texts: Vec<PyBackedStr>) -> PyResult<()> {
        let lock = self.owned()?;
        py.detach(|| lock.write().add(&ids, &texts)).map_err(to_py)
    }

    /// Add (or replace, by id) pre-tokenized documents.
    fn add_tokens(&self, py: Python<'_>, ids: Vec<String>, tokens: Vec<Vec<String>>) -> PyResult<()> {
        let lock = self.owned()?;
        py.detach(|| lock.write().add_tokens(&ids, &tokens)).map_err(to_py)
    }

    /// Delete documents by id (unknown ids are ignored); returns how many were deleted.
    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        let lock = self.owned()?;
        Ok(py.detach(|| lock.write().delete(&ids)))
    }

    /// Top `k` `(id, score)` for one query, best first; `allow` restricts results to those ids.
    #[pyo3(signature = (query, k=10, allow=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        k: usize,
        allow: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.search_one(py, |index| {
            let allow = allow.as_ref().map(|ids| index.allow(ids));
            index.docs(query, k, allow.as_ref())
        })
    }

    /// Top `k` for pre-tokenized query tokens.
    #[pyo3(signature = (tokens, k=10, allow=None))]
    fn search_tokens<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<String>,
        k: usize,
        allow: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.search_one(py, |index| {
            let allow = allow.as_ref().map(|ids| index.allow(ids));
            index.tokens_docs(&tokens, k, allow.as_ref())
        })
    }

    /// Top `k` for each query, scored in parallel without the GIL; results follow input order.
    #[pyo3(signature = (queries, k=10, allow=None))]
    fn search_batch<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<String>,
        k: usize,
        allow: Option<Vec<String>>,
    ) -> PyResult<Vec<Bound<'py, PyList>>> {
        self.search_many(py, |index| {
            let allow = allow.as_ref().map(|ids| index.allow(ids));
            index.batch_docs(&queries, k, allow.as_ref())
        })
    }

    /// Tokens a text (or query) becomes under this index's tokenizer.
    fn tokenize(&self, py: Python<'_>, text: &str) -> Vec<String> {
        match &self.inner {
            Backend::Owned(lock) => read_released(py, lock).tokenize_query(text),
            Backend::Mapped(mapped) => mapped.tokenize_query(text),
        }
    }

    /// Write the index to `path` atomically (a crash mid-save leaves the previous file intact). A mapped index
    /// writes a copy of its file.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| match &self.inner {
            Backend::Owned(lock) => Self::prepared(lock).save(&path),
            Backend::Mapped(mapped) => mapped.save(&path),
        })
        .map_err(to_py)
    }

    /// Read an index written by `save`; a foreign, newer or corrupt file raises `IndexFormatError`. With
    /// `mmap=True` the file is searched in place from a read-only memory map (opens in milliseconds; changes
    /// raise `ValueError`).
    #[staticmethod]
    #[pyo3(signature = (path, *, mmap=false))]
    fn load(py: Python<'_>, path: PathBuf, mmap: bool) -> PyResult<Self> {
        if mmap {
            let mapped = py.detach(|| MappedBm25::open(&path)).map_err(to_py)?;
            return Ok(PyBm25 { inner: Backend::Mapped(mapped), ids: Mutex::new(IdCache::default()) });
        }
        let index = py.detach(|| Bm25Index::load(&path)).map_err(to_py)?;
        Ok(PyBm25::wrap(index))
    }

    /// Drop deleted documents from memory now (also done automatically).
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        let lock = self.owned()?;
        py.detach(|| lock.write().compact());
        Ok(())
    }

    /// Ids of live documents, in insertion order.
    fn ids(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        match &self.inner {
            Backend::Owned(lock) => Ok(read_released(py, lock).ids()),
            Backend::Mapped(mapped) => py.detach(|| mapped.ids()).map_err(to_py),
        }
    }

    /// Distinct terms in live documents.
    #[getter]
    fn vocabulary_size(&self, py: Python<'_>) -> usize {
        match &self.inner {
            Backend::Owned(lock) => read_released(py, lock).vocabulary_size(),
            Backend::Mapped(mapped) => mapped.vocabulary_size(),
        }
    }

    /// Scoring parameters: `{"variant", "k1", "b", "delta"}`.
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let params = match &self.inner {
            Backend::Owned(lock) => read_released(py, lock).params(),
            Backend::Mapped(mapped) => mapped.params(),
        };
        let out = PyDict::new(py);
        out.set_item("variant", params.variant.name())?;
        out.set_item("k1", params.k1)?;
        out.set_item("b", params.b)?;
        out.set_item("delta", params.delta)?;
        Ok(out)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        match &self.inner {
            Backend::Owned(lock) => read_released(py, lock).len(),
            Backend::Mapped(mapped) => mapped.len(),
        }
    }

    fn __contains__(&self, py: Python<'_>, id: &str) -> bool {
        match &self.inner {
            Backend::Owned(lock) => read_released(py, lock).contains(id),
            Backend::Mapped(mapped) => mapped.contains(id),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (params, len, mapped) = match &self.inner {
            Backend::Owned(lock) => {
                let index = read_released(py, lock);
                (index.params(), index.len(), "")
            }
            Backend::Mapped(mapped) => (mapped.params(), mapped.len(), ", mmap=True"),
        };
        format!("BM25(variant={:?}, documents={len}{mapped})", params.variant.name())
    }
}

/// Add `BM25` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBm25>()
}
