//! `ChatFormatter` and `chat_sections`: the per-call work of DSPy's `ChatAdapter` and `JSONAdapter` (user and
//! assistant messages, demos, completion sections) in Rust, byte-identical to DSPy's output.
//!
//! The text rules live in [`dspyo3_kernels::adapter`]. Values DSPy formats through pydantic are written here when
//! they are plain JSON data (exact `str`, `int`, finite `float`, `bool`, `None`, and lists, tuples and `str`-keyed
//! dicts of those); anything else (a pydantic model, an enum, a `dspy.Image`, a NaN) goes to the Python callable
//! the formatter was built with, DSPy's own `format_field_value`, so the text is DSPy's either way.

use dspyo3_kernels::adapter::{chat_sections as kernel_sections, format_text_list, push_json_str, py_strip};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Deeper JSON than this goes to Python (which raises for a cycle as DSPy would).
const MAX_DEPTH: usize = 200;

/// One signature field: its name, whether its annotation is exactly `str`, and its pydantic `FieldInfo`.
struct Field {
    name: String,
    key: Py<PyString>,
    is_str: bool,
    info: Py<PyAny>,
}

impl Field {
    fn from_tuple(item: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (key, is_str, info): (Bound<'_, PyString>, bool, Bound<'_, PyAny>) = item.extract()?;
        Ok(Field { name: key.to_str()?.to_owned(), key: key.unbind(), is_str, info: info.unbind() })
    }
}

/// Formats one signature's messages as DSPy's `ChatAdapter` (or, with `json_outputs`, `JSONAdapter`) does.
///
/// Built once per signature from its input and output fields (`(name, annotation is str, FieldInfo)` triples),
/// the output-format reminder of the main request, DSPy's `format_field_value` (called for values that are not
/// plain JSON data) and, for JSON outputs, a callable turning an outputs dict into DSPy's indented JSON.
#[pyclass(frozen, name = "ChatFormatter", module = "dspyo3_native")]
pub struct PyChatFormatter {
    inputs: Vec<Field>,
    outputs: Vec<Field>,
    requirements: Option<String>,
    json_outputs: bool,
    fallback: Py<PyAny>,
    json_fallback: Option<Py<PyAny>>,
    marker: String,
}

/// `value` as plain JSON text into `out`, as `json.dumps(value, ensure_ascii=False, indent=indent)` writes it;
/// false (and `out` in an unspecified state) when the value is not plain JSON data.
fn write_json(value: &Bound<'_, PyAny>, out: &mut String, indent: Option<usize>, depth: usize) -> PyResult<bool> {
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    if let Ok(text) = value.cast_exact::<PyString>() {
        match text.to_str() {
            Ok(s) => push_json_str(out, s),
            Err(_) => return Ok(false), // lone surrogates: Python's json writes them as escapes
        }
    } else if value.is_none() {
        out.push_str("null");
    } else if let Ok(flag) = value.cast_exact::<PyBool>() {
        out.push_str(if flag.is_true() { "true" } else { "false" });
    } else if value.is_exact_instance_of::<PyInt>() {
        out.push_str(value.str()?.to_str()?);
    } else if let Ok(number) = value.cast_exact::<PyFloat>() {
        if !number.value().is_finite() {
            return Ok(false); // pydantic's JSON mode turns these into null
        }
        out.push_str(value.repr()?.to_str()?);
    } else if value.is_exact_instance_of::<PyList>() || value.is_exact_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = value.try_iter()?.collect::<PyResult<_>>()?;
        if items.is_empty() {
            out.push_str("[]");
            return Ok(true);
        }
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            separator(out, i, indent, depth + 1);
            if !write_json(item, out, indent, depth + 1)? {
                return Ok(false);
            }
        }
        close(out, indent, depth);
        out.push(']');
    } else if let Ok(dict) = value.cast_exact::<PyDict>() {
        if dict.is_empty() {
            out.push_str("{}");
            return Ok(true);
        }
        out.push('{');
        for (i, (key, item)) in dict.iter().enumerate() {
            let Ok(key) = key.cast_exact::<PyString>() else { return Ok(false) };
            let Ok(key) = key.to_str() else { return Ok(false) };
            separator(out, i, indent, depth + 1);
            push_json_str(out, key);
            out.push_str(": ");
            if !write_json(&item, out, indent, depth + 1)? {
                return Ok(false);
            }
        }
        close(out, indent, depth);
        out.push('}');
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// What comes before item `i` of a list or dict: `, ` (compact) or `,\n` and the indentation.
fn separator(out: &mut String, i: usize, indent: Option<usize>, level: usize) {
    match indent {
        None if i > 0 => out.push_str(", "),
        None => {}
        Some(width) => {
            if i > 0 {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    }
}

/// What comes before the closing bracket: nothing (compact) or a newline and the outer indentation.
fn close(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(width * level));
    }
}

/// `values[key]` when `key in values` (a dict, a `dspy.Example` or any mapping), else None.
fn lookup<'py>(values: &Bound<'py, PyAny>, key: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = values.cast_exact::<PyDict>() {
        return dict.get_item(key);
    }
    if values.contains(key)? {
        return Ok(Some(values.get_item(key)?));
    }
    Ok(None)
}

