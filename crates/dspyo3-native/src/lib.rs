//! Thin PyO3 bindings over [`dspyo3_kernels`], importable from Python as `dspyo3_native`.
//!
//! Every algorithm lives in `dspyo3-kernels`; this crate only converts arguments, releases the GIL around
//! long work (`py.detach`) and maps errors to Python exceptions. Classes are `frozen` with their locks inside,
//! so one object can be shared by many Python threads.

mod events;
mod transport;
mod unescape;

use std::path::PathBuf;
use std::time::Duration;

use dspyo3_kernels::bm25::{Bm25Index, Bm25Params, Variant};
use dspyo3_kernels::fusion::{self, Normalization};
use dspyo3_kernels::lru::SharedLru;
use dspyo3_kernels::ratelimit;
use dspyo3_kernels::tokenizer::{self, TokenizerConfig, ENGLISH_STOPWORDS};
use dspyo3_kernels::KernelError;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyList, PyString};

create_exception!(
    dspyo3_native,
    IndexFormatError,
    PyValueError,
    "An index file is not a dspyo3 index, was written by an incompatible version, or is corrupt."
);

fn to_py(err: KernelError) -> PyErr {
    match err {
        KernelError::InvalidArgument(message) => PyValueError::new_err(message),
        KernelError::Format(message) => IndexFormatError::new_err(message),
        KernelError::Io(err) => err.into(),
    }
}

/// The `stopwords` argument: `"english"`/`"en"` (Lucene's list, the default), a list of words, or `None`.
enum Stopwords {
    English,
    Words(Vec<String>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Stopwords {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(Stopwords::Words(Vec::new()));
        }
        if let Ok(name) = obj.cast::<PyString>() {
            return match name.to_str()?.to_lowercase().as_str() {
                "english" | "en" => Ok(Stopwords::English),
                other => Err(PyValueError::new_err(format!(
                    "unknown stopword list {other:?}; pass \"english\", a list of words, or None"
                ))),
            };
        }
        obj.extract::<Vec<String>>()
            .map(Stopwords::Words)
            .map_err(|_| PyValueError::new_err("stopwords must be \"english\", a list of str, or None"))
    }
}

impl Stopwords {
    fn words(self) -> Vec<String> {
        match self {
            Stopwords::English => ENGLISH_STOPWORDS.iter().map(|s| s.to_string()).collect(),
            Stopwords::Words(words) => words,
        }
    }
}

fn tokenizer_config(
    lowercase: bool,
    ascii_fold: bool,
    stopwords: Stopwords,
    stemmer: Option<String>,
    min_token_len: usize,
    max_token_len: usize,
) -> TokenizerConfig {
    TokenizerConfig { lowercase, ascii_fold, stopwords: stopwords.words(), stemmer, min_token_len, max_token_len }
}

