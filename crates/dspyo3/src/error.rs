//! One error type for everything a DSPy call from Rust can raise.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

/// Errors of the dspyo3 crate. LM failures keep DSPy's classification (see DSPy's `dspy.utils.exceptions`);
/// anything else from Python arrives as [`Error::Python`] with its traceback.
///
/// Every variant made from a Python exception keeps it as its [`source`](std::error::Error::source) (a
/// [`PyException`]); LM errors carry the HTTP status the provider answered with, when there was one.
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
        /// The HTTP status (429 when the provider sent one).
        status: Option<u16>,
        /// The Python exception.
        #[source]
        source: Option<PyException>,
    },
    /// The LM request timed out.
    #[error("LM request timed out: {message}")]
    Timeout {
        /// Provider or client message.
        message: String,
        /// The HTTP status (408 / 504) when a server answered, `None` for a client-side timeout.
        status: Option<u16>,
        /// The Python exception.
        #[source]
        source: Option<PyException>,
    },
    /// The provider rejected the credentials (check the key / `api_key_env`).
    #[error("LM provider rejected the credentials: {message}")]
    Auth {
        /// Provider message.
        message: String,
        /// The HTTP status (401 / 403).
        status: Option<u16>,
        /// The Python exception.
        #[source]
        source: Option<PyException>,
    },
    /// The prompt does not fit the model's context window.
    #[error("prompt exceeds the model's context window: {message}")]
    ContextWindowExceeded {
        /// Provider message.
        message: String,
        /// The HTTP status (usually 400).
        status: Option<u16>,
        /// The Python exception.
        #[source]
        source: Option<PyException>,
    },
    /// The adapter could not parse the LM's answer into the signature's outputs; `raw` is what the LM said.
    #[error("could not parse the LM answer into the signature outputs: {message}")]
    Parse {
        /// DSPy's explanation.
        message: String,
        /// The raw LM text.
        raw: String,
        /// The Python exception (DSPy's `AdapterParseError`).
        #[source]
        source: Option<PyException>,
    },
    /// Any other LM error (server error, bad request, billing, transport).
    #[error("LM error ({type_name}{}): {message}", fmt_status(status))]
    Lm {
        /// Python class of the error.
        type_name: String,
        /// Message.
        message: String,
        /// Whether DSPy considers it retryable.
        retryable: bool,
        /// The HTTP status the provider answered with (500, 502, 400, ...); `None` when no response came (a
        /// connection error).
        status: Option<u16>,
        /// The Python exception.
        #[source]
        source: Option<PyException>,
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
        /// The Python exception.
        #[source]
        source: Option<PyException>,
    },
    /// A value did not match the Rust type it was read into (or could not be serialized).
    #[error("{what} does not match its Rust type: {source} (JSON: {json})")]
    Conversion {
        /// What was being converted ("program outputs", "program inputs", ...).
        what: &'static str,
        /// The JSON text (truncated; empty when serializing failed).
        json: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The embedded interpreter could not be set up (no venv, no dspy, version mismatch), or broke.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Bad configuration (missing key variable, no LM configured, bad path or option).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The call was cancelled before it finished.
    #[error("the DSPy call was cancelled")]
    Cancelled,
}

