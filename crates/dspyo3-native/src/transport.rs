//! `LMTransport`: the native LM HTTP client ([`dspyo3_kernels::transport`]) for Python, sync and asyncio.
//!
//! Requests run on one process-wide tokio runtime; the sync methods release the GIL while they wait, the async
//! ones return awaitables that resolve on the running asyncio loop (cancelling one drops the HTTP request).
//! Messages and options are converted to JSON in Rust, the answer parsed in Rust and handed back as plain tuples.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use dspyo3_kernels::transport::{
    request_body, Attempt, ClientOptions, Completion, EventStream, LmClient, RetryPolicy, StreamEvent, TraceContext,
    TransportError, WireFormat, DEFAULT_MAX_ERROR_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_RESPONSE_BYTES,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};
use tokio::sync::Mutex as AsyncMutex;

create_exception!(
    dspyo3_native,
    LMTransportError,
    PyException,
    "A request through LMTransport failed. `args` is `(message, kind, status, retry_after)`: `kind` is one of \
     rate_limit, auth, context_length, invalid_request, server, timeout, connect, protocol, config, too_large (an \
     answer over max_event_bytes / max_response_bytes; never retried); `status` the HTTP status or None; \
     `retry_after` the server's suggested wait in seconds or None. A request made with `traceparent=` adds a 5th \
     element: its HTTP attempts, `[(span_id_hex, start_unix_ns, end_unix_ns, status, error_kind), ...]`."
);

fn transport_err(err: TransportError) -> PyErr {
    LMTransportError::new_err((err.to_string(), err.kind(), err.status(), err.retry_after().map(|d| d.as_secs_f64())))
}

/// [`transport_err`], with the attempts as a 5th argument when the request was traced.
fn traced_err(err: TransportError, attempts: Option<Vec<Attempt>>) -> PyErr {
    let Some(attempts) = attempts else { return transport_err(err) };
    let retry_after = err.retry_after().map(|d| d.as_secs_f64());
    LMTransportError::new_err((err.to_string(), err.kind(), err.status(), retry_after, Attempts(attempts)))
}

/// The trace context a `traceparent=` argument names: `None` when absent, `ValueError` when malformed.
fn trace_context(traceparent: Option<&str>) -> PyResult<Option<TraceContext>> {
    traceparent.map(|text| TraceContext::parse(text).map_err(PyValueError::new_err)).transpose()
}

/// HTTP attempts as `[(span_id_hex, start_unix_ns, end_unix_ns, status, error_kind), ...]`.
struct Attempts(Vec<Attempt>);

impl<'py> IntoPyObject<'py> for Attempts {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for a in self.0 {
            list.append((format!("{:016x}", a.span_id), a.start_unix_ns, a.end_unix_ns, a.status, a.error_kind))?;
        }
        Ok(list)
    }
}

/// How deeply lists and dicts may nest in what is sent to the LM (`json.dumps` stops near Python's recursion limit
/// of 1000; real chat messages nest a handful of levels).
pub(crate) const MAX_JSON_DEPTH: usize = 512;

/// Python value -> JSON (dict, list/tuple, str, int, float, bool, None, and objects with `model_dump()`).
///
/// Containers nested more than [`MAX_JSON_DEPTH`] levels deep, and a container holding itself (directly or
/// further down), raise `ValueError` instead of exhausting the stack.
fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_json_at(obj, &mut Vec::new())
}

/// [`to_json`] with `path`: the ids of the containers enclosing `obj`.
fn to_json_at(obj: &Bound<'_, PyAny>, path: &mut Vec<usize>) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        return Ok(Value::from(obj.extract::<u64>()?));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let value = f.value();
        return Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{value} cannot be sent as JSON (NaN/inf)")));
    }
    let is_container = obj.is_instance_of::<PyDict>() || obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>();
    if !is_container && !obj.hasattr("model_dump")? {
        return Err(PyTypeError::new_err(format!(
            "a {} cannot be sent to the LM; pass str, numbers, bools, None, lists and dicts",
            obj.get_type().name()?
        )));
    }
    if path.len() >= MAX_JSON_DEPTH {
        return Err(PyValueError::new_err(format!(
            "the value sent to the LM is nested more than {MAX_JSON_DEPTH} levels deep"
        )));
    }
    let id = obj.as_ptr() as usize;
    if path.contains(&id) {
        return Err(PyValueError::new_err(format!(
            "circular reference: a {} sent to the LM contains itself",
            obj.get_type().name()?
        )));
    }
    path.push(id);
    let value = container_to_json(obj, path);
    path.pop();
    value
}

