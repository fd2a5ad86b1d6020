//! `SpanSink`: finished spans converted under the GIL into owned Rust values, then batched, encoded as OTLP
//! protobuf and POSTed by a background thread that never holds the GIL ([`dspyo3_kernels::otlp`]).

use std::collections::HashMap;
use std::time::Duration;

use dspyo3_kernels::otlp::{AnyValue, Attributes, Origin, SinkOptions, SpanData, SpanEvent, SpanSink};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// A str as UTF-8; lone surrogates (text decoded with `surrogateescape`) become U+FFFD rather than losing the span.
fn text(s: &Bound<'_, PyString>) -> String {
    match s.to_str() {
        Ok(v) => v.to_owned(),
        Err(_) => s.to_string_lossy().into_owned(),
    }
}

/// A scalar attribute value (`str`, `bool`, `int`, `float`), or `None` when `obj` is none of these.
fn scalar(obj: &Bound<'_, PyAny>, what: &dyn Fn() -> String) -> PyResult<Option<AnyValue>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Some(AnyValue::Str(text(s))));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Some(AnyValue::Bool(b.is_true())));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj
            .extract::<i64>()
            .map(|i| Some(AnyValue::Int(i)))
            .map_err(|_| PyValueError::new_err(format!("{} is an int outside the signed 64-bit range; pass it as a str", what())));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Some(AnyValue::Double(f.value())));
    }
    Ok(None)
}

/// An attribute value: a scalar or a list / tuple of scalars.
fn value(obj: &Bound<'_, PyAny>, what: &dyn Fn() -> String) -> PyResult<AnyValue> {
    if let Some(v) = scalar(obj, what)? {
        return Ok(v);
    }
    let items = |iter: &mut dyn Iterator<Item = Bound<'_, PyAny>>| -> PyResult<AnyValue> {
        let mut out = Vec::new();
        for (i, item) in iter.enumerate() {
            let item_what = || format!("{}[{i}]", what());
            match scalar(&item, &item_what)? {
                Some(v) => out.push(v),
                None => return Err(type_error(&item_what(), &item, "str, bool, int or float")),
            }
        }
        Ok(AnyValue::Array(out))
    };
    if let Ok(l) = obj.cast::<PyList>() {
        return items(&mut l.iter());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return items(&mut t.iter());
    }
    Err(type_error(&what(), obj, "str, bool, int, float or a list of one of those"))
}

fn type_error(what: &str, obj: &Bound<'_, PyAny>, expected: &str) -> PyErr {
    let got = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!("{what} must be {expected}, not {got}"))
}