fn message<'py>(py: Python<'py>, role: &str, content: &str) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("role", role)?;
    dict.set_item("content", content)?;
    Ok(dict)
}

impl PyChatFormatter {
    /// One field value as DSPy's `format_field_value` writes it.
    fn field_value(&self, field: &Field, value: &Bound<'_, PyAny>) -> PyResult<String> {
        let py = value.py();
        if let Ok(text) = value.cast_exact::<PyString>() {
            if let Ok(s) = text.to_str() {
                return Ok(s.to_owned());
            }
        } else if field.is_str && value.is_exact_instance_of::<PyList>() {
            let items: Vec<Bound<'_, PyAny>> = value.try_iter()?.collect::<PyResult<_>>()?;
            let texts: Option<Vec<&str>> =
                items.iter().map(|item| item.cast_exact::<PyString>().ok().and_then(|s| s.to_str().ok())).collect();
            if let Some(texts) = texts {
                return Ok(format_text_list(&texts));
            }
        } else if value.is_none() {
            return Ok("None".to_string());
        } else if let Ok(flag) = value.cast_exact::<PyBool>() {
            return Ok(if flag.is_true() { "True" } else { "False" }.to_string());
        } else if value.is_exact_instance_of::<PyInt>() {
            return Ok(value.str()?.to_str()?.to_owned());
        } else if let Ok(number) = value.cast_exact::<PyFloat>() {
            if number.value().is_finite() {
                return Ok(value.str()?.to_str()?.to_owned());
            }
        } else if value.is_exact_instance_of::<PyList>()
            || value.is_exact_instance_of::<PyTuple>()
            || value.is_exact_instance_of::<PyDict>()
        {
            let mut out = String::new();
            if write_json(value, &mut out, None, 0)? {
                return Ok(out);
            }
        }
        self.fallback.bind(py).call1((field.info.bind(py), value))?.extract()
    }

    fn user_text(
        &self,
        values: &Bound<'_, PyAny>,
        prefix: &str,
        suffix: &str,
        main_request: bool,
    ) -> PyResult<String> {
        let py = values.py();
        let mut out = String::from(prefix);
        for field in &self.inputs {
            if let Some(value) = lookup(values, field.key.bind(py))? {
                let text = self.field_value(field, &value)?;
                out.push_str("\n\n[[ ## ");
                out.push_str(&field.name);
                out.push_str(" ## ]]\n");
                out.push_str(&text);
            }
        }
        if main_request {
            if let Some(requirements) = &self.requirements {
                out.push_str("\n\n");
                out.push_str(requirements);
            }
        }
        out.push_str("\n\n");
        out.push_str(suffix);
        Ok(py_strip(&out).to_owned())
    }

    fn assistant_text(&self, values: &Bound<'_, PyAny>, missing: &Bound<'_, PyAny>) -> PyResult<String> {
        let py = values.py();
        let mut fields = Vec::with_capacity(self.outputs.len());
        for field in &self.outputs {
            let value = lookup(values, field.key.bind(py))?.unwrap_or_else(|| missing.clone());
            fields.push((field, value));
        }
        if self.json_outputs {
            let dict = PyDict::new(py);
            for (field, value) in &fields {
                dict.set_item(field.key.bind(py), value)?;
            }
            let mut out = String::new();
            if write_json(dict.as_any(), &mut out, Some(2), 0)? {
                return Ok(out);
            }
            let Some(json_fallback) = &self.json_fallback else {
                return Err(pyo3::exceptions::PyValueError::new_err("this formatter has no JSON fallback"));
            };
            return json_fallback.bind(py).call1((dict,))?.extract();
        }
        let mut out = String::new();
        for (i, (field, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str("\n\n");
            }
            out.push_str("[[ ## ");
            out.push_str(&field.name);
            out.push_str(" ## ]]\n");
            out.push_str(&self.field_value(field, value)?);
        }
        let mut text = py_strip(&out).to_owned();
        text.push_str("\n\n[[ ## completed ## ]]\n");
        Ok(text)
    }