/// A dict, list, tuple or `model_dump()`-able object -> JSON, its items converted at `path`.
fn container_to_json(obj: &Bound<'_, PyAny>, path: &mut Vec<usize>) -> PyResult<Value> {
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        // over a snapshot of the items: a `model_dump()` below may change the dict while it is read
        for item in d.items().iter() {
            let (k, v) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            let key = k.cast::<PyString>().map_err(|_| PyTypeError::new_err("JSON object keys must be str"))?;
            map.insert(key.to_str()?.to_owned(), to_json_at(&v, path)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|v| to_json_at(&v, path)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|v| to_json_at(&v, path)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    to_json_at(&obj.call_method0("model_dump")?, path)
}

/// JSON -> Python value.
fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// A finished completion as `(id, model, [(content, reasoning, tool_calls, finish_reason), ...],
/// (prompt_tokens, completion_tokens, total_tokens))`, plus the [`Attempts`] as a 5th element when traced.
struct Answer(Completion, Option<Vec<Attempt>>);

/// The result of a traced or untraced completion, as Python sees it.
fn answer(traced: bool, (result, attempts): (Result<Completion, TransportError>, Vec<Attempt>)) -> PyResult<Answer> {
    let attempts = traced.then_some(attempts);
    match result {
        Ok(done) => Ok(Answer(done, attempts)),
        Err(err) => Err(traced_err(err, attempts)),
    }
}

impl<'py> IntoPyObject<'py> for Answer {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let Completion { id, model, choices, usage } = self.0;
        let attempts = self.1;
        let list = PyList::empty(py);
        for choice in choices {
            let calls = match &choice.tool_calls {
                Some(calls) => to_py(py, calls)?,
                None => py.None().into_bound(py),
            };
            list.append((choice.content, choice.reasoning, calls, choice.finish_reason))?;
        }
        let usage = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens);
        match attempts {
            Some(attempts) => (id, model, list, usage, Attempts(attempts)).into_pyobject(py),
            None => (id, model, list, usage).into_pyobject(py),
        }
    }
}

/// A stream event as a tuple: `("start", id, model)`, `("text", str)`, `("reasoning", str)`,
/// `("tool_call", index, id, name, arguments)`, `("end", finish_reason, (prompt, completion, total))`.
struct Event(StreamEvent);

impl<'py> IntoPyObject<'py> for Event {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self.0 {
            StreamEvent::Start { id, model } => ("start", id, model).into_pyobject(py),
            StreamEvent::Text(text) => ("text", text).into_pyobject(py),
            StreamEvent::Reasoning(text) => ("reasoning", text).into_pyobject(py),
            StreamEvent::ToolCall { index, id, name, arguments } => ("tool_call", index, id, name, arguments).into_pyobject(py),
            StreamEvent::End { finish_reason, usage } => {
                ("end", finish_reason, (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)).into_pyobject(py)
            }
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Run `future` on the transport runtime and wait for it on this (non-runtime) thread, without the GIL, checking
/// for signals every 100 ms: Ctrl-C aborts the request and raises `KeyboardInterrupt` at once.
fn wait<T: Send + 'static>(py: Python<'_>, future: impl std::future::Future<Output = T> + Send + 'static) -> PyResult<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let receiver = std::sync::Mutex::new(receiver);
    // only the main thread sees signals; elsewhere a plain blocking wait keeps the GIL out of it
    let threading = py.import("threading")?;
    let on_main = threading.call_method0("current_thread")?.is(&threading.call_method0("main_thread")?);
    let task = runtime().spawn(async move {
        let _ = sender.send(future.await);
    });
    loop {
        let waited = py.detach(|| match receiver.lock() {
            Ok(receiver) if on_main => receiver.recv_timeout(Duration::from_millis(100)),
            Ok(receiver) => receiver.recv().map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
            Err(_) => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        });
        match waited {
            Ok(value) => return Ok(value),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(interrupted) = py.check_signals() {
                    task.abort();
                    return Err(interrupted);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyException::new_err("the transport task ended without an answer (runtime shut down?)"))
            }
        }
    }
}

