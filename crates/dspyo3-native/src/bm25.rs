//! `BM25`: the keyword index, with add / update / delete by id, batch search and save / load.

use std::path::PathBuf;

use dspyo3_kernels::bm25::{Bm25Index, Bm25Params, Variant};
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
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
    inner: RwLock<Bm25Index>,
    ids: Mutex<IdCache>,
}

type Hits = Vec<(u32, f32)>;

impl PyBm25 {
    fn wrap(index: Bm25Index) -> Self {
        PyBm25 { inner: RwLock::new(index), ids: Mutex::new(IdCache::default()) }
    }

    /// Run a search on the prepared index without the GIL; returns hits by slot and the layout they refer to.
    fn run<R: Send>(&self, py: Python<'_>, search: impl Fn(&Bm25Index) -> R + Send + Sync) -> (R, u64) {
        py.detach(|| {
            let index = self.prepared();
            (search(&index), index.layout_generation())
        })
    }

    /// Hits as `[(id, score), ...]` lists, reusing cached id strings; `None` if the layout changed meanwhile.
    fn to_python<'py>(&self, py: Python<'py>, batches: &[Hits], layout: u64) -> PyResult<Option<Vec<Bound<'py, PyList>>>> {
        let mut cache = lock_released(py, &self.ids);
        let needed = batches.iter().flatten().map(|&(slot, _)| slot as usize + 1).max().unwrap_or(0);
        if cache.layout != layout || cache.ids.len() < needed {
            let index = read_released(py, &self.inner);
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
        search: impl Fn(&Bm25Index) -> Vec<Hits> + Send + Sync,
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
        search: impl Fn(&Bm25Index) -> Hits + Send + Sync,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut lists = self.search_many(py, |index| vec![search(index)])?;
        Ok(lists.pop().expect("one list"))
    }

    /// A read guard on an index whose precomputed scores are current (refreshed after changes).
    fn prepared(&self) -> RwLockReadGuard<'_, Bm25Index> {
        {
            let index = self.inner.read();
            if !index.is_dirty() {
                return index;
            }
        }
        self.inner.write().prepare();
        self.inner.read()
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
        py.detach(|| self.inner.write().add(&ids, &texts)).map_err(to_py)
    }

    /// Add (or replace, by id) pre-tokenized documents.
    fn add_tokens(&self, py: Python<'_>, ids: Vec<String>, tokens: Vec<Vec<String>>) -> PyResult<()> {
        py.detach(|| self.inner.write().add_tokens(&ids, &tokens)).map_err(to_py)
    }

    /// Delete documents by id (unknown ids are ignored); returns how many were deleted.
    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> usize {
        py.detach(|| self.inner.write().delete(&ids))
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
            let allow = allow.as_ref().map(|ids| index.allow_list(ids));
            index.search_docs(query, k, allow.as_ref())
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
            let allow = allow.as_ref().map(|ids| index.allow_list(ids));
            index.search_tokens_docs(&tokens, k, allow.as_ref())
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
            let allow = allow.as_ref().map(|ids| index.allow_list(ids));
            index.search_batch_docs(&queries, k, allow.as_ref())
        })
    }

    /// Tokens a text (or query) becomes under this index's tokenizer.
    fn tokenize(&self, py: Python<'_>, text: &str) -> Vec<String> {
        read_released(py, &self.inner).tokenize_query(text)
    }

    /// Write the index to `path` atomically (a crash mid-save leaves the previous file intact).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.prepared().save(&path)).map_err(to_py)
    }

    /// Read an index written by `save`; a foreign, newer or corrupt file raises `IndexFormatError`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let index = py.detach(|| Bm25Index::load(&path)).map_err(to_py)?;
        Ok(PyBm25::wrap(index))
    }

    /// Drop deleted documents from memory now (also done automatically).
    fn compact(&self, py: Python<'_>) {
        py.detach(|| self.inner.write().compact())
    }

    /// Ids of live documents, in insertion order.
    fn ids(&self, py: Python<'_>) -> Vec<String> {
        read_released(py, &self.inner).ids()
    }

    /// Distinct terms in live documents.
    #[getter]
    fn vocabulary_size(&self, py: Python<'_>) -> usize {
        read_released(py, &self.inner).vocabulary_size()
    }

    /// Scoring parameters: `{"variant", "k1", "b", "delta"}`.
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let params = read_released(py, &self.inner).params();
        let out = PyDict::new(py);
        out.set_item("variant", params.variant.name())?;
        out.set_item("k1", params.k1)?;
        out.set_item("b", params.b)?;
        out.set_item("delta", params.delta)?;
        Ok(out)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        read_released(py, &self.inner).len()
    }

    fn __contains__(&self, py: Python<'_>, id: &str) -> bool {
        read_released(py, &self.inner).contains(id)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let index = read_released(py, &self.inner);
        format!("BM25(variant={:?}, documents={})", index.params().variant.name(), index.len())
    }
}

/// Add `BM25` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBm25>()
}
