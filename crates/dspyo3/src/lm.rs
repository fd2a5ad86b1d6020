//! Language models (`dspy.LM`) configured from Rust, and the process-wide default.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, Result};
use crate::runtime::runtime;

/// A `dspy.LM` living in the embedded interpreter. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Lm {
    pub(crate) inner: std::sync::Arc<Py<PyAny>>,
    model: String,
}

impl fmt::Debug for Lm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lm").field("model", &self.model).finish_non_exhaustive()
    }
}

/// Builder for [`Lm`]; see [`Lm::new`]. Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct LmBuilder {
    model: String,
    kwargs: Map<String, Value>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    native: bool,
    /// The first [`kwarg`](LmBuilder::kwarg) whose value did not serialize; [`build`](LmBuilder::build) reports it.
    kwarg_error: Option<(String, std::sync::Arc<serde_json::Error>)>,
}

impl fmt::Debug for LmBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LmBuilder")
            .field("model", &self.model)
            .field("kwargs", &masked_kwargs(&self.kwargs))
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("api_key_env", &self.api_key_env)
            .field("native", &self.native)
            .field("kwarg_error", &self.kwarg_error.as_ref().map(|(key, _)| key))
            .finish()
    }
}

/// `kwargs` with the values of secret-looking keys (`api_key`, `*token*`, `*secret*`, headers, ...) replaced.
fn masked_kwargs(kwargs: &Map<String, Value>) -> Map<String, Value> {
    kwargs
        .iter()
        .map(|(key, value)| {
            let k = key.to_ascii_lowercase();
            let secret = ["key", "token", "secret", "password", "authorization", "header", "credential"]
                .iter()
                .any(|needle| k.contains(needle));
            (key.clone(), if secret { Value::String("***".into()) } else { value.clone() })
        })
        .collect()
}

impl Lm {
    /// Start building a `dspy.LM` for a LiteLLM-style model name (`"openai/gpt-4o-mini"`,
    /// `"anthropic/claude-sonnet-4-5"`, `"ollama_chat/llama3.2"`, ...).
    ///
    /// ```no_run
    /// let lm = dspyo3::Lm::new("openai/gpt-4o-mini").api_key_env("OPENAI_API_KEY").temperature(0.0).build()?;
    /// dspyo3::configure(&lm)?;
    /// # Ok::<(), dspyo3::Error>(())
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new(model: impl Into<String>) -> LmBuilder {
        LmBuilder {
            model: model.into(),
            kwargs: Map::new(),
            api_key: None,
            api_key_env: None,
            native: false,
            kwarg_error: None,
        }
    }

    /// The LM of a dspyo3 profile (`dspyo3.toml`, the user config or `DSPYO3_LM*` variables; `None` picks the
    /// default profile), built by `dspyo3_core.config.build_lm` exactly as the `dspyo3` CLI builds it.
    pub fn profile(name: Option<&str>) -> Result<Lm> {
        let rt = runtime()?;
        Python::attach(|py| {
            let lm = rt.bridge.bind(py).call_method1("profile_lm", (name,)).map_err(|e| Error::from_py_in(py, e))?;
            let model: String = lm.getattr("model").and_then(|m| m.extract()).unwrap_or_default();
            Ok(Lm { inner: std::sync::Arc::new(lm.unbind()), model })
        })
    }

    /// Wrap an LM object built in Python (any `dspy.BaseLM`: a custom LM, `dspy.utils.DummyLM`, ...).
    pub fn from_py(lm: Py<PyAny>) -> Lm {
        let model = Python::attach(|py| lm.bind(py).getattr("model").and_then(|m| m.extract()).unwrap_or_default());
        Lm { inner: std::sync::Arc::new(lm), model }
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The underlying Python object (`dspy.LM`).
    pub fn as_py(&self) -> &Py<PyAny> {
        &self.inner
    }

    /// Number of calls in the LM's history (`len(lm.history)`); DSPy records each call there.
    pub fn history_len(&self) -> Result<usize> {
        Python::attach(|py| self.inner.bind(py).getattr("history").and_then(|h| h.len())).map_err(Error::from_py)
    }
}

impl LmBuilder {
    /// Base URL of an OpenAI-compatible server (vLLM, Ollama, the loopback test server, ...).
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.kwargs.insert("api_base".into(), Value::String(url.into()));
        self
    }

    /// Read the API key from this environment variable when [`build`](Self::build) runs (never logged).
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// Use this API key (prefer [`api_key_env`](Self::api_key_env); the key is never logged).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sampling temperature.
    pub fn temperature(self, t: f64) -> Self {
        self.kwarg("temperature", t)
    }

    /// Maximum output tokens.
    pub fn max_tokens(self, n: u32) -> Self {
        self.kwarg("max_tokens", n)
    }

    /// DSPy's request cache on (default) or off.
    pub fn cache(self, on: bool) -> Self {
        self.kwarg("cache", on)
    }

    /// Retries DSPy makes on retryable errors.
    pub fn num_retries(self, n: u32) -> Self {
        self.kwarg("num_retries", n)
    }

