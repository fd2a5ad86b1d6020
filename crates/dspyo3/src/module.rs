//! DSPy modules driven from Rust: typed `Predict` / `ChainOfThought` / `ReAct`, and `Program` for programs
//! built and optimized in Python.

use std::marker::PhantomData;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyTuple};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, Result};
use crate::lm::{settings_dict, Adapter, Lm};
use crate::runtime::{runtime, settings_for};
use crate::stream::PredictionStream;
use crate::tool::Tool;
use crate::types::Signature;

/// Per-call options for [`Module::call_json_with`], [`Module::acall_json_with`] and [`Module::stream_json_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) naming the caller's span: the
    /// call runs under it as a remote parent (`dspyo3_core.spans.remote_parent`), so the spans a tracer installed
    /// in Python records, and the `traceparent` NativeLM sends to the LM, belong to the caller's trace. An absent
    /// or malformed value changes nothing (it is never an error).
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with [`CallOptions::traceparent`]. Carried for propagators; dspyo3's spans
    /// do not use vendor state yet, so it is not sent on.
    pub tracestate: Option<String>,
}

impl CallOptions {
    /// Options whose call runs under the span `traceparent` names.
    pub fn traced(traceparent: impl Into<String>) -> CallOptions {
        CallOptions { traceparent: Some(traceparent.into()), tracestate: None }
    }

    /// The options `call` / `acall` / `stream` use when none are given: the ambient trace context when the
    /// `opentelemetry` feature (`opentelemetry::Context::current()`) or the `tracing-opentelemetry` feature (the
    /// current `tracing` span's OpenTelemetry context) is on and there is a valid span; else none. Read on the
    /// calling thread (for async calls, when the future is first polled, inside the caller's span).
    pub fn ambient() -> CallOptions {
        #[cfg(feature = "opentelemetry")]
        {
            CallOptions { traceparent: ambient_traceparent(), tracestate: None }
        }
        #[cfg(not(feature = "opentelemetry"))]
        {
            CallOptions::default()
        }
    }
}

/// The W3C `traceparent` of the current OpenTelemetry span (of the current `tracing` span with
/// `tracing-opentelemetry`), or `None` outside a valid one.
#[cfg(feature = "opentelemetry")]
fn ambient_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;

    #[cfg(feature = "tracing-opentelemetry")]
    let context = {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let from_tracing = tracing::Span::current().context();
        if from_tracing.span().span_context().is_valid() {
            from_tracing
        } else {
            opentelemetry::Context::current()
        }
    };
    #[cfg(not(feature = "tracing-opentelemetry"))]
    let context = opentelemetry::Context::current();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            u128::from_be_bytes(ids.trace_id().to_bytes()),
            u64::from_be_bytes(ids.span_id().to_bytes()),
            ids.trace_flags().to_u8()
        )
    })
}

/// A DSPy module with JSON in and out: what every typed wrapper is built on. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Module {
    runner: Arc<Py<PyAny>>,
    settings: Option<Arc<Py<PyDict>>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("own_lm", &self.settings.is_some()).finish_non_exhaustive()
    }
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ConfigError::NonUtf8Path { path: path.to_path_buf() }.into())
}

impl Module {
    fn from_runner(runner: Bound<'_, PyAny>) -> Module {
        Module { runner: Arc::new(runner.unbind()), settings: None }
    }

    pub(crate) fn build<S: Signature>(kind: &str, options: Value, tools: &[Tool]) -> Result<Module> {
        let rt = runtime()?;
        let spec = serde_json::to_string(&S::spec()).expect("signature spec serializes");
        let options = options.to_string();
        Python::attach(|py| {
            let tools = tools.iter().map(|t| t.to_python(py)).collect::<Result<Vec<_>>>()?;
            let tools = PyList::new(py, tools).map_err(|e| Error::from_py_in(py, e))?;
            let runner = rt
                .bridge
                .bind(py)
                .call_method1("build", (kind, spec, options, tools))
                .map_err(|e| Error::from_py_in(py, e))?;
            Ok(Module::from_runner(runner))
        })
    }

    /// Use this LM (and adapter) for this module instead of the configured default.
    pub fn with_lm(mut self, lm: &Lm, adapter: Option<Adapter>) -> Result<Module> {
        self.settings = Some(Arc::new(settings_dict(lm, adapter)?));
        Ok(self)
    }