    fn push_demos<'py>(&self, demos: &Bound<'py, PyAny>, messages: &Bound<'py, PyList>) -> PyResult<()> {
        let py = demos.py();
        let none = py.None().into_bound(py);
        let mut complete = Vec::new();
        let mut incomplete = Vec::new();
        for demo in demos.try_iter()? {
            let demo = demo?;
            let mut is_complete = true;
            let mut has_input = false;
            let mut has_output = false;
            for (i, field) in self.inputs.iter().chain(&self.outputs).enumerate() {
                match lookup(&demo, field.key.bind(py))? {
                    Some(value) => {
                        is_complete &= !value.is_none();
                        if i < self.inputs.len() {
                            has_input = true;
                        } else {
                            has_output = true;
                        }
                    }
                    None => is_complete = false,
                }
            }
            if is_complete {
                complete.push(demo);
            } else if has_input && has_output {
                incomplete.push(demo);
            }
        }
        let prefix = "This is an example of the task, though some input or output fields are not supplied.";
        let missing = PyString::new(py, "Not supplied for this particular example. ").into_any();
        for demo in &incomplete {
            messages.append(message(py, "user", &self.user_text(demo, prefix, "", false)?)?)?;
            messages.append(message(py, "assistant", &self.assistant_text(demo, &missing)?)?)?;
        }
        for demo in &complete {
            messages.append(message(py, "user", &self.user_text(demo, "", "", false)?)?)?;
            messages.append(message(py, "assistant", &self.assistant_text(demo, &none)?)?)?;
        }
        Ok(())
    }
}

#[pymethods]
impl PyChatFormatter {
    #[new]
    #[pyo3(signature = (inputs, outputs, fallback, *, requirements = None, json_outputs = false,
                        json_fallback = None, marker = None))]
    fn new(
        inputs: &Bound<'_, PyAny>,
        outputs: &Bound<'_, PyAny>,
        fallback: Py<PyAny>,
        requirements: Option<String>,
        json_outputs: bool,
        json_fallback: Option<Py<PyAny>>,
        marker: Option<String>,
    ) -> PyResult<Self> {
        let fields = |items: &Bound<'_, PyAny>| -> PyResult<Vec<Field>> {
            items.try_iter()?.map(|item| Field::from_tuple(&item?)).collect()
        };
        if json_outputs && json_fallback.is_none() {
            return Err(pyo3::exceptions::PyValueError::new_err("json_outputs needs json_fallback"));
        }
        Ok(PyChatFormatter {
            inputs: fields(inputs)?,
            outputs: fields(outputs)?,
            requirements,
            json_outputs,
            fallback,
            json_fallback,
            marker: marker.unwrap_or_default(),
        })
    }

    /// The user message of `values` (input fields present in it, in signature order) as
    /// `ChatAdapter.format_user_message_content` writes it.
    #[pyo3(signature = (values, prefix = "", suffix = "", main_request = false))]
    fn user(&self, values: &Bound<'_, PyAny>, prefix: &str, suffix: &str, main_request: bool) -> PyResult<String> {
        self.user_text(values, prefix, suffix, main_request)
    }

    /// The assistant message of `values` (every output field, `missing` for absent ones) as the adapter's
    /// `format_assistant_message_content` writes it.
    #[pyo3(signature = (values, missing = None))]
    fn assistant(&self, values: &Bound<'_, PyAny>, missing: Option<Bound<'_, PyAny>>) -> PyResult<String> {
        let missing = missing.unwrap_or_else(|| values.py().None().into_bound(values.py()));
        self.assistant_text(values, &missing)
    }

    /// The demo messages as `Adapter.format_demos` builds them: incomplete demos (some field missing or None, at
    /// least one input and one output present) first, then complete ones.
    fn demos<'py>(&self, demos: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let messages = PyList::empty(demos.py());
        self.push_demos(demos, &messages)?;
        Ok(messages)
    }

    /// Every message of a call without conversation history: `system`, the demos, the main request. The flag says
    /// whether some content holds the custom-type marker (DSPy then splits it into content parts).
    fn messages<'py>(
        &self,
        system: &str,
        demos: &Bound<'py, PyAny>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyList>, bool)> {
        let py = inputs.py();
        let messages = PyList::empty(py);
        messages.append(message(py, "system", system)?)?;
        self.push_demos(demos, &messages)?;
        let content = self.user_text(inputs, "", "", true)?;
        if !content.is_empty() {
            messages.append(message(py, "user", &content)?)?;
        }
        let marked = !self.marker.is_empty()
            && messages.iter().any(|m| {
                m.get_item("content").ok().is_some_and(|c| {
                    c.cast_exact::<PyString>().ok().and_then(|s| s.to_str().ok()).is_some_and(|s| s.contains(&self.marker))
                })
            });
        Ok((messages, marked))
    }
}

/// The sections of a chat completion as `ChatAdapter.parse` splits it, keeping the first section of each name in
/// `names`: `[(name, text)]`. None when the completion needs DSPy's own rules (a rare line break such as U+2028,
/// or a header-like line with non-ASCII text).
#[pyfunction]
fn chat_sections(completion: &Bound<'_, PyString>, names: Vec<String>) -> Option<Vec<(String, String)>> {
    let completion = completion.to_str().ok()?; // lone surrogates: DSPy's rules
    let mut found: Vec<(String, String)> = Vec::with_capacity(names.len());
    for (name, text) in kernel_sections(completion)? {
        if let Some(name) = name {
            if names.contains(&name) && !found.iter().any(|(seen, _)| *seen == name) {
                found.push((name, text));
            }
        }
    }
    Some(found)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChatFormatter>()?;
    m.add_function(wrap_pyfunction!(chat_sections, m)?)
}
