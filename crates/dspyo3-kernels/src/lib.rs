//! Pure-Rust kernels behind dspyo3.
//!
//! This crate holds the algorithms with no Python dependency, so each kernel is tested with plain
//! `cargo test`. The `dspyo3-native` crate is a thin PyO3 binding over it.
//!
//! * [`tokenizer`]: Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming.
//! * [`bm25`]: a BM25 index (Lucene, Robertson, ATIRE, BM25L, BM25+) with updates, filtered and batch search,
//!   and a versioned on-disk format written atomically ([`atomic`]); [`bm25_mmap`] searches a saved index in place.
//! * [`fusion`]: reciprocal-rank and normalised weighted-score fusion.
//! * [`lru`]: an LRU cache with TTL and byte accounting.
//! * [`ratelimit`]: a GCRA rate limiter with checked fixed-point time.
//! * [`adapter`]: the text rules of DSPy's chat and JSON adapters (escaping, list blobs, completion sections).
//! * [`fork`]: fork detection by generation (one atomic load, no `getpid` call).
//! * [`unescape`]: HTML character references decoded as Python's `html.unescape` does, in one linear pass.
//! * `transport` (feature `transport`): an LM HTTP client (OpenAI chat completions and Anthropic messages; HTTP/1.1, HTTP/2, TLS, SSE streaming, retries) on tokio + hyper.
//! * `otlp` (feature `otlp`): OTLP/HTTP protobuf span export from a background thread.

#![deny(missing_docs)]

pub mod adapter;
pub mod atomic;
pub mod bm25;
pub mod bm25_mmap;
pub mod error;
pub mod eventlog;
pub mod fork;
pub mod fusion;
pub mod lru;
pub mod ratelimit;
pub mod tokenizer;
pub mod unescape;
#[cfg(feature = "transport")]
pub mod transport;
#[cfg(feature = "otlp")]
pub mod otlp;

pub use error::{KernelError, Result};

/// Version of this crate, as written in its `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Names of the kernels compiled into this build, in the order they were added.
pub const KERNELS: &[&str] = &["tokenizer", "bm25", "fusion", "lru", "rate_limiter", "unescape", "adapter"];

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
        assert!(info.contains("bm25"));
    }
}