    /// Load a state saved in Python with `program.save("x.json")` (demos, instructions) into this module.
    pub fn load_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path_str(path.as_ref())?;
        let rt = runtime()?;
        Python::attach(|py| {
            rt.bridge
                .bind(py)
                .call_method1("load_state", (self.runner.bind(py), path))
                .map(drop)
                .map_err(|e| Error::from_py_in(py, e))
        })
    }

    /// Save the module's state as JSON (`program.save(path)`), loadable from Python or from Rust.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path_str(path.as_ref())?;
        Python::attach(|py| {
            self.runner
                .bind(py)
                .getattr("program")
                .and_then(|p| p.call_method1("save", (path,)))
                .map(drop)
                .map_err(|e| Error::from_py_in(py, e))
        })
    }

    /// The Python `dspy.Module` object.
    pub fn program(&self) -> Result<Py<PyAny>> {
        Python::attach(|py| self.runner.bind(py).getattr("program").map(Bound::unbind)).map_err(Error::from_py)
    }

    /// Call with a JSON object of inputs; returns the prediction's fields as JSON bytes.
    ///
    /// Runs on the calling thread. The GIL is held only while Python code runs: DSPy's HTTP request to the LM
    /// releases it, so other threads (Rust or Python) proceed while the request is in flight. With the
    /// `opentelemetry` / `tracing-opentelemetry` features the call runs under the ambient span
    /// ([`CallOptions::ambient`]).
    pub fn call_json(&self, inputs: &str) -> Result<Vec<u8>> {
        self.call_json_with(inputs, &CallOptions::ambient())
    }

    /// [`Module::call_json`] with per-call [`CallOptions`] (a trace parent).
    pub fn call_json_with(&self, inputs: &str, options: &CallOptions) -> Result<Vec<u8>> {
        runtime()?;
        crate::runtime::keep_thread_state();
        Python::attach(|py| {
            let settings = settings_for(py, self.settings.as_deref())?;
            let out = self
                .runner
                .bind(py)
                .call_method1(pyo3::intern!(py, "call"), (settings, inputs, options.traceparent.as_deref()))
                .map_err(|e| Error::from_py_in(py, e))?;
            bytes_of(py, out)
        })
    }

    /// Async call: DSPy's `acall` coroutine runs on the runtime's asyncio loop and is awaited from any async
    /// runtime (tokio included) without blocking a thread.
    ///
    /// Dropping the returned future before it finishes (a `tokio::time::timeout` that elapses, a `select!` that
    /// picks another branch, an aborted task) cancels the Python task, and with it the in-flight LM request.
    pub async fn acall_json(&self, inputs: &str) -> Result<Vec<u8>> {
        self.acall_json_with(inputs, &CallOptions::ambient()).await
    }

    /// [`Module::acall_json`] with per-call [`CallOptions`] (a trace parent). The options are handed to the
    /// coroutine as arguments: it runs on the asyncio loop's thread, where the caller's context does not reach.
    pub async fn acall_json_with(&self, inputs: &str, options: &CallOptions) -> Result<Vec<u8>> {
        let rt = runtime()?;
        crate::runtime::keep_thread_state();
        let task = Python::attach(|py| -> Result<_> {
            let settings = settings_for(py, self.settings.as_deref())?;
            let coroutine = self
                .runner
                .bind(py)
                .call_method1(pyo3::intern!(py, "acall"), (settings, inputs, options.traceparent.as_deref()))
                .map_err(|e| Error::from_py_in(py, e))?;
            PyTask::spawn(py, rt, coroutine).map_err(|e| Error::from_py_in(py, e))
        })?;
        task.await
    }

    /// Stream the call: output tokens as they arrive, status messages, then the final prediction.
    pub fn stream_json(&self, inputs: &str) -> Result<PredictionStream<Map<String, Value>>> {
        self.start_stream(inputs, &CallOptions::ambient())
    }

    /// [`Module::stream_json`] with per-call [`CallOptions`] (a trace parent).
    pub fn stream_json_with(&self, inputs: &str, options: &CallOptions) -> Result<PredictionStream<Map<String, Value>>> {
        self.start_stream(inputs, options)
    }

    fn start_stream<O>(&self, inputs: &str, options: &CallOptions) -> Result<PredictionStream<O>> {
        let rt = runtime()?;
        Python::attach(|py| {
            let settings = settings_for(py, self.settings.as_deref())?;
            PredictionStream::start(py, rt, self.runner.bind(py), settings, inputs, options.traceparent.as_deref())
        })
    }

    /// Typed call: serialize `input`, call, deserialize the prediction.
    pub fn call<I: Serialize + ?Sized, O: DeserializeOwned>(&self, input: &I) -> Result<Prediction<O>> {
        let inputs = to_json(input)?;
        Prediction::from_bytes(&self.call_json(&inputs)?)
    }

    /// Typed async call.
    pub async fn acall<I: Serialize + ?Sized, O: DeserializeOwned>(&self, input: &I) -> Result<Prediction<O>> {
        let inputs = to_json(input)?;
        Prediction::from_bytes(&self.acall_json(&inputs).await?)
    }

    /// Typed stream.
    pub fn stream<I: Serialize + ?Sized, O: DeserializeOwned>(&self, input: &I) -> Result<PredictionStream<O>> {
        self.start_stream(&to_json(input)?, &CallOptions::ambient())
    }
}