/// Why the embedded interpreter could not be set up or used ([`Error::Runtime`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// `DSPYO3_VENV` / `VIRTUAL_ENV` names a directory without a readable `pyvenv.cfg`.
    #[error(
        "dspyo3 runtime: {} is not a virtual environment ({}: {source}); point DSPYO3_VENV or VIRTUAL_ENV at a \
         venv created for the Python dspyo3 was built against",
        venv.display(),
        cfg.display()
    )]
    NotAVenv {
        /// The directory.
        venv: PathBuf,
        /// The `pyvenv.cfg` looked for.
        cfg: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The virtual environment's directory cannot be resolved.
    #[error("dspyo3 runtime: virtual environment {}: {source}", venv.display())]
    VenvPath {
        /// The directory.
        venv: PathBuf,
        /// Why it could not be resolved.
        source: std::io::Error,
    },
    /// The venv is for another Python minor version than the one dspyo3 was built against.
    #[error(
        "dspyo3 runtime: the venv {} is Python {venv_version} but dspyo3 was built against Python {embedded}; \
         rebuild with PYO3_PYTHON={}/bin/python",
        venv.display(),
        venv.display()
    )]
    PythonVersionMismatch {
        /// The venv.
        venv: PathBuf,
        /// The venv's Python version (`pyvenv.cfg`).
        venv_version: String,
        /// The embedded interpreter's `major.minor`.
        embedded: String,
    },
    /// The venv has no `lib/pythonX.Y/site-packages`.
    #[error("dspyo3 runtime: {} has no {}", venv.display(), site.display())]
    NoSitePackages {
        /// The venv.
        venv: PathBuf,
        /// The directory looked for.
        site: PathBuf,
    },
    /// Putting the venv's packages on `sys.path` failed.
    #[error("dspyo3 runtime: activating venv {}: {source}", venv.display())]
    ActivateVenv {
        /// The venv.
        venv: PathBuf,
        /// The Python exception.
        source: PyException,
    },
    /// DSPy (or the bridge module) cannot be imported; `hint` says where it must be installed.
    #[error("dspyo3 runtime: cannot import DSPy into the embedded interpreter ({source}); {hint}")]
    ImportDspy {
        /// What to do about it.
        hint: String,
        /// The Python exception.
        source: PyException,
    },
    /// The interpreter could not be set up (the `atexit` hook, `sys` lookups).
    #[error("dspyo3 runtime: setting up the interpreter: {source}")]
    Setup {
        /// The Python exception.
        source: PyException,
    },
    /// The thread running the asyncio loop could not be started.
    #[error("dspyo3 runtime: cannot start the asyncio thread: {source}")]
    AsyncioThread {
        /// The OS error.
        source: std::io::Error,
    },
    /// The asyncio loop could not be created, or its thread exited before the loop ran.
    #[error("dspyo3 runtime: cannot create the asyncio loop{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_else(|| " (its thread exited)".into()))]
    EventLoop {
        /// The Python exception, when one was raised.
        source: Option<PyException>,
    },
    /// A stream ended without the final prediction (the program produced none).
    #[error("dspyo3 runtime: the stream ended without a prediction (the program produced none)")]
    NoPrediction,
    /// The loopback test server (`testing::LoopbackLm`) failed or refused a command.
    #[error("dspyo3 runtime: the loopback LM server {message}")]
    Loopback {
        /// What happened.
        message: String,
    },
}

/// A configuration mistake ([`Error::Config`]): each variant says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No LM for the call: neither [`configure`](crate::configure) nor `.with_lm(..)`.
    #[error(
        "dspyo3 configuration: no LM configured: call dspyo3::configure(&lm) once, or give the module one with \
         .with_lm(&lm)"
    )]
    NoLm,
    /// The environment variable holding the API key (`api_key_env`) is not set.
    #[error("dspyo3 configuration: environment variable {var} (the API key for {model}) is not set")]
    MissingApiKeyEnv {
        /// The variable.
        var: String,
        /// The model it was for.
        model: String,
    },
    /// A [`kwarg`](crate::LmBuilder::kwarg) value could not be serialized to JSON.
    #[error("dspyo3 configuration: LM option {key:?} cannot be serialized: {source}")]
    Kwarg {
        /// The option name.
        key: String,
        /// serde's error.
        source: std::sync::Arc<serde_json::Error>,
    },
    /// The native transport was asked for without an `api_base`.
    #[error("dspyo3 configuration: the native transport needs .api_base(\"http://host:port/v1\") for {model}")]
    NativeNeedsApiBase {
        /// The model.
        model: String,
    },
    /// An LM timeout outside (0, 7 days].
    #[error("dspyo3 configuration: timeout must be between 0 and 7 days in seconds, got {seconds}")]
    Timeout {
        /// The value given.
        seconds: f64,
    },
    /// The native transport refused its options (a bad URL, TLS set-up).
    #[error("dspyo3 configuration: native transport: {message}")]
    NativeTransport {
        /// The transport's explanation.
        message: String,
    },
    /// A path is not valid UTF-8 (Python needs a `str`).
    #[error("dspyo3 configuration: path {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// A directory given to [`add_python_path`](crate::add_python_path) cannot be resolved.
    #[error("dspyo3 configuration: python path {}: {source}", path.display())]
    PythonPath {
        /// The directory.
        path: PathBuf,
        /// Why it could not be resolved.
        source: std::io::Error,
    },
    /// `ReAct` was given no tools.
    #[error("dspyo3 configuration: ReAct needs at least one tool")]
    NoTools,
    /// A tool's argument type is not a struct deriving `DspyType`.
    #[error("dspyo3 configuration: tool {tool}: its arguments must be a struct deriving DspyType (one field per argument)")]
    ToolArguments {
        /// The tool.
        tool: String,
    },
    /// The loopback test server (`testing::LoopbackLm`) could not be started.
    #[error("dspyo3 configuration: the loopback LM server did not start with {}: {message}", python.display())]
    Loopback {
        /// The Python it was run with.
        python: PathBuf,
        /// What happened.
        message: String,
    },
}

