//! Pure-Rust kernels behind dspyo3.
//!
//! This crate holds the algorithms (keyword search, rank fusion, caches, rate limiters, parsers) with no
//! Python dependency, so each kernel is tested and benchmarked with plain `cargo test` / `cargo bench`.
//! The `dspyo3-native` crate is a thin PyO3 binding over it.
//!
//! The kernels land one by one; [`KERNELS`] lists the ones compiled into this build so that bindings and
//! diagnostics (`dspyo3 doctor`) can report what is available without guessing.

#![deny(missing_docs)]

/// Version of this crate, as written in its `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Names of the kernels compiled into this build, in the order they were added.
///
/// Empty until the first kernel lands; a binding reports exactly this list.
pub const KERNELS: &[&str] = &[];

/// Returns a one-line description of this build: crate version and compiled kernels.
///
/// ```
/// let info = dspyo3_kernels::build_info();
/// assert!(info.starts_with("dspyo3-kernels "));
/// ```
pub fn build_info() -> String {
    let kernels = if KERNELS.is_empty() { "none".to_string() } else { KERNELS.join(",") };
    format!("dspyo3-kernels {VERSION} (kernels: {kernels})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_version_and_kernels() {
        let info = build_info();
        assert!(info.contains(VERSION));
        assert!(info.contains("kernels:"));
    }
}