/// A pooled HTTP client for one LM endpoint (OpenAI chat completions or Anthropic messages).
///
/// ``LMTransport(api_base, *, api_key=None, wire="openai", timeout=600.0, connect_timeout=10.0, max_retries=3,
/// backoff_base=0.5, backoff_max=30.0, max_retry_after=120.0, http2=False, headers=None, ca_cert=None,
/// max_event_bytes=16 MiB, max_response_bytes=128 MiB, max_error_bytes=64 KiB)``;
/// ``ca_cert`` is a PEM file of certificates trusted besides the Mozilla roots. An answer larger than
/// ``max_response_bytes`` (a non-streamed body, or a whole stream) or a stream event larger than ``max_event_bytes``
/// raises :class:`LMTransportError` of kind ``too_large`` and is not retried; of an error answer (4xx / 5xx) only the
/// first ``max_error_bytes`` are read, for its message.
/// The key is sent as ``Authorization: Bearer`` (openai) or ``x-api-key`` (anthropic) and never shown by ``repr``.
#[pyclass(frozen, name = "LMTransport", module = "dspyo3_native")]
pub(crate) struct PyTransport {
    client: LmClient,
}

impl PyTransport {
    /// What every sending method starts with: the parsed ``traceparent``, the request body and a handle on the
    /// client to move into the request's future.
    fn request(
        &self,
        model: &str,
        messages: &Bound<'_, PyAny>,
        params: Option<&Bound<'_, PyDict>>,
        stream: bool,
        traceparent: Option<&str>,
    ) -> PyResult<(Option<TraceContext>, Vec<u8>, LmClient)> {
        let trace = trace_context(traceparent)?;
        Ok((trace, self.body(model, messages, params, stream)?, self.client.clone()))
    }