/// A Python exception kept as the source of an [`Error`].
///
/// Its `Display` and `Debug` show the exception's class and message with known secrets (the API keys of LMs built
/// by dspyo3) masked, as the [`Error`] does; [`py_err`](Self::py_err) gives the exception itself.
pub struct PyException {
    err: Box<PyErr>,
    shown: String,
}

impl PyException {
    fn new(err: PyErr, type_name: &str, message: &str) -> PyException {
        PyException { err: Box::new(err), shown: format!("{type_name}: {message}") }
    }

    /// Keep `err` (raised while setting the interpreter up, before any LM key exists: nothing to mask).
    pub(crate) fn of(py: Python<'_>, err: PyErr) -> PyException {
        let value = err.value(py);
        let type_name = value.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        let message = value.to_string();
        PyException::new(err, &type_name, &message)
    }

    /// The Python exception (`value(py)` is the exception object). Unlike this wrapper's `Display`, printing it
    /// shows the exception's text unmasked.
    pub fn py_err(&self) -> &PyErr {
        &self.err
    }

    /// The Python exception, to re-raise it in Python.
    pub fn into_py_err(self) -> PyErr {
        *self.err
    }
}

impl std::fmt::Display for PyException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PyException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PyException").field(&self.shown).finish()
    }
}

impl std::error::Error for PyException {}

fn fmt_status(status: &Option<u16>) -> String {
    status.map(|s| format!(", HTTP {s}")).unwrap_or_default()
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

    /// The HTTP status of an LM error, when the provider answered with one (429, 401, 500, ...).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::RateLimited { status, .. }
            | Error::Timeout { status, .. }
            | Error::Auth { status, .. }
            | Error::ContextWindowExceeded { status, .. }
            | Error::Lm { status, .. } => *status,
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
            let status = get("status").and_then(|v| v.extract::<u16>().ok());
            let source = Some(PyException::new(err.clone_ref(py), &text("type"), &message));
            Ok(match kind.as_str() {
                "rate_limit" => Error::RateLimited {
                    message,
                    retry_after: get("retry_after")
                        .and_then(|v| v.extract::<f64>().ok())
                        .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                    status,
                    source,
                },
                "timeout" => Error::Timeout { message, status, source },
                "auth" => Error::Auth { message, status, source },
                "context_window" => Error::ContextWindowExceeded { message, status, source },
                "parse" => Error::Parse { message, raw: text("raw"), source },
                "lm" => Error::Lm {
                    type_name: text("type"),
                    message,
                    retryable: get("retryable").and_then(|v| v.extract::<bool>().ok()).unwrap_or(false),
                    status,
                    source,
                },
                _ if value.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>() => Error::Cancelled,
                _ => Error::Python { type_name: text("type"), message, traceback: text("traceback"), source },
            })
        });
        described.unwrap_or_else(|_| {
            let type_name = value.get_type().name().map(|n| n.to_string()).unwrap_or_default();
            let message = value.to_string();
            Error::Python {
                traceback: err.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default(),
                source: Some(PyException::new(err.clone_ref(py), &type_name, &message)),
                type_name,
                message,
            }
        })
    }

    pub(crate) fn conversion(what: &'static str, err: serde_json::Error, json: &[u8]) -> Error {
        let mut text = String::from_utf8_lossy(json).into_owned();
        if text.len() > 2000 {
            let cut = (0..=2000).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        Error::Conversion { what, json: text, source: err }
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::from_py(err)
    }
}