/// Text -> tokens: Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming.
#[pyclass(frozen, name = "Tokenizer", module = "dspyo3_native")]
struct PyTokenizer {
    inner: tokenizer::Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (*, lowercase=true, ascii_fold=true, stopwords=Stopwords::English, stemmer=Some("english".to_string()), min_token_len=1, max_token_len=64))]
    fn new(
        lowercase: bool,
        ascii_fold: bool,
        stopwords: Stopwords,
        stemmer: Option<String>,
        min_token_len: usize,
        max_token_len: usize,
    ) -> PyResult<Self> {
        let config = tokenizer_config(lowercase, ascii_fold, stopwords, stemmer, min_token_len, max_token_len);
        Ok(PyTokenizer { inner: tokenizer::Tokenizer::new(config).map_err(to_py)? })
    }

    /// Tokens of one text.
    fn tokenize(&self, text: &str) -> Vec<String> {
        self.inner.tokenize(text)
    }

    /// Tokens of many texts, computed in parallel without the GIL.
    fn tokenize_batch(&self, py: Python<'_>, texts: Vec<String>) -> Vec<Vec<String>> {
        py.detach(|| self.inner.tokenize_batch(&texts))
    }

    fn __repr__(&self) -> String {
        format!("Tokenizer({:?})", self.inner.config())
    }
}

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

    /// Add (or replace, by id) documents; tokenized in parallel without the GIL.
    fn add(&self, py: Python<'_>, ids: Vec<String>, texts: Vec<String>) -> PyResult<()> {
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

fn top(top_k: Option<usize>) -> usize {
    top_k.unwrap_or(usize::MAX)
}

/// Reciprocal-rank fusion of ranked id lists: `sum_i w_i / (k + rank)`; best first, ties by id.
#[pyfunction]
#[pyo3(signature = (lists, k=60.0, weights=None, top_k=None))]
fn rrf(
    py: Python<'_>,
    lists: Vec<Vec<PyBackedStr>>,
    k: f64,
    weights: Option<Vec<f64>>,
    top_k: Option<usize>,
) -> PyResult<Vec<(String, f64)>> {
    py.detach(|| fusion::reciprocal_rank_fusion(&lists, k, weights.as_deref(), top(top_k))).map_err(to_py)
}

/// Reciprocal-rank fusion for many queries in one call: `problems[i]` is the ranked lists of query `i`.
#[pyfunction]
#[pyo3(signature = (problems, k=60.0, weights=None, top_k=None))]
fn rrf_many(
    py: Python<'_>,
    problems: Vec<Vec<Vec<PyBackedStr>>>,
    k: f64,
    weights: Option<Vec<f64>>,
    top_k: Option<usize>,
) -> PyResult<Vec<Vec<(String, f64)>>> {
    py.detach(|| {
        problems
            .iter()
            .map(|lists| fusion::reciprocal_rank_fusion(lists, k, weights.as_deref(), top(top_k)))
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(to_py)
}

/// Weighted fusion of scored lists after per-list normalisation (`minmax`, `zscore` or `none`).
#[pyfunction]
#[pyo3(signature = (lists, weights=None, normalization="minmax", top_k=None))]
fn weighted_fusion(
    py: Python<'_>,
    lists: Vec<Vec<(String, f64)>>,
    weights: Option<Vec<f64>>,
    normalization: &str,
    top_k: Option<usize>,
) -> PyResult<Vec<(String, f64)>> {
    let normalization = Normalization::parse(normalization).map_err(to_py)?;
    py.detach(|| fusion::weighted_score_fusion(&lists, weights.as_deref(), normalization, top(top_k))).map_err(to_py)
}

/// A positive number of seconds as a [`Duration`], saturating: `inf`, or a value too large for a `Duration`
/// (about 584 billion years), becomes [`Duration::MAX`], which the kernels read as "never" (a TTL that never
/// expires, a timeout that never passes). Zero, negative numbers and NaN raise `ValueError` naming `name`.
fn seconds(value: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s > 0.0 => Ok(Some(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))),
        Some(s) => Err(PyValueError::new_err(format!("{name} must be a positive number of seconds (got {s})"))),
    }
}

/// A timeout in seconds: `None`, `inf` or more than [`FOREVER_SECONDS`] (about 100 years) mean "wait forever".
fn timeout_seconds(value: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    match value {
        Some(s) if s > FOREVER_SECONDS => Ok(None),
        other => seconds(other, name),
    }
}

/// Timeouts longer than this many seconds (100 years) are treated as no timeout at all.
const FOREVER_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;

/// `(max_entries, max_bytes, ttl)`: the constructor arguments of a pickled `LRUCache`.
type LruArgs = (usize, Option<usize>, Option<f64>);
/// What `LRUCache.__reduce__` returns: the class, its constructor arguments and the entries.
type Reduced<'py> = (Bound<'py, PyAny>, LruArgs, Bound<'py, PyList>);

/// A thread-safe LRU cache of str keys with optional per-entry TTL and byte accounting.
#[pyclass(frozen, name = "LRUCache", module = "dspyo3_native")]
struct PyLru {
    inner: SharedLru<Py<PyAny>>,
}

#[pymethods]
impl PyLru {
    #[new]
    #[pyo3(signature = (max_entries, max_bytes=None, ttl=None))]
    fn new(max_entries: usize, max_bytes: Option<usize>, ttl: Option<f64>) -> PyResult<Self> {
        // `inf` (or any TTL too long for a Duration) never expires: the same as no default TTL
        let ttl = seconds(ttl, "ttl")?.filter(|ttl| *ttl != Duration::MAX);
        Ok(PyLru { inner: SharedLru::new(max_entries, max_bytes, ttl).map_err(to_py)? })
    }

    /// The value for `key` (marking it recently used), or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get(&self, py: Python<'_>, key: &str, default: Option<Py<PyAny>>) -> Py<PyAny> {
        let (found, expired) = self.inner.with(|c| c.get_with(key, |v| v.clone_ref(py)));
        drop(expired);
        found.or(default).unwrap_or_else(|| py.None())
    }

    /// Store `value` under `key` accounting `size` bytes; `ttl` seconds overrides the default (`inf`: never
    /// expires). Returns False when the entry alone is larger than `max_bytes` (it is not stored).
    #[pyo3(signature = (key, value, size=0, ttl=None))]
    fn put(&self, key: String, value: Py<PyAny>, size: usize, ttl: Option<f64>) -> PyResult<bool> {
        let ttl = seconds(ttl, "ttl")?;
        let stats_before = self.inner.with(|c| c.stats().rejected);
        let pushed = self.inner.with(|c| c.insert(key, value, size, ttl));
        drop(pushed);
        Ok(self.inner.with(|c| c.stats().rejected) == stats_before)
    }

    /// Values for many keys in one call (one lock, one boundary crossing); `default` where missing.
    #[pyo3(signature = (keys, default=None))]
    fn get_many(&self, py: Python<'_>, keys: Vec<PyBackedStr>, default: Option<Py<PyAny>>) -> Vec<Py<PyAny>> {
        let default = default.unwrap_or_else(|| py.None());
        let (found, expired) = self.inner.with(|c| {
            let mut expired = Vec::new();
            let found: Vec<Option<Py<PyAny>>> = keys
                .iter()
                .map(|key| {
                    let (value, gone) = c.get_with(key, |v| v.clone_ref(py));
                    expired.extend(gone);
                    value
                })
                .collect();
            (found, expired)
        });
        drop(expired);
        found.into_iter().map(|v| v.unwrap_or_else(|| default.clone_ref(py))).collect()
    }

    /// Store many `(key, value)` pairs in one call (sizes 0, default TTL).
    fn put_many(&self, items: Vec<(String, Py<PyAny>)>) {
        let pushed = self.inner.with(|c| {
            let mut pushed = Vec::new();
            for (key, value) in items {
                pushed.extend(c.insert(key, value, 0, None));
            }
            pushed
        });
        drop(pushed);
    }

    /// Remove `key` and return its value, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn pop(&self, py: Python<'_>, key: &str, default: Option<Py<PyAny>>) -> Py<PyAny> {
        self.inner.with(|c| c.remove(key)).or(default).unwrap_or_else(|| py.None())
    }

    /// Remove every entry.
    fn clear(&self) {
        let values = self.inner.with(|c| c.clear());
        drop(values);
    }

    /// Keys from most to least recently used.
    fn keys(&self) -> Vec<String> {
        self.inner.with(|c| c.keys())
    }

    /// Counters and sizes: hits, misses, evictions, expirations, rejected, entries, bytes.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (stats, entries, bytes) = self.inner.with(|c| (c.stats(), c.len(), c.bytes()));
        let out = PyDict::new(py);
        out.set_item("hits", stats.hits)?;
        out.set_item("misses", stats.misses)?;
        out.set_item("evictions", stats.evictions)?;
        out.set_item("expirations", stats.expirations)?;
        out.set_item("rejected", stats.rejected)?;
        out.set_item("entries", entries)?;
        out.set_item("bytes", bytes)?;
        Ok(out)
    }

    /// Pickle support (DSPy's `Cache.save_memory_cache` pickles its memory tier): limits plus the live entries,
    /// oldest first, with their sizes and remaining TTLs.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Reduced<'py>> {
        let py = slf.py();
        let this = slf.get();
        let (args, entries) = this.inner.with(|c| {
            let mut entries = Vec::with_capacity(c.len());
            // under a default TTL, an entry that never expires is written with `inf`, so that restoring it does
            // not give it the default
            let never = c.default_ttl().map(|_| f64::INFINITY);
            c.for_each_oldest_first(|key, value, bytes, ttl| {
                entries.push((key.to_string(), value.clone_ref(py), bytes, ttl.map(|t| t.as_secs_f64()).or(never)));
            });
            ((c.max_entries(), c.max_bytes(), c.default_ttl().map(|t| t.as_secs_f64())), entries)
        });
        Ok((slf.get_type().into_any(), args, PyList::new(py, entries)?))
    }

    /// Restore the entries written by `__reduce__`.
    fn __setstate__(&self, entries: Vec<(String, Py<PyAny>, usize, Option<f64>)>) -> PyResult<()> {
        for (key, value, bytes, ttl) in entries {
            let ttl = match ttl {
                Some(seconds) if seconds <= 0.0 => continue,
                other => seconds(other, "ttl")?,
            };
            let pushed = self.inner.with(|c| c.insert(key, value, bytes, ttl));
            drop(pushed);
        }
        Ok(())
    }

    fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        let (found, expired) = self.inner.with(|c| c.get_with(key, |v| v.clone_ref(py)));
        drop(expired);
        found.ok_or_else(|| PyKeyError::new_err(key.to_string()))
    }

    fn __setitem__(&self, key: String, value: Py<PyAny>) {
        let pushed = self.inner.with(|c| c.insert(key, value, 0, None));
        drop(pushed);
    }

    fn __delitem__(&self, key: &str) -> PyResult<()> {
        match self.inner.with(|c| c.remove(key)) {
            Some(_) => Ok(()),
            None => Err(PyKeyError::new_err(key.to_string())),
        }
    }

    fn __contains__(&self, key: &str) -> bool {
        self.inner.with(|c| c.contains(key))
    }

    fn __len__(&self) -> usize {
        self.inner.with(|c| c.len())
    }
}

