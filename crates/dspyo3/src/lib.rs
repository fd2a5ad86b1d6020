//! # dspyo3: drive DSPy programs from Rust
//!
//! Typed DSPy signatures in Rust (`#[derive(Signature)]`), the DSPy modules you know (`Predict`,
//! `ChainOfThought`, `ReAct` with Rust functions as tools), and [`Program::load`] for programs built and
//! **optimized in Python** (`program.save("x.json")`: demos and instructions included), called from Rust:
//!
//! * sync [`Typed::call`] from any thread (the GIL is released while the LM request is in flight),
//! * async [`Typed::acall`] awaited from tokio (DSPy's `acall` coroutine on one asyncio loop thread), so thousands
//!   of concurrent calls need no thread each; dropping the future cancels the Python task and its LM request,
//! * [`Typed::stream`]: output tokens as a `futures::Stream`, then the typed prediction,
//! * one [`Error`] enum with DSPy's LM error classes (rate limit with retry-after, timeout, auth, context window,
//!   parse failure with the raw LM text, Python exceptions with their traceback).
//!
//! DSPy itself runs in an embedded CPython, found through `DSPYO3_VENV` / `VIRTUAL_ENV` (see the README for the
//! build and run environment variables).
//!
//! ```no_run
//! use dspyo3::{ChainOfThought, DspyType, Lm, Signature};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DspyType)]
//! #[serde(rename_all = "lowercase")]
//! enum Sentiment { Positive, Negative, Neutral }
//!
//! /// Classify the sentiment of a review.
//! #[derive(Signature)]
//! struct Classify {
//!     #[input]
//!     review: String,
//!     #[output]
//!     sentiment: Sentiment,
//!     /// between 0 and 1
//!     #[output]
//!     confidence: f64,
//! }
//!
//! # async fn run() -> dspyo3::Result<()> {
//! dspyo3::configure(&Lm::new("openai/gpt-4o-mini").api_key_env("OPENAI_API_KEY").build()?)?;
//! let classify = ChainOfThought::<Classify>::new()?;
//! let out = classify.acall(&ClassifyInput { review: "Great value.".into() }).await?;
//! println!("{:?} {}", out.sentiment, out.confidence);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod lm;
mod module;
mod runtime;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
mod tool;
mod types;

pub use dspyo3_derive::{DspyType, Signature};
pub use error::{ConfigError, Error, PyException, Result, RuntimeError};
/// The `pyo3` this crate is built with: its types appear in the public API ([`Lm::from_py`], [`Lm::as_py`],
/// [`Module::program`], [`PyException::py_err`]), so use them through this re-export to
/// get matching versions.
pub use pyo3;
pub use lm::{configure, configure_with, Adapter, Lm, LmBuilder};
pub use module::{CallOptions, ChainOfThought, Module, Prediction, Predict, Program, ReAct, Typed};
pub use runtime::{add_python_path, init, RuntimeInfo};
pub use stream::{PredictionStream, StreamEvent};
pub use tool::Tool;
pub use types::{DspyType, FieldSpec, ModelField, Signature, SignatureSpec, TypeSpec};

#[doc(hidden)]
pub mod __private {
    pub use crate::types::TypeGuard;
    pub use serde;
}

/// The README's example, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
