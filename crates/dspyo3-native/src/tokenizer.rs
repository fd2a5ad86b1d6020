//! `Tokenizer`, and the tokenizer arguments `BM25` shares.

use dspyo3_kernels::tokenizer::{self, TokenizerConfig, ENGLISH_STOPWORDS};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::convert::to_py;

/// The `stopwords` argument: `"english"`/`"en"` (Lucene's list, the default), a list of words, or `None`.
pub(crate) enum Stopwords {
    English,
    Words(Vec<String>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Stopwords {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(Stopwords::Words(Vec::new()));
        }
        if let Ok(name) = obj.cast::<PyString>() {
            return match name.to_str()?.to_lowercase().as_str() {
                "english" | "en" => Ok(Stopwords::English),
                other => Err(PyValueError::new_err(format!(
                    "unknown stopword list {other:?}; pass \"english\", a list of words, or None"
                ))),
            };
        }
        obj.extract::<Vec<String>>()
            .map(Stopwords::Words)
            .map_err(|_| PyValueError::new_err("stopwords must be \"english\", a list of str, or None"))
    }
}

impl Stopwords {
    fn words(self) -> Vec<String> {
        match self {
            Stopwords::English => ENGLISH_STOPWORDS.iter().map(|s| s.to_string()).collect(),
            Stopwords::Words(words) => words,
        }
    }
}

/// The kernel's tokenizer settings from the Python arguments.
pub(crate) fn tokenizer_config(
    lowercase: bool,
    ascii_fold: bool,
    stopwords: Stopwords,
    stemmer: Option<String>,
    min_token_len: usize,
    max_token_len: usize,
) -> TokenizerConfig {
    TokenizerConfig { lowercase, ascii_fold, stopwords: stopwords.words(), stemmer, min_token_len, max_token_len }
}

/// Text -> tokens: Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming.
#[pyclass(frozen, name = "Tokenizer", module = "dspyo3_native")]
struct PyTokenizer {
    inner: tokenizer::Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (*, lowercase=true, ascii_fold=true, stopwords=Stopwords::English, stemmer=Some("english".to_string()), min_token_len=1, max_token_len=64))]
    fn new(
        lowercase: bool,
        ascii_fold: bool,
        stopwords: Stopwords,
        stemmer: Option<String>,
        min_token_len: usize,
        max_token_len: usize,
    ) -> PyResult<Self> {
        let config = tokenizer_config(lowercase, ascii_fold, stopwords, stemmer, min_token_len, max_token_len);
        Ok(PyTokenizer { inner: tokenizer::Tokenizer::new(config).map_err(to_py)? })
    }

    /// Tokens of one text.
    fn tokenize(&self, text: &str) -> Vec<String> {
        self.inner.tokenize(text)
    }

    /// Tokens of many texts, computed in parallel without the GIL.
    fn tokenize_batch(&self, py: Python<'_>, texts: Vec<String>) -> Vec<Vec<String>> {
        py.detach(|| self.inner.tokenize_batch(&texts))
    }

    fn __repr__(&self) -> String {
        format!("Tokenizer({:?})", self.inner.config())
    }
}

/// Add `Tokenizer`, `ENGLISH_STOPWORDS` and `STEMMER_LANGUAGES` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ENGLISH_STOPWORDS", ENGLISH_STOPWORDS.to_vec())?;
    m.add("STEMMER_LANGUAGES", tokenizer::STEMMER_LANGUAGES.to_vec())?;
    m.add_class::<PyTokenizer>()
}
