//! `LRUCache`: a thread-safe LRU cache of str keys with TTL and byte accounting.

use std::time::Duration;

use dspyo3_kernels::lru::SharedLru;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyList};

use crate::convert::{seconds, to_py};

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

/// Add `LRUCache` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLru>()
}