    fn body(&self, model: &str, messages: &Bound<'_, PyAny>, params: Option<&Bound<'_, PyDict>>, stream: bool) -> PyResult<Vec<u8>> {
        let messages = match to_json(messages)? {
            Value::Array(items) => items,
            _ => return Err(PyTypeError::new_err("messages must be a list of {\"role\", \"content\"} dicts")),
        };
        let params = match params {
            Some(p) => match to_json(p.as_any())? {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        request_body(self.client.wire(), model, &messages, &params, stream).map_err(transport_err)
    }
}

#[pymethods]
impl PyTransport {
    #[new]
    #[pyo3(signature = (api_base, *, api_key=None, wire="openai", timeout=600.0, connect_timeout=10.0, max_retries=3,
                        backoff_base=0.5, backoff_max=30.0, max_retry_after=120.0, http2=false, headers=None,
                        ca_cert=None, max_event_bytes=DEFAULT_MAX_EVENT_BYTES,
                        max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES, max_error_bytes=DEFAULT_MAX_ERROR_BYTES))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        api_base: &str,
        api_key: Option<String>,
        wire: &str,
        timeout: f64,
        connect_timeout: f64,
        max_retries: u32,
        backoff_base: f64,
        backoff_max: f64,
        max_retry_after: f64,
        http2: bool,
        headers: Option<Vec<(String, String)>>,
        ca_cert: Option<std::path::PathBuf>,
        max_event_bytes: u64,
        max_response_bytes: u64,
        max_error_bytes: u64,
    ) -> PyResult<Self> {
        let seconds = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| PyValueError::new_err(format!("{name} must be a finite number of seconds >= 0, got {value}")))
        };
        let mut options = ClientOptions::new(api_base);
        options.api_key = api_key;
        options.wire = WireFormat::parse(wire).map_err(|e| PyValueError::new_err(e.to_string()))?;
        options.timeout = seconds("timeout", timeout)?;
        options.connect_timeout = seconds("connect_timeout", connect_timeout)?;
        options.retry = RetryPolicy {
            max_retries,
            base: seconds("backoff_base", backoff_base)?,
            max_backoff: seconds("backoff_max", backoff_max)?,
            max_retry_after: seconds("max_retry_after", max_retry_after)?,
        };
        options.http2_prior_knowledge = http2;
        options.headers = headers.unwrap_or_default();
        options.max_event_bytes = max_event_bytes;
        options.max_response_bytes = max_response_bytes;
        options.max_error_bytes = max_error_bytes;
        if let Some(path) = ca_cert {
            let pem = std::fs::read(&path)
                .map_err(|e| PyValueError::new_err(format!("cannot read the CA certificate file {}: {e}", path.display())))?;
            options.ca_certs_pem = Some(pem);
        }
        let _guard = runtime().enter(); // hyper's pool spawns onto the runtime the requests run on
        let client = LmClient::new(&options).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyTransport { client })
    }

    /// The endpoint URL requests go to.
    #[getter]
    fn url(&self) -> String {
        self.client.url().to_string()
    }

    /// The proxy requests go through (``http://host:port/``), or ``None`` for direct connections: taken from
    /// ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` (or their lowercase forms) when the
    /// transport was made; loopback endpoints are never proxied.
    #[getter]
    fn proxy(&self) -> Option<String> {
        self.client.proxy().map(ToString::to_string)
    }

    /// ``"openai"`` or ``"anthropic"``.
    #[getter]
    fn wire(&self) -> &'static str {
        self.client.wire().name()
    }

    /// The JSON request body for ``messages`` and ``params`` (what :meth:`complete` sends), as bytes.
    #[pyo3(signature = (model, messages, params=None, stream=false))]
    fn request_body(&self, model: &str, messages: &Bound<'_, PyAny>, params: Option<&Bound<'_, PyDict>>, stream: bool) -> PyResult<Vec<u8>> {
        self.body(model, messages, params, stream)
    }

    /// Send a chat request and wait for the answer (the GIL is released meanwhile). Returns
    /// ``(id, model, [(content, reasoning, tool_calls, finish_reason), ...], (prompt, completion, total))``;
    /// raises :class:`LMTransportError` after the retries are spent.
    ///
    /// With ``traceparent`` (a W3C ``00-<trace>-<span>-<flags>`` value; malformed raises ``ValueError``), every
    /// HTTP attempt sends a ``traceparent`` of that trace with a fresh span id of its own, and the answer (or the
    /// error's ``args``) gains a 5th element: the attempts, ``[(span_id_hex, start_unix_ns, end_unix_ns, status,
    /// error_kind), ...]``.
    #[pyo3(signature = (model, messages, params=None, *, traceparent=None))]
    fn complete(
        &self,
        py: Python<'_>,
        model: &str,
        messages: &Bound<'_, PyAny>,
        params: Option<&Bound<'_, PyDict>>,
        traceparent: Option<&str>,
    ) -> PyResult<Answer> {
        let (trace, body, client) = self.request(model, messages, params, false, traceparent)?;
        answer(trace.is_some(), wait(py, async move { client.complete_traced(body, trace.as_ref()).await })?)
    }

    /// :meth:`complete` as an awaitable for the running asyncio loop; cancelling it drops the HTTP request.
    #[pyo3(signature = (model, messages, params=None, *, traceparent=None))]
    fn acomplete<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        messages: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyDict>>,
        traceparent: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (trace, body, client) = self.request(model, messages, params, false, traceparent)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            answer(trace.is_some(), client.complete_traced(body, trace.as_ref()).await)
        })
    }

    /// Open a streaming request (retrying failures before the first byte) and return a :class:`LMStream` of event
    /// tuples; blocks until the response headers arrive. With ``traceparent`` (see :meth:`complete`), the attempts
    /// made to open the stream are the stream's ``attempts`` (or the error's 5th argument).
    #[pyo3(signature = (model, messages, params=None, *, traceparent=None))]
    fn stream(
        &self,
        py: Python<'_>,
        model: &str,
        messages: &Bound<'_, PyAny>,
        params: Option<&Bound<'_, PyDict>>,
        traceparent: Option<&str>,
    ) -> PyResult<PyStream> {
        let (trace, body, client) = self.request(model, messages, params, true, traceparent)?;
        let opened = wait(py, async move { client.stream_traced(body, trace.as_ref()).await.map_attempts(trace.is_some()) })?;
        opened_stream(opened)
    }

    /// :meth:`stream` as an awaitable resolving to an :class:`LMStream`.
    #[pyo3(signature = (model, messages, params=None, *, traceparent=None))]
    fn astream<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        messages: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyDict>>,
        traceparent: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (trace, body, client) = self.request(model, messages, params, true, traceparent)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            opened_stream(client.stream_traced(body, trace.as_ref()).await.map_attempts(trace.is_some()))
        })
    }

    /// Start a request whose result is pushed to ``queue`` under ``token`` (see :class:`CompletionQueue`); returns
    /// an :class:`LMRequest` to cancel it. The lowest-overhead async path: no GIL on the tokio side. With
    /// ``traceparent`` (see :meth:`complete`), the drained answer or error carries the attempts.
    #[pyo3(signature = (queue, token, model, messages, params=None, *, traceparent=None))]
    fn submit(
        &self,
        queue: &Bound<'_, PyCompletionQueue>,
        token: u64,
        model: &str,
        messages: &Bound<'_, PyAny>,
        params: Option<&Bound<'_, PyDict>>,
        traceparent: Option<&str>,
    ) -> PyResult<PyRequest> {
        let (trace, body, client) = self.request(model, messages, params, false, traceparent)?;
        let slot = Slot { inner: Some(queue.get().inner.clone()), token, traced: trace.is_some() };
        let task = runtime().spawn(async move {
            let (result, attempts) = client.complete_traced(body, trace.as_ref()).await;
            let traced = slot.traced;
            slot.deliver(result, traced.then_some(attempts));
        });
        Ok(PyRequest { handle: task.abort_handle() })
    }

    fn __repr__(&self) -> String {
        format!("LMTransport({:?}, wire={:?})", self.client.url().to_string(), self.client.wire().name())
    }
}

