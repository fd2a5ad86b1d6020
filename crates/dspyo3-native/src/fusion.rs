//! Rank fusion: `rrf`, `rrf_many` and `weighted_fusion`.

use dspyo3_kernels::fusion::{self, Normalization};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;

use crate::convert::to_py;

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

/// Add `rrf`, `weighted_fusion` and `rrf_many` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rrf, m)?)?;
    m.add_function(wrap_pyfunction!(weighted_fusion, m)?)?;
    m.add_function(wrap_pyfunction!(rrf_many, m)?)
}