/// A coroutine running on the runtime's asyncio loop, awaited from any async runtime; it resolves to the bytes
/// the coroutine returned. Dropping it before it resolved cancels the asyncio task.
struct PyTask {
    /// The `concurrent.futures.Future` of `asyncio.run_coroutine_threadsafe`; `None` once resolved.
    future: Option<Py<PyAny>>,
    outcome: tokio::sync::oneshot::Receiver<Result<Vec<u8>>>,
}

impl PyTask {
    fn spawn(py: Python<'_>, rt: &crate::runtime::Runtime, coroutine: Bound<'_, PyAny>) -> PyResult<PyTask> {
        let (tx, outcome) = tokio::sync::oneshot::channel();
        let tx = parking_lot::Mutex::new(Some(tx));
        let future = py
            .import("asyncio")?
            .call_method1("run_coroutine_threadsafe", (coroutine, rt.locals.event_loop(py)))?;
        // runs on the loop thread when the task ends (or at once, on this thread, if it already has)
        let on_done = PyCFunction::new_closure(
            py,
            Some(c"dspyo3_acall_done"),
            None,
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let py = args.py();
                let future = args.get_item(0)?;
                let result = if future.call_method0("cancelled")?.is_truthy()? {
                    Err(Error::Cancelled)
                } else {
                    let exc = future.call_method0("exception")?;
                    if exc.is_none() {
                        bytes_of(py, future.call_method0("result")?)
                    } else {
                        Err(Error::from_py_in(py, PyErr::from_value(exc)))
                    }
                };
                if let Some(tx) = tx.lock().take() {
                    let _ = tx.send(result); // Err: the awaiting side was dropped; nothing to deliver to
                }
                Ok(())
            },
        )?;
        future.call_method1("add_done_callback", (on_done,))?;
        Ok(PyTask { future: Some(future.unbind()), outcome })
    }
}

impl std::future::Future for PyTask {
    type Output = Result<Vec<u8>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let polled = std::pin::Pin::new(&mut self.outcome).poll(cx);
        match polled {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(result) => {
                self.future = None; // resolved: nothing to cancel
                std::task::Poll::Ready(result.unwrap_or(Err(Error::Cancelled)))
            }
        }
    }
}

impl Drop for PyTask {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            // Cancelling the concurrent future cancels the asyncio task on the loop thread (a no-op once done).
            let _ = Python::try_attach(|py| future.bind(py).call_method0("cancel").map(drop));
        }
    }
}

fn to_json<I: Serialize + ?Sized>(input: &I) -> Result<String> {
    serde_json::to_string(input)
        .map_err(|source| Error::Conversion { what: "program inputs", json: String::new(), source })
}

fn bytes_of(py: Python<'_>, out: Bound<'_, PyAny>) -> Result<Vec<u8>> {
    let bytes = out.cast_into::<PyBytes>().map_err(|e| Error::from_py_in(py, e.into()))?;
    Ok(bytes.as_bytes().to_vec())
}

/// A prediction: the typed outputs plus every field the module returned (`reasoning` of `ChainOfThought`,
/// `trajectory` of `ReAct`, ...).
#[derive(Debug, Clone)]
pub struct Prediction<O> {
    /// The signature's outputs.
    pub output: O,
    /// All fields of the prediction as JSON.
    pub fields: Map<String, Value>,
}