/// An open LM response stream: iterate it (``for event in stream``) or ``async for`` it. Events are tuples:
/// ``("start", id, model)`` first, ``("text", str)``, ``("reasoning", str)``, ``("tool_call", index, id, name,
/// arguments)``, and ``("end", finish_reason, (prompt, completion, total))`` last. A broken stream raises
/// :class:`LMTransportError`. :meth:`close` drops the connection.
#[pyclass(frozen, name = "LMStream", module = "dspyo3_native")]
pub(crate) struct PyStream {
    inner: Arc<AsyncMutex<Option<EventStream>>>,
    closed: Arc<AtomicBool>,
    attempts: Option<Vec<Attempt>>,
}

impl PyStream {
    fn new(events: EventStream, attempts: Option<Vec<Attempt>>) -> PyStream {
        PyStream { inner: Arc::new(AsyncMutex::new(Some(events))), closed: Arc::new(AtomicBool::new(false)), attempts }
    }
}

/// A stream opening's result with its attempts kept only when the request was traced.
trait MapAttempts {
    fn map_attempts(self, traced: bool) -> (Result<EventStream, TransportError>, Option<Vec<Attempt>>);
}

impl MapAttempts for (Result<EventStream, TransportError>, Vec<Attempt>) {
    fn map_attempts(self, traced: bool) -> (Result<EventStream, TransportError>, Option<Vec<Attempt>>) {
        (self.0, traced.then_some(self.1))
    }
}

fn opened_stream((result, attempts): (Result<EventStream, TransportError>, Option<Vec<Attempt>>)) -> PyResult<PyStream> {
    match result {
        Ok(events) => Ok(PyStream::new(events, attempts)),
        Err(err) => Err(traced_err(err, attempts)),
    }
}

/// The stream's lock while one read is in flight; if the stream was closed meanwhile, it is dropped (and its
/// connection with it) when the read ends, however it ends: finished, failed, cancelled or aborted.
struct Reader {
    guard: tokio::sync::OwnedMutexGuard<Option<EventStream>>,
    closed: Arc<AtomicBool>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            self.guard.take();
        }
    }
}

