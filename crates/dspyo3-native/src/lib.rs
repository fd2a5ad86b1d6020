//! Thin PyO3 bindings over [`dspyo3_kernels`], importable from Python as `dspyo3_native`.
//!
//! Every algorithm lives in `dspyo3-kernels`; this crate only converts arguments, releases the GIL around
//! long work (`py.detach`) and maps errors to Python exceptions. Classes are `frozen` with their locks inside,
//! so one object can be shared by many Python threads.

mod adapter;
mod bm25;
mod convert;
mod events;
mod fusion;
mod lru;
mod ratelimit;
mod spansink;
mod tokenizer;
mod transport;
mod unescape;

use pyo3::prelude::*;

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
    m.add("IndexFormatError", m.py().get_type::<convert::IndexFormatError>())?;
    m.add_function(wrap_pyfunction!(kernels, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    fusion::register(m)?;
    tokenizer::register(m)?;
    bm25::register(m)?;
    lru::register(m)?;
    ratelimit::register(m)?;
    transport::register(m)?;
    events::register(m)?;
    spansink::register(m)?;
    unescape::register(m)?;
    adapter::register(m)?;
    Ok(())
}