impl<O: DeserializeOwned> Prediction<O> {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let fields: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| Error::conversion("program outputs", e, bytes))?;
        let output = O::deserialize(Value::Object(fields.clone()))
            .map_err(|e| Error::conversion("program outputs", e, bytes))?;
        Ok(Prediction { output, fields })
    }
}

impl<O> Prediction<O> {
    /// The `reasoning` field (`ChainOfThought`), if present.
    pub fn reasoning(&self) -> Option<&str> {
        self.fields.get("reasoning").and_then(Value::as_str)
    }

    /// Any field by name.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }
}

// -------------------------------------------------------------------------------------------------------------

/// A module with typed inputs and outputs: `call(&S::Input) -> S::Output`. `Predict`, `ChainOfThought`,
/// `ReAct` and typed [`Program`]s dereference to it.
pub struct Typed<S: Signature> {
    module: Module,
    _signature: PhantomData<fn() -> S>,
}

impl<S: Signature> Clone for Typed<S> {
    fn clone(&self) -> Self {
        Typed { module: self.module.clone(), _signature: PhantomData }
    }
}

impl<S: Signature> std::fmt::Debug for Typed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed").field("signature", &std::any::type_name::<S>()).finish_non_exhaustive()
    }
}

impl<S: Signature> Typed<S> {
    fn new(module: Module) -> Self {
        Typed { module, _signature: PhantomData }
    }

    /// Call and return the outputs (sync; see [`Module::call_json`] for the GIL).
    pub fn call(&self, input: &S::Input) -> Result<S::Output> {
        Ok(self.module.call::<_, S::Output>(input)?.output)
    }

    /// Call and return the outputs with every other field of the prediction.
    pub fn call_full(&self, input: &S::Input) -> Result<Prediction<S::Output>> {
        self.module.call(input)
    }

    /// [`Typed::call_full`] with per-call [`CallOptions`] (a trace parent).
    pub fn call_with(&self, input: &S::Input, options: &CallOptions) -> Result<Prediction<S::Output>> {
        Prediction::from_bytes(&self.module.call_json_with(&to_json(input)?, options)?)
    }

    /// Async [`Typed::call_with`].
    pub async fn acall_with(&self, input: &S::Input, options: &CallOptions) -> Result<Prediction<S::Output>> {
        Prediction::from_bytes(&self.module.acall_json_with(&to_json(input)?, options).await?)
    }

    /// Async call, awaitable from tokio (DSPy's `acall` on the runtime's asyncio loop).
    pub async fn acall(&self, input: &S::Input) -> Result<S::Output> {
        Ok(self.module.acall::<_, S::Output>(input).await?.output)
    }

    /// Async call returning the full prediction.
    pub async fn acall_full(&self, input: &S::Input) -> Result<Prediction<S::Output>> {
        self.module.acall(input).await
    }

    /// Stream output tokens, then the typed prediction (see [`PredictionStream`]).
    pub fn stream(&self, input: &S::Input) -> Result<PredictionStream<S::Output>> {
        self.module.stream(input)
    }

    /// The untyped module underneath.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Load a state saved with `program.save("x.json")` in Python (demos, instructions).
    pub fn load_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.module.load_state(path)
    }

    /// Save this module's state as JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.module.save(path)
    }

    fn with_lm(mut self, lm: &Lm, adapter: Option<Adapter>) -> Result<Self> {
        self.module = self.module.with_lm(lm, adapter)?;
        Ok(self)
    }
}

macro_rules! typed_module {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        pub struct $name<S: Signature>(Typed<S>);

        impl<S: Signature> Clone for $name<S> {
            fn clone(&self) -> Self {
                $name(self.0.clone())
            }
        }

        impl<S: Signature> std::fmt::Debug for $name<S> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&std::any::type_name::<S>()).finish()
            }
        }

        impl<S: Signature> Deref for $name<S> {
            type Target = Typed<S>;
            fn deref(&self) -> &Typed<S> {
                &self.0
            }
        }

        impl<S: Signature> $name<S> {
            /// Use this LM (and adapter) instead of the configured default.
            pub fn with_lm(self, lm: &Lm, adapter: Option<Adapter>) -> Result<Self> {
                Ok($name(self.0.with_lm(lm, adapter)?))
            }

            /// The typed module (to store modules of different kinds behind one type).
            pub fn into_typed(self) -> Typed<S> {
                self.0
            }
        }
    };
}