/// `dict[str, AttrValue]` -> attributes, in the dict's order.
fn attributes(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Attributes> {
    let dict = obj.cast::<PyDict>().map_err(|_| type_error(name, obj, "a dict of str to attribute values"))?;
    let mut out = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let key = k.cast::<PyString>().map_err(|_| type_error(&format!("every key of {name}"), &k, "str"))?;
        let key = text(key);
        let value = value(&v, &|| format!("{name}[{key:?}]"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// An `int` argument in `0..2**bits` (a `bool` is refused).
fn unsigned(obj: &Bound<'_, PyAny>, name: &str, bits: u32) -> PyResult<u128> {
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(type_error(name, obj, "an int"));
    }
    let out_of_range = || PyValueError::new_err(format!("{name} must be an int in 0..2**{bits}"));
    if bits <= 64 {
        // the common case (span ids, times): one C call, where u128 takes two Python operations
        let v = obj.extract::<u64>().map_err(|_| out_of_range())?;
        if bits < 64 && v >> bits != 0 {
            return Err(out_of_range());
        }
        return Ok(v as u128);
    }
    let v = obj.extract::<u128>().map_err(|_| out_of_range())?;
    if bits < 128 && v >> bits != 0 {
        return Err(out_of_range());
    }
    Ok(v)
}

fn events(obj: &Bound<'_, PyAny>) -> PyResult<Vec<SpanEvent>> {
    let mut out = Vec::new();
    let mut one = |i: usize, item: Bound<'_, PyAny>| -> PyResult<()> {
        let what = format!("events[{i}]");
        let parts: Vec<Bound<'_, PyAny>> = if let Ok(t) = item.cast::<PyTuple>() {
            t.iter().collect()
        } else if let Ok(l) = item.cast::<PyList>() {
            l.iter().collect()
        } else {
            return Err(type_error(&what, &item, "a (name, time_ns, attrs) tuple"));
        };
        if parts.len() != 3 {
            return Err(PyValueError::new_err(format!("{what} must be a (name, time_ns, attrs) tuple of 3 items, not {}", parts.len())));
        }
        let name = parts[0].cast::<PyString>().map_err(|_| type_error(&format!("{what} name"), &parts[0], "str"))?;
        let time_ns = unsigned(&parts[1], &format!("{what} time_ns"), 64)? as u64;
        let attributes = attributes(&parts[2], &format!("{what} attrs"))?;
        out.push(SpanEvent { name: text(name), time_ns, attributes });
        Ok(())
    };
    if let Ok(l) = obj.cast::<PyList>() {
        for (i, item) in l.iter().enumerate() {
            one(i, item)?;
        }
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        for (i, item) in t.iter().enumerate() {
            one(i, item)?;
        }
    } else {
        return Err(type_error("events", obj, "a list of (name, time_ns, attrs) tuples or None"));
    }
    Ok(out)
}

/// Seconds to wait: `inf` waits forever; negative or NaN raise `ValueError` naming `name`.
fn wait(seconds: f64, name: &str) -> PyResult<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!("{name} must be >= 0 seconds (got {seconds})")));
    }
    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// Exports finished spans to an OTLP/HTTP (protobuf) collector from a background thread.
///
/// ``push`` converts a span into an owned native value and queues it (a full queue drops it and counts it in
/// ``stats()["dropped"]``); the thread posts batches of up to ``max_batch`` spans every ``delay_ms`` or when a
/// batch is full, with ``timeout_s`` per request and one retry on 429, 5xx or a connection error. Header values
/// are never shown. After ``os.fork()`` the child's sink starts a new thread and an empty queue.
#[pyclass(frozen, name = "SpanSink", module = "dspyo3_native")]
pub(crate) struct PySpanSink {
    sink: SpanSink,
    /// The trace id converted last, by object identity: every span of a trace passes the same `int`.
    last_trace: Mutex<Option<(Py<PyAny>, u128)>>,
}

