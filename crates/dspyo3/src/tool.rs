//! Rust functions as DSPy tools (for `ReAct`).

use std::fmt::Display;
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::runtime::runtime;
use crate::types::{DspyType, TypeSpec};

type ToolFn = dyn Fn(Value) -> std::result::Result<Value, String> + Send + Sync;

/// A Rust function the LM may call. Its arguments are a struct deriving [`DspyType`] and `Deserialize`: the
/// struct's fields are the tool's arguments, with JSON Schemas DSPy shows the LM and validates against.
#[derive(Clone)]
pub struct Tool {
    name: String,
    desc: String,
    args: TypeSpec,
    func: Arc<ToolFn>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool").field("name", &self.name).field("desc", &self.desc).finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool named `name` (what the LM writes to call it) running `func`.
    ///
    /// An `Err` from `func` is shown to the LM as the tool's observation, as DSPy does for Python tools.
    /// The GIL is released while `func` runs; on the async path it runs on a worker thread.
    pub fn new<A, R, E, F>(name: impl Into<String>, desc: impl Into<String>, func: F) -> Tool
    where
        A: DspyType + DeserializeOwned,
        R: Serialize,
        E: Display,
        F: Fn(A) -> std::result::Result<R, E> + Send + Sync + 'static,
    {
        let name = name.into();
        let tool_name = name.clone();
        let func = move |value: Value| -> std::result::Result<Value, String> {
            let args: A = serde_json::from_value(value)
                .map_err(|e| format!("tool {tool_name}: arguments do not match its schema: {e}"))?;
            let out = func(args).map_err(|e| e.to_string())?;
            serde_json::to_value(out).map_err(|e| format!("tool {tool_name}: result is not serializable: {e}"))
        };
        Tool { name, desc: desc.into(), args: A::type_spec(), func: Arc::new(func) }
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// JSON Schema of each argument.
    pub fn args_schema(&self) -> Result<serde_json::Map<String, Value>> {
        match self.args.json_schema().get("properties") {
            Some(Value::Object(props)) if matches!(self.args, TypeSpec::Model { .. }) => Ok(props.clone()),
            _ => Err(crate::error::ConfigError::ToolArguments { tool: self.name.clone() }.into()),
        }
    }

    /// Call the tool directly with JSON arguments (what DSPy does when the LM picks it).
    pub fn invoke(&self, args: Value) -> std::result::Result<Value, String> {
        (self.func)(args)
    }

    pub(crate) fn to_python<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let schema = serde_json::to_string(&self.args_schema()?).expect("schema serializes");
        let func = self.func.clone();
        let rt = runtime()?;
        let build = || -> PyResult<Bound<'py, PyAny>> {
            let callable = PyCFunction::new_closure(
                py,
                Some(c"dspyo3_rust_tool"),
                None,
                move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<String> {
                    let json: String = args.get_item(0)?.extract()?;
                    let value: Value = serde_json::from_str(&json)
                        .map_err(|e| PyRuntimeError::new_err(format!("tool arguments are not JSON: {e}")))?;
                    let func = func.clone();
                    match args.py().detach(move || func(value)) {
                        Ok(Value::String(text)) => Ok(text),
                        Ok(other) => Ok(other.to_string()),
                        Err(message) => Err(PyRuntimeError::new_err(message)),
                    }
                },
            )?;
            rt.bridge.bind(py).call_method1("make_tool", (callable, &self.name, &self.desc, schema))
        };
        build().map_err(|e| Error::from_py_in(py, e))
    }
}
