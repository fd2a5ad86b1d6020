//! The native LM transport under `dspy.LM`: a DSPy engine (DSPy 3.4's `complete(Request) -> Response` contract)
//! whose HTTP runs in Rust on tokio (`dspyo3_kernels::transport`), with the GIL released while the request is in
//! flight and no LiteLLM / lm15 client code on the call path.

use std::time::Duration;

use dspyo3_kernels::transport::{ChatClient, ChatResponse, TransportError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// What a finished request hands back to Python: `(kind, text, id, model, finish_reason, (prompt, completion,
/// total), status, retry_after)`; `kind` is `"ok"` (text = the content) or an error kind (text = the message).
type Outcome = (&'static str, String, Option<String>, Option<String>, Option<String>, (u64, u64, u64), Option<u16>, Option<f64>);

fn outcome(result: Result<ChatResponse, TransportError>) -> Outcome {
    match result {
        Ok(r) => (
            "ok",
            r.content,
            r.id,
            r.model,
            r.finish_reason,
            (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens),
            None,
            None,
        ),
        Err(err) => (
            err.kind(),
            err.to_string(),
            None,
            None,
            None,
            (0, 0, 0),
            err.status(),
            err.retry_after().map(|d| d.as_secs_f64()),
        ),
    }
}

/// The Rust client object the Python engines call.
#[pyclass(frozen, name = "NativeClient", module = "dspyo3")]
pub(crate) struct NativeClient {
    client: ChatClient,
}

impl NativeClient {
    pub(crate) fn new(api_base: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, TransportError> {
        // hyper's pool spawns onto the runtime the requests run on: create the client inside it.
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        let _guard = runtime.enter();
        Ok(NativeClient { client: ChatClient::new(api_base, api_key, timeout)? })
    }
}

#[pymethods]
impl NativeClient {
    /// Blocking call (the sync engine): the GIL is released until the answer is parsed.
    fn complete(&self, py: Python<'_>, body: &Bound<'_, PyBytes>) -> Outcome {
        let body = body.as_bytes().to_vec();
        let client = self.client.clone();
        py.detach(move || {
            let handle = pyo3_async_runtimes::tokio::get_runtime().spawn(async move { client.complete(body).await });
            match futures::executor::block_on(handle) {
                Ok(result) => outcome(result),
                Err(join) => outcome(Err(TransportError::Connect { message: format!("transport task failed: {join}") })),
            }
        })
    }

    /// Awaitable call (the async engine): the request runs on tokio, the asyncio future resolves when it ends.
    fn acomplete<'py>(&self, py: Python<'py>, body: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
        let body = body.as_bytes().to_vec();
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(outcome(client.complete(body).await)) })
    }
}