/// GCRA rate limiter: `rate` units of cost per `per` seconds, bursts up to `burst`; thread-safe, never blocks
/// except in `acquire`.
#[pyclass(frozen, name = "RateLimiter", module = "dspyo3_native")]
struct PyRateLimiter {
    inner: ratelimit::RateLimiter,
}

#[pymethods]
impl PyRateLimiter {
    #[new]
    #[pyo3(signature = (rate, per=1.0, burst=1.0))]
    fn new(rate: f64, per: f64, burst: f64) -> PyResult<Self> {
        let per = match Duration::try_from_secs_f64(per) {
            Ok(period) if per > 0.0 => period,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "per must be a positive number of seconds no larger than {:e} (got {per})",
                    Duration::MAX.as_secs_f64()
                )))
            }
        };
        Ok(PyRateLimiter { inner: ratelimit::RateLimiter::new(rate, per, burst).map_err(to_py)? })
    }

    /// Take `cost` now if allowed.
    #[pyo3(signature = (cost=1.0))]
    fn try_acquire(&self, cost: f64) -> PyResult<bool> {
        self.inner.try_acquire(cost).map_err(to_py)
    }

    /// Take `cost` now if allowed and return 0.0, else return seconds until it would be (taking nothing).
    #[pyo3(signature = (cost=1.0))]
    fn try_acquire_or_wait(&self, cost: f64) -> PyResult<f64> {
        Ok(self.inner.try_acquire_or_wait(cost).map_err(to_py)?.as_secs_f64())
    }

    /// Reserve `cost` now and return the seconds to wait before using it (0.0 if it is available now).
    #[pyo3(signature = (cost=1.0))]
    fn reserve(&self, cost: f64) -> PyResult<f64> {
        Ok(self.inner.reserve(cost).map_err(to_py)?.as_secs_f64())
    }

    /// Seconds until `cost` could be taken (0.0 if now); takes nothing.
    #[pyo3(signature = (cost=1.0))]
    fn time_to_ready(&self, cost: f64) -> PyResult<f64> {
        Ok(self.inner.time_to_ready(cost).map_err(to_py)?.as_secs_f64())
    }

    /// Block (without the GIL) until `cost` is taken; False if `timeout` seconds pass first (`None`, `inf` or
    /// more than 100 years: wait as long as it takes).
    #[pyo3(signature = (cost=1.0, timeout=None))]
    fn acquire(&self, py: Python<'_>, cost: f64, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_seconds(timeout, "timeout")?;
        py.detach(|| self.inner.acquire_blocking(cost, timeout)).map_err(to_py)
    }

    /// Units per period.
    #[getter]
    fn rate(&self) -> f64 {
        self.inner.rate()
    }

    /// Period in seconds.
    #[getter]
    fn per(&self) -> f64 {
        self.inner.period().as_secs_f64()
    }

    /// Burst capacity in units.
    #[getter]
    fn burst(&self) -> f64 {
        self.inner.burst()
    }

    /// Successful acquisitions so far.
    #[getter]
    fn acquired(&self) -> u64 {
        self.inner.acquired()
    }

    fn __repr__(&self) -> String {
        format!("RateLimiter(rate={}, per={}, burst={})", self.rate(), self.per(), self.burst())
    }
}