typed_module!(
    /// `dspy.Predict` over a Rust signature.
    ///
    /// ```no_run
    /// use dspyo3::{Predict, Signature};
    ///
    /// /// Answer questions with short factoid answers.
    /// #[derive(Signature)]
    /// struct QA {
    ///     #[input]
    ///     question: String,
    ///     #[output(desc = "often between 1 and 5 words")]
    ///     answer: String,
    /// }
    ///
    /// dspyo3::configure(&dspyo3::Lm::new("openai/gpt-4o-mini").api_key_env("OPENAI_API_KEY").build()?)?;
    /// let qa = Predict::<QA>::new()?;
    /// let out = qa.call(&QAInput { question: "Capital of France?".into() })?;
    /// println!("{}", out.answer);
    /// # Ok::<(), dspyo3::Error>(())
    /// ```
    Predict,
    "predict"
);
typed_module!(
    /// `dspy.ChainOfThought` over a Rust signature; the reasoning is in [`Prediction::reasoning`].
    ChainOfThought,
    "chain_of_thought"
);
typed_module!(
    /// `dspy.ReAct` over a Rust signature, with Rust functions as tools.
    ReAct,
    "react"
);

impl<S: Signature> Predict<S> {
    /// A new `dspy.Predict(signature)`.
    pub fn new() -> Result<Self> {
        Ok(Predict(Typed::new(Module::build::<S>("predict", Value::Object(Map::new()), &[])?)))
    }

    /// A `dspy.Predict` with the state (demos, instructions) of a program saved in Python as JSON.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let module = Self::new()?;
        module.load_state(path)?;
        Ok(module)
    }
}

impl<S: Signature> ChainOfThought<S> {
    /// A new `dspy.ChainOfThought(signature)`.
    pub fn new() -> Result<Self> {
        Ok(ChainOfThought(Typed::new(Module::build::<S>("chain_of_thought", Value::Object(Map::new()), &[])?)))
    }

    /// A `dspy.ChainOfThought` with the state of a program saved in Python as JSON.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let module = Self::new()?;
        module.load_state(path)?;
        Ok(module)
    }
}

impl<S: Signature> ReAct<S> {
    /// A new `dspy.ReAct(signature, tools=..., max_iters=...)`.
    pub fn new(tools: Vec<Tool>, max_iters: u32) -> Result<Self> {
        if tools.is_empty() {
            return Err(ConfigError::NoTools.into());
        }
        let options = serde_json::json!({ "max_iters": max_iters });
        Ok(ReAct(Typed::new(Module::build::<S>("react", options, &tools)?)))
    }
}

// -------------------------------------------------------------------------------------------------------------

/// A program whose architecture is Python code (any `dspy.Module`), typically optimized and saved in Python.
#[derive(Clone, Debug)]
pub struct Program {
    module: Module,
}

impl Program {
    /// Build the program with `factory` (`"package.module:ClassOrFunction"`, called with no arguments; add its
    /// directory with [`add_python_path`](crate::add_python_path) or `PYTHONPATH`) and load the JSON state saved
    /// by `program.save(path)` into it: the demos and instructions an optimizer found. Pickles are refused.
    pub fn load(path: impl AsRef<Path>, factory: &str) -> Result<Program> {
        let path = path_str(path.as_ref())?;
        let rt = runtime()?;
        Python::attach(|py| {
            let runner = rt
                .bridge
                .bind(py)
                .call_method1("load_program", (path, factory))
                .map_err(|e| Error::from_py_in(py, e))?;
            Ok(Program { module: Module::from_runner(runner) })
        })
    }

    /// Use this LM (and adapter) instead of the configured default.
    pub fn with_lm(self, lm: &Lm, adapter: Option<Adapter>) -> Result<Self> {
        Ok(Program { module: self.module.with_lm(lm, adapter)? })
    }

    /// Call with any serializable input (a struct or a `serde_json` map of field values).
    pub fn call<I: Serialize + ?Sized, O: DeserializeOwned>(&self, input: &I) -> Result<Prediction<O>> {
        self.module.call(input)
    }

    /// Async call.
    pub async fn acall<I: Serialize + ?Sized, O: DeserializeOwned>(&self, input: &I) -> Result<Prediction<O>> {
        self.module.acall(input).await
    }

    /// View the program through a Rust signature whose fields match its inputs and outputs.
    pub fn typed<S: Signature>(self) -> Typed<S> {
        Typed::new(self.module)
    }

    /// The untyped module.
    pub fn module(&self) -> &Module {
        &self.module
    }
}