async fn next_event(
    inner: Arc<AsyncMutex<Option<EventStream>>>,
    closed: Arc<AtomicBool>,
) -> Result<Option<StreamEvent>, TransportError> {
    let mut reader = Reader { guard: inner.lock_owned().await, closed };
    if reader.closed.load(Ordering::Acquire) {
        return Ok(None); // closed while this read waited for the lock (dropped by Reader)
    }
    let Some(events) = reader.guard.as_mut() else { return Ok(None) };
    match events.next().await {
        Some(Ok(event)) => Ok(Some(event)),
        Some(Err(e)) => {
            reader.guard.take();
            Err(e)
        }
        None => {
            reader.guard.take();
            Ok(None)
        }
    }
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        let next = wait(py, next_event(self.inner.clone(), self.closed.clone()))?.map_err(transport_err)?;
        Ok(next.map(Event))
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (inner, closed) = (self.inner.clone(), self.closed.clone());
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            match next_event(inner, closed).await.map_err(transport_err)? {
                Some(event) => Ok(Event(event)),
                None => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }

    /// The HTTP attempts made to open the stream, ``[(span_id_hex, start_unix_ns, end_unix_ns, status,
    /// error_kind), ...]``, when it was opened with ``traceparent=``; else ``None``.
    #[getter]
    fn attempts<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        self.attempts.clone().map(|a| Attempts(a).into_pyobject(py)).transpose()
    }

    /// Stop reading and drop the connection (no-op once the stream ended). Never blocks: with a read in flight,
    /// the stream is dropped when that read ends (or is cancelled).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut guard) = self.inner.try_lock() {
            guard.take();
        }
    }
}

type Finished = (u64, Result<Completion, TransportError>, Option<Vec<Attempt>>);

/// Where finished requests wait for their asyncio loop: a list of results plus a socket pair whose read end the loop
/// watches (``loop.add_reader(queue.fileno(), ...)``). Tokio threads never touch the GIL: they push a result and
/// write one wake-up byte when the list was empty; the loop drains every finished result in one call.
struct QueueInner {
    finished: Mutex<Vec<Finished>>,
    reader: UnixStream,
    writer: UnixStream,
}

impl QueueInner {
    fn push(&self, item: Finished) {
        let first = {
            let mut finished = self.finished.lock();
            finished.push(item);
            finished.len() == 1
        };
        if first {
            let _ = (&self.writer).write(&[1u8]); // a full socket buffer already means "wake up"
        }
    }
}

/// Delivers a submitted request's result when its task ends, however it ends: an aborted or panicking task still
/// resolves its asyncio future (with an error) instead of leaving it pending forever.
struct Slot {
    inner: Option<Arc<QueueInner>>,
    token: u64,
    /// The request was made with a `traceparent`: its result carries attempts (none known when it was cancelled).
    traced: bool,
}

impl Slot {
    fn deliver(mut self, result: Result<Completion, TransportError>, attempts: Option<Vec<Attempt>>) {
        if let Some(inner) = self.inner.take() {
            inner.push((self.token, result, attempts));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let cancelled = TransportError::Connect { message: "the request was cancelled before it finished".into() };
            inner.push((self.token, Err(cancelled), self.traced.then(Vec::new)));
        }
    }
}

/// Completion queue for :meth:`LMTransport.submit`: one per asyncio loop. ``fileno()`` becomes readable when
/// results are ready; ``drain()`` returns them as ``[(token, ok, answer_or_error), ...]``.
#[pyclass(frozen, name = "CompletionQueue", module = "dspyo3_native")]
pub(crate) struct PyCompletionQueue {
    inner: Arc<QueueInner>,
}

#[pymethods]
impl PyCompletionQueue {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(PyCompletionQueue { inner: Arc::new(QueueInner { finished: Mutex::new(Vec::new()), reader, writer }) })
    }

    /// The file descriptor to watch for readability.
    fn fileno(&self) -> i32 {
        self.inner.reader.as_raw_fd()
    }

    /// Every finished request since the last call: ``(token, True, answer)`` or ``(token, False, LMTransportError)``.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut sink = [0u8; 256];
        while let Ok(n) = (&self.inner.reader).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
        let finished = std::mem::take(&mut *self.inner.finished.lock());
        let out = PyList::empty(py);
        for (token, result, attempts) in finished {
            match result {
                Ok(done) => out.append((token, true, Answer(done, attempts)))?,
                Err(err) => out.append((token, false, traced_err(err, attempts).into_value(py)))?,
            }
        }
        Ok(out)
    }
}

