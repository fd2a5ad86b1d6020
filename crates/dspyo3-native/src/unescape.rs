//! `HTMLUnescaper`: the Python face of [`dspyo3_kernels::unescape`], `html.unescape` at native speed.

use std::borrow::Cow;

use dspyo3_kernels::unescape::Unescaper;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

/// Texts longer than this are decoded without the GIL.
const DETACH_BYTES: usize = 64 * 1024;

/// Decodes HTML character references exactly as `html.unescape` does, in one linear native pass.
///
/// `HTMLUnescaper(named)` takes the table of named references once (pass `html.entities.html5` for
/// `html.unescape`'s behaviour); `unescape(text)` decodes one text.
#[pyclass(frozen, name = "HTMLUnescaper", module = "dspyo3_native")]
pub struct PyUnescaper {
    inner: Unescaper,
}

impl PyUnescaper {
    /// `decode(text)`, without the GIL when the text is long.
    fn run<'a, T: ?Sized + ToOwned + AsRef<[u8]> + Sync>(
        &self,
        py: Python<'_>,
        text: &'a T,
        decode: impl Fn(&Unescaper, &'a T) -> Cow<'a, T> + Sync,
    ) -> Cow<'a, T>
    where
        T::Owned: Send,
    {
        if text.as_ref().len() > DETACH_BYTES {
            py.detach(|| decode(&self.inner, text))
        } else {
            decode(&self.inner, text)
        }
    }
}

#[pymethods]
impl PyUnescaper {
    #[new]
    fn new(named: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut pairs = Vec::with_capacity(named.len());
        for (name, value) in named.iter() {
            pairs.push((name.extract::<String>()?, value.extract::<String>()?));
        }
        Ok(PyUnescaper { inner: Unescaper::new(pairs) })
    }

    /// `text` with its numeric and named character references decoded (the same object when it has no `&`).
    fn unescape<'py>(&self, text: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyString>> {
        let py = text.py();
        if let Ok(utf8) = text.to_str() {
            return Ok(match self.run(py, utf8, Unescaper::unescape) {
                Cow::Borrowed(_) => text.clone(),
                Cow::Owned(decoded) => PyString::new(py, &decoded),
            });
        }
        // A str holding lone surrogates has no UTF-8 form: decode its "surrogatepass" bytes and come back.
        let encoded = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
        let encoded = encoded.cast::<PyBytes>()?;
        Ok(match self.run(py, encoded.as_bytes(), Unescaper::unescape_bytes) {
            Cow::Borrowed(_) => text.clone(),
            Cow::Owned(bytes) => {
                PyBytes::new(py, &bytes).call_method1("decode", ("utf-8", "surrogatepass"))?.cast_into::<PyString>()?
            }
        })
    }

    /// Number of named references in the table.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!("HTMLUnescaper(<{} named references>)", self.inner.len())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyUnescaper>()
}
