//! One error type for everything a DSPy call from Rust can raise.

use std::time::Duration;

use pyo3::prelude::*;

/// Errors of the dspyo3 crate. LM failures keep DSPy's classification (see DSPy's `dspy.utils.exceptions`);
/// anything else from Python arrives as [`Error::Python`] with its traceback.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The provider answered 429; `retry_after` is its suggested delay when it sent one.
    #[error("rate limited by the LM provider{}: {message}", fmt_retry(retry_after))]
    RateLimited {
        /// Provider message.
        message: String,
        /// `Retry-After` as DSPy read it.
        retry_after: Option<Duration>,
    },
    /// The LM request timed out.
    #[error("LM request timed out: {message}")]
    Timeout {
        /// Provider or client message.
        message: String,
    },
    /// The provider rejected the credentials (check the key / `api_key_env`).
    #[error("LM provider rejected the credentials: {message}")]
    Auth {
        /// Provider message.
        message: String,
    },
    /// The prompt does not fit the model's context window.
    #[error("prompt exceeds the model's context window: {message}")]
    ContextWindowExceeded {
        /// Provider message.
        message: String,
    },
    /// The adapter could not parse the LM's answer into the signature's outputs; `raw` is what the LM said.
    #[error("could not parse the LM answer into the signature outputs: {message}")]
    Parse {
        /// DSPy's explanation.
        message: String,
        /// The raw LM text.
        raw: String,
    },
    /// Any other LM error (server error, bad request, billing, transport).
    #[error("LM error ({type_name}): {message}")]
    Lm {
        /// Python class of the error.
        type_name: String,
        /// Message.
        message: String,
        /// Whether DSPy considers it retryable.
        retryable: bool,
    },
    /// A Python exception that is not an LM error (a bug in a module, a bad input type, ...).
    #[error("Python raised {type_name}: {message}")]
    Python {
        /// Python class of the exception.
        type_name: String,
        /// `str(exception)`.
        message: String,
        /// Formatted traceback.
        traceback: String,
    },
    /// A value did not match the Rust type it was read into (or could not be serialized).
    #[error("{what} does not match its Rust type: {message} (JSON: {json})")]
    Conversion {
        /// What was being converted ("program outputs", "tool arguments", ...).
        what: &'static str,
        /// serde's message.
        message: String,
        /// The JSON text (truncated).
        json: String,
    },
    /// The embedded interpreter could not be set up (no venv, no dspy, version mismatch).
    #[error("dspyo3 runtime: {0}")]
    Runtime(String),
    /// Bad configuration (missing key variable, no LM configured, bad path).
    #[error("dspyo3 configuration: {0}")]
    Config(String),
    /// The call was cancelled before it finished.
    #[error("the DSPy call was cancelled")]
    Cancelled,
}

fn fmt_retry(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {:.3}s)", d.as_secs_f64()),
        None => String::new(),
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same call may succeed (rate limits, timeouts, retryable provider errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Timeout { .. } => true,
            Error::Lm { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The provider's suggested delay before retrying, when there is one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Classify a Python exception (the bridge walks `__cause__` chains to find the LM error).
    pub fn from_py(err: PyErr) -> Error {
        Python::attach(|py| Self::from_py_in(py, err))
    }

    pub(crate) fn from_py_in(py: Python<'_>, err: PyErr) -> Error {
        let value = err.value(py);
        let described = crate::runtime::bridge_in(py).and_then(|bridge| {
            let info = bridge
                .call_method1("describe_error", (value, err.traceback(py)))
                .map_err(|e| e.to_string())?;
            let get = |key: &str| -> Option<Bound<'_, PyAny>> {
                info.get_item(key).ok().filter(|v| !v.is_none())
            };
            let text = |key: &str| get(key).and_then(|v| v.extract::<String>().ok()).unwrap_or_default();
            let kind = text("kind");
            let message = text("message");
            Ok(match kind.as_str() {
                "rate_limit" => Error::RateLimited {
                    message,
                    retry_after: get("retry_after")
                        .and_then(|v| v.extract::<f64>().ok())
                        .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                },
                "timeout" => Error::Timeout { message },
                "auth" => Error::Auth { message },
                "context_window" => Error::ContextWindowExceeded { message },
                "parse" => Error::Parse { message, raw: text("raw") },
                "lm" => Error::Lm {
                    type_name: text("type"),
                    message,
                    retryable: get("retryable").and_then(|v| v.extract::<bool>().ok()).unwrap_or(false),
                },
                _ if value.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>() => Error::Cancelled,
                _ => Error::Python { type_name: text("type"), message, traceback: text("traceback") },
            })
        });
        described.unwrap_or_else(|_| Error::Python {
            type_name: value.get_type().name().map(|n| n.to_string()).unwrap_or_default(),
            message: value.to_string(),
            traceback: err.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default(),
        })
    }

    pub(crate) fn conversion(what: &'static str, err: &serde_json::Error, json: &[u8]) -> Error {
        let mut text = String::from_utf8_lossy(json).into_owned();
        if text.len() > 2000 {
            let cut = (0..=2000).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        Error::Conversion { what, message: err.to_string(), json: text }
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::from_py(err)
    }
}
