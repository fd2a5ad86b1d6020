//! `RateLimiter`: the GCRA rate limiter.

use std::time::Duration;

use dspyo3_kernels::ratelimit;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{timeout_seconds, to_py};

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

/// Add `RateLimiter` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRateLimiter>()
}
