//! Thin PyO3 bindings over [`dspyo3_kernels`], importable from Python as `dspyo3_native`.
//!
//! Every algorithm lives in `dspyo3-kernels`; this crate only converts arguments, releases the GIL around
//! long work and maps errors to Python exceptions.

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
    m.add_function(wrap_pyfunction!(kernels, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