    /// Any other `dspy.LM(...)` keyword argument (`"engine"`, `"timeout"`, `"model_type"`, ...), as JSON.
    ///
    /// A value that does not serialize to JSON (a map with non-string keys, a failing `Serialize` impl) makes
    /// [`build`](Self::build) return [`ConfigError::Kwarg`] naming the key; it is never sent as `null`.
    pub fn kwarg(mut self, key: impl Into<String>, value: impl serde::Serialize) -> Self {
        let key = key.into();
        match serde_json::to_value(value) {
            Ok(value) => {
                self.kwargs.insert(key, value);
            }
            Err(err) => {
                self.kwargs.remove(&key);
                self.kwarg_error.get_or_insert((key, std::sync::Arc::new(err)));
            }
        }
        self
    }

    /// Send requests with the native transport: the LM is `dspyo3_core.native_lm.NativeLM` (the venv needs
    /// `dspyo3-core` and `dspyo3-native`), whose HTTP runs in Rust on tokio, without LiteLLM, and holds no GIL while
    /// in flight; DSPy's adapters, cache, history and errors are unchanged, and `num_retries` retries run in Rust.
    /// OpenAI-compatible chat completions or Anthropic's messages API over `http://` or `https://` (HTTP/1.1 or
    /// HTTP/2 by ALPN), streaming and tool calls included. Needs [`api_base`](Self::api_base); `build` returns
    /// [`ConfigError::NativeTransport`] when the transport refuses its options (a bad URL, a TLS set-up).
    pub fn native(mut self) -> Self {
        self.native = true;
        self
    }

    /// Create the `dspy.LM`.
    pub fn build(self) -> Result<Lm> {
        if let Some((key, source)) = self.kwarg_error {
            return Err(ConfigError::Kwarg { key, source }.into());
        }
        let key = match (&self.api_key, &self.api_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| ConfigError::MissingApiKeyEnv {
                var: var.clone(),
                model: self.model.clone(),
            })?),
            (None, None) => None,
        };
        let rt = runtime()?;
        let kwargs = serde_json::to_string(&self.kwargs).expect("JSON map serializes");
        if self.native {
            // checked here, before Python: NativeLM would fall back to the provider's public endpoint
            if !self.kwargs.get("api_base").is_some_and(Value::is_string) {
                return Err(ConfigError::NativeNeedsApiBase { model: self.model.clone() }.into());
            }
            let seconds = self.kwargs.get("timeout").and_then(Value::as_f64).unwrap_or(600.0);
            let in_range = std::time::Duration::try_from_secs_f64(seconds)
                .is_ok_and(|t| !t.is_zero() && t.as_secs() <= 7 * 24 * 3600);
            if !in_range {
                return Err(ConfigError::Timeout { seconds }.into());
            }
            // a key given as .kwarg("api_key", ...) counts too: it must not be dropped silently
            let key = key.or_else(|| self.kwargs.get("api_key").and_then(Value::as_str).map(str::to_string));
            return Python::attach(|py| {
                let lm = rt.bridge.bind(py).call_method1("make_native_lm", (&self.model, kwargs, key)).map_err(|e| {
                    // the transport refusing its options (a bad URL, a TLS set-up) is a configuration error
                    let refused = e.is_instance_of::<pyo3::exceptions::PyValueError>(py);
                    match Error::from_py_in(py, e) {
                        Error::Python { message, .. } if refused => ConfigError::NativeTransport { message }.into(),
                        other => other,
                    }
                })?;
                Ok(Lm { inner: std::sync::Arc::new(lm.unbind()), model: self.model })
            });
        }
        Python::attach(|py| {
            let lm = rt
                .bridge
                .bind(py)
                .call_method1("make_lm", (&self.model, kwargs, key))
                .map_err(|e| Error::from_py_in(py, e))?;
            Ok(Lm { inner: std::sync::Arc::new(lm.unbind()), model: self.model })
        })
    }
}

/// How DSPy formats prompts and parses answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapter {
    /// `dspy.ChatAdapter` (`[[ ## field ## ]]` sections), DSPy's default.
    #[default]
    Chat,
    /// `dspy.JSONAdapter`.
    Json,
    /// `dspy.XMLAdapter`.
    Xml,
}

impl Adapter {
    fn name(self) -> &'static str {
        match self {
            Adapter::Chat => "chat",
            Adapter::Json => "json",
            Adapter::Xml => "xml",
        }
    }
}

pub(crate) fn settings_dict(lm: &Lm, adapter: Option<Adapter>) -> Result<Py<PyDict>> {
    let rt = runtime()?;
    Python::attach(|py| -> PyResult<Py<PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("lm", lm.inner.bind(py))?;
        if let Some(adapter) = adapter {
            dict.set_item("adapter", rt.bridge.bind(py).call_method1("adapter", (adapter.name(),))?)?;
        }
        Ok(dict.unbind())
    })
    .map_err(Error::from_py)
}

/// Make `lm` the default of every call that does not set its own (the Rust counterpart of `dspy.configure`).
///
/// Each call runs under `dspy.context(lm=...)`, so this may be called again from any thread, and modules may
/// be called from any thread or tokio task.
pub fn configure(lm: &Lm) -> Result<()> {
    configure_with(lm, None)
}

/// [`configure`] with an adapter.
pub fn configure_with(lm: &Lm, adapter: Option<Adapter>) -> Result<()> {
    let settings = settings_dict(lm, adapter)?;
    *runtime()?.settings.write() = Some(settings);
    Ok(())
}