/// Names of the kernels compiled into this build (see [`dspyo3_kernels::KERNELS`]).
#[pyfunction]
fn kernels() -> Vec<&'static str> {
    dspyo3_kernels::KERNELS.to_vec()
}

/// One-line description of the native build: crate version and compiled kernels.
#[pyfunction]
fn build_info() -> String {
    dspyo3_kernels::build_info()
}

/// The `dspyo3_native._native` extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("IndexFormatError", m.py().get_type::<IndexFormatError>())?;
    m.add("ENGLISH_STOPWORDS", ENGLISH_STOPWORDS.to_vec())?;
    m.add("STEMMER_LANGUAGES", tokenizer::STEMMER_LANGUAGES.to_vec())?;
    m.add_function(wrap_pyfunction!(kernels, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(rrf, m)?)?;
    m.add_function(wrap_pyfunction!(weighted_fusion, m)?)?;
    m.add_function(wrap_pyfunction!(rrf_many, m)?)?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyBm25>()?;
    m.add_class::<PyLru>()?;
    m.add_class::<PyRateLimiter>()?;
    transport::register(m)?;
    events::register(m)?;
    unescape::register(m)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_saturate_and_refuse_what_is_not_a_duration() {
        assert_eq!(seconds(None, "ttl").expect("none"), None);
        assert_eq!(seconds(Some(1.5), "ttl").expect("finite"), Some(Duration::from_millis(1500)));
        for huge in [1e20, 1e300, f64::INFINITY] {
            assert_eq!(seconds(Some(huge), "ttl").expect("saturates"), Some(Duration::MAX), "{huge}");
        }
        Python::initialize(); // reading a PyErr's message needs the interpreter
        Python::attach(|py| {
            for bad in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
                let err = seconds(Some(bad), "ttl").expect_err("refused");
                assert!(err.is_instance_of::<PyValueError>(py), "{bad}: {err}");
                assert!(err.to_string().contains("ttl must be a positive number of seconds"), "{bad}: {err}");
            }
        });
    }

    #[test]
    fn timeouts_past_a_century_mean_forever() {
        assert_eq!(timeout_seconds(Some(f64::INFINITY), "timeout").expect("forever"), None);
        assert_eq!(timeout_seconds(Some(1e19), "timeout").expect("forever"), None);
        assert_eq!(timeout_seconds(Some(2.0), "timeout").expect("finite"), Some(Duration::from_secs(2)));
        assert!(timeout_seconds(Some(-2.0), "timeout").is_err());
    }
}
