//! `EventSink`: the Python face of [`dspyo3_kernels::eventlog`], a JSON-lines writer on its own thread.

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::SystemTime;

use dspyo3_kernels::eventlog::{Event, EventLog, Value};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

/// Writes structured events as JSON lines to a file descriptor from a background thread.
///
/// `EventSink(fd, secrets)` duplicates `fd` (closing the Python stream later does not break the sink) and masks
/// every value in `secrets` in each finished line. `emit` takes the time at once and returns; `flush` waits
/// until every event emitted before it is written.
#[pyclass(frozen, name = "EventSink", module = "dspyo3_native")]
pub struct PyEventSink {
    log: EventLog,
}

fn value(item: &Bound<'_, PyAny>) -> PyResult<Value> {
    if item.is_none() {
        Ok(Value::Null)
    } else if item.is_instance_of::<PyBool>() {
        Ok(Value::Bool(item.extract()?))
    } else if item.is_instance_of::<PyInt>() {
        Ok(item.extract::<i64>().map(Value::Int).unwrap_or_else(|_| Value::Str(item.to_string())))
    } else if item.is_instance_of::<PyFloat>() {
        Ok(Value::Float(item.extract()?))
    } else if let Ok(text) = item.cast::<PyString>() {
        Ok(Value::Str(text.to_str()?.to_owned()))
    } else {
        Ok(Value::Str(item.str()?.to_str()?.to_owned()))
    }
}

#[pymethods]
impl PyEventSink {
    #[new]
    #[pyo3(signature = (fd, secrets = Vec::new()))]
    fn new(fd: RawFd, secrets: Vec<String>) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!("EventSink needs an open file descriptor, got {fd}")));
        }
        // SAFETY: the descriptor is only borrowed long enough to duplicate it; the sink owns the duplicate.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| PyOSError::new_err(format!("cannot duplicate file descriptor {fd}: {e}")))?;
        let log = EventLog::new(File::from(owned), secrets)
            .map_err(|e| PyOSError::new_err(format!("cannot start the event writer thread: {e}")))?;
        Ok(Self { log })
    }

    /// Queue one event: `level` (e.g. "INFO"), `logger`, `name` and flat `fields` (str, int, float, bool,
    /// None; anything else is written as its `str()`).
    fn emit(&self, level: &str, logger: &str, name: &str, fields: &Bound<'_, PyDict>) -> PyResult<()> {
        let ts = SystemTime::now();
        let mut out = Vec::with_capacity(fields.len());
        for (key, item) in fields.iter() {
            let key = match key.cast::<PyString>() {
                Ok(text) => text.to_str()?.to_owned(),
                Err(_) => key.str()?.to_str()?.to_owned(),
            };
            out.push((key, value(&item)?));
        }
        self.log.emit(Event {
            ts,
            level: level.to_owned(),
            logger: logger.to_owned(),
            name: name.to_owned(),
            fields: out,
            raw_fields: None,
        });
        Ok(())
    }

    /// Queue one event whose fields are already JSON: `fields` is a serialized JSON object (what
    /// `orjson.dumps(dict)` returns), written member by member after the header. Cheaper than `emit` for a
    /// caller that has a JSON encoder at hand.
    fn emit_json(&self, level: &str, logger: &str, name: &str, fields: &[u8]) -> PyResult<()> {
        let ts = SystemTime::now();
        let text = std::str::from_utf8(fields)
            .map_err(|e| PyValueError::new_err(format!("emit_json needs UTF-8 JSON, got invalid bytes: {e}")))?
            .trim();
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(|| PyValueError::new_err("emit_json needs a serialized JSON object ({...})"))?;
        self.log.emit(Event {
            ts,
            level: level.to_owned(),
            logger: logger.to_owned(),
            name: name.to_owned(),
            fields: Vec::new(),
            raw_fields: Some(inner.trim().to_owned()),
        });
        Ok(())
    }

    /// Wait (without the GIL) until every event emitted so far is written and flushed; False if the writer did
    /// not answer within `timeout` seconds (it does not exist in a forked child: make a new sink there).
    /// `inf` or a timeout too long for the clock waits as long as it takes; zero or less only checks; NaN
    /// raises `ValueError`.
    #[pyo3(signature = (timeout = 10.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        if timeout.is_nan() {
            return Err(PyValueError::new_err("timeout must be a number of seconds (got nan)"));
        }
        let timeout = std::time::Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(std::time::Duration::MAX);
        Ok(py.detach(|| self.log.flush(timeout)))
    }

    /// Events written so far.
    #[getter]
    fn written(&self) -> u64 {
        self.log.written()
    }
}

/// Add `EventSink` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEventSink>()
}