/// A request started with :meth:`LMTransport.submit`; :meth:`cancel` drops it (and its connection) mid-flight.
#[pyclass(frozen, name = "LMRequest", module = "dspyo3_native")]
pub(crate) struct PyRequest {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl PyRequest {
    /// Abort the request (its connection is dropped); its token then resolves with a "cancelled" error.
    fn cancel(&self) {
        self.handle.abort();
    }
}

/// Register the transport classes on the module, and size the transport's tokio runtime: one worker thread by
/// default (LM calls are I/O-bound and parsing is microseconds; fewer threads means fewer cross-thread wake-ups per
/// request), or `DSPYO3_TRANSPORT_THREADS`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let threads = std::env::var("DSPYO3_TRANSPORT_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads.unwrap_or(1)).thread_name("dspyo3-transport").enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    m.add("LMTransportError", m.py().get_type::<LMTransportError>())?;
    m.add_class::<PyTransport>()?;
    m.add_class::<PyStream>()?;
    m.add_class::<PyCompletionQueue>()?;
    m.add_class::<PyRequest>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The Python -> JSON conversion against an embedded interpreter (`cargo test -p dspyo3-native` links the
    //! interpreter pyo3's build configuration finds: the hatch env's inside `hatch run`).
    use super::*;
    use pyo3::types::PyDictMethods;

    /// Run `f` with the GIL on a thread with a 64 MiB stack: unoptimized builds use several KiB of stack per
    /// nesting level, more than a test thread's 2 MiB holds at the depth limit (release builds need far less).
    fn with_python<R: Send + 'static>(f: impl for<'py> FnOnce(Python<'py>) -> R + Send + 'static) -> R {
        Python::initialize();
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || Python::attach(f))
            .expect("spawn a test thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    #[test]
    fn plain_values_convert() {
        with_python(|py| {
            let value = py
                .eval(c"{'a': [1, 2.5, True, None, 'x'], 'b': (1, 2), 'big': 2**63}", None, None)
                .expect("eval");
            let json = to_json(&value).expect("convertible");
            assert_eq!(json, serde_json::json!({"a": [1, 2.5, true, null, "x"], "b": [1, 2], "big": 9223372036854775808u64}));
        });
    }

    #[test]
    fn a_container_holding_itself_is_a_value_error() {
        with_python(|py| {
            let list = PyList::empty(py);
            list.append(&list).expect("append");
            let err = to_json(list.as_any()).expect_err("a cycle");
            assert!(err.is_instance_of::<PyValueError>(py), "{err}");
            assert!(err.to_string().contains("contains itself"), "{err}");
            let dict = PyDict::new(py);
            dict.set_item("inner", PyList::new(py, [&dict]).expect("list")).expect("set");
            assert!(to_json(dict.as_any()).expect_err("a cycle").is_instance_of::<PyValueError>(py));
        });
    }

    #[test]
    fn shared_values_are_not_cycles() {
        with_python(|py| {
            let shared = PyList::new(py, [1, 2]).expect("list");
            let outer = PyList::new(py, [&shared, &shared]).expect("list");
            assert_eq!(to_json(outer.as_any()).expect("no cycle"), serde_json::json!([[1, 2], [1, 2]]));
        });
    }

    #[test]
    fn nesting_is_bounded() {
        with_python(|py| {
            let nest = |levels: usize| -> Bound<'_, PyAny> {
                let mut value = PyList::empty(py).into_any();
                for _ in 1..levels {
                    value = PyList::new(py, [value]).expect("list").into_any();
                }
                value
            };
            assert!(to_json(&nest(MAX_JSON_DEPTH)).is_ok());
            let err = to_json(&nest(MAX_JSON_DEPTH + 1)).expect_err("too deep");
            assert!(err.is_instance_of::<PyValueError>(py) && err.to_string().contains("nested more than"), "{err}");
            // far past the limit: an error, not a stack overflow
            assert!(to_json(&nest(200_000)).is_err());
        });
    }

    #[test]
    fn unsupported_values_name_their_type() {
        with_python(|py| {
            let err = to_json(&py.eval(c"object()", None, None).expect("eval")).expect_err("unsupported");
            assert!(err.is_instance_of::<PyTypeError>(py) && err.to_string().contains("a object cannot be sent"));
            let nan = to_json(&py.eval(c"float('nan')", None, None).expect("eval")).expect_err("NaN");
            assert!(nan.is_instance_of::<PyValueError>(py));
        });
    }
}