#[pymethods]
impl PySpanSink {
    #[new]
    #[pyo3(signature = (endpoint, *, headers=Vec::new(), resource=None, scope_name="dspyo3",
                        scope_version="", max_queue=2048, max_batch=512, delay_ms=5000, timeout_s=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        endpoint: String,
        headers: Vec<(String, String)>,
        resource: Option<&Bound<'_, PyAny>>,
        scope_name: &str,
        scope_version: &str,
        max_queue: i64,
        max_batch: i64,
        delay_ms: i64,
        timeout_s: f64,
    ) -> PyResult<Self> {
        // signed, so a negative value is a ValueError naming the option rather than an OverflowError
        let positive = |v: i64, name: &str| {
            u64::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| PyValueError::new_err(format!("{name} must be > 0 (got {v})")))
        };
        let max_queue = usize::try_from(positive(max_queue, "max_queue")?).unwrap_or(usize::MAX);
        let max_batch = usize::try_from(positive(max_batch, "max_batch")?).unwrap_or(usize::MAX);
        let delay_ms = positive(delay_ms, "delay_ms")?;
        let resource = match resource {
            Some(r) => attributes(r, "resource")?,
            None => Vec::new(),
        };
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(PyValueError::new_err(format!("timeout_s must be a positive number of seconds (got {timeout_s})")));
        }
        let options = SinkOptions {
            endpoint,
            headers,
            origin: Origin { resource, scope_name: scope_name.to_owned(), scope_version: scope_version.to_owned() },
            max_queue,
            max_batch,
            delay: Duration::from_millis(delay_ms),
            timeout: Duration::try_from_secs_f64(timeout_s).unwrap_or(Duration::MAX),
        };
        SpanSink::new(options).map(|sink| PySpanSink { sink, last_trace: Mutex::new(None) }).map_err(PyValueError::new_err)
    }

    /// Queue one finished span (see the class docs); returns at once.
    #[pyo3(signature = (name, kind, trace_id, span_id, parent_id, parent_remote, start_ns, end_ns, attrs, events, status))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        name: &Bound<'_, PyAny>,
        kind: &Bound<'_, PyAny>,
        trace_id: &Bound<'_, PyAny>,
        span_id: &Bound<'_, PyAny>,
        parent_id: &Bound<'_, PyAny>,
        parent_remote: &Bound<'_, PyAny>,
        start_ns: &Bound<'_, PyAny>,
        end_ns: &Bound<'_, PyAny>,
        attrs: &Bound<'_, PyAny>,
        events: Option<&Bound<'_, PyAny>>,
        status: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let name = text(name.cast::<PyString>().map_err(|_| type_error("name", name, "str"))?);
        let kind_value = unsigned(kind, "kind", 8)?;
        if kind_value > 2 {
            return Err(PyValueError::new_err(format!("kind must be 0 (internal), 1 (server) or 2 (client), not {kind_value}")));
        }
        let trace_id = {
            let mut last = self.last_trace.lock();
            match &*last {
                Some((seen, value)) if seen.is(trace_id) => *value,
                _ => {
                    let value = unsigned(trace_id, "trace_id", 128)?;
                    *last = Some((trace_id.clone().unbind(), value));
                    value
                }
            }
        };
        let span_id = unsigned(span_id, "span_id", 64)? as u64;
        let parent_id = unsigned(parent_id, "parent_id", 64)? as u64;
        if trace_id == 0 || span_id == 0 {
            return Err(PyValueError::new_err("trace_id and span_id must be non-zero"));
        }
        let parent_remote = parent_remote.cast::<PyBool>().map_err(|_| type_error("parent_remote", parent_remote, "a bool"))?.is_true();
        let start_ns = unsigned(start_ns, "start_ns", 64)? as u64;
        let end_ns = unsigned(end_ns, "end_ns", 64)? as u64;
        let attributes = attributes(attrs, "attrs")?;
        let events = match events {
            Some(e) if !e.is_none() => self::events(e)?,
            _ => Vec::new(),
        };
        let status = match status {
            Some(s) if !s.is_none() => Some(text(s.cast::<PyString>().map_err(|_| type_error("status", s, "a str or None"))?)),
            _ => None,
        };
        self.sink.push(SpanData {
            name,
            kind: kind_value as u8,
            trace_id,
            span_id,
            parent_id,
            parent_remote,
            start_ns,
            end_ns,
            attributes,
            events,
            status,
        });
        Ok(())
    }

    /// Replace every occurrence of each secret by its replacement in spans exported from now on.
    fn set_secrets(&self, pairs: Vec<(String, String)>) {
        self.sink.set_secrets(pairs);
    }

    /// Export everything queued so far; ``True`` when it all reached the collector within ``timeout_s``.
    #[pyo3(signature = (timeout_s=30.0))]
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        let timeout = wait(timeout_s, "timeout_s")?;
        Ok(py.detach(|| self.sink.flush(timeout)))
    }

    /// Flush (at most ``timeout_s``) and stop the export thread; later pushes are dropped silently.
    #[pyo3(signature = (timeout_s=30.0))]
    fn shutdown(&self, py: Python<'_>, timeout_s: f64) -> PyResult<()> {
        let timeout = wait(timeout_s, "timeout_s")?;
        py.detach(|| self.sink.shutdown(timeout));
        Ok(())
    }

    /// ``{"queued", "exported", "dropped", "failed_batches"}``.
    fn stats(&self) -> HashMap<&'static str, u64> {
        let s = self.sink.stats();
        HashMap::from([("queued", s.queued), ("exported", s.exported), ("dropped", s.dropped), ("failed_batches", s.failed_batches)])
    }
}

/// Add `SpanSink` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySpanSink>()
}
