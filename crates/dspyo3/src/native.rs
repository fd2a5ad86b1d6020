//! The native LM transport under `dspy.LM`: a DSPy engine (DSPy 3.4's `complete(Request) -> Response` contract)
//! whose HTTP runs in Rust on tokio (`dspyo3_kernels::transport`), with the GIL released while the request is in
//! flight and no LiteLLM / lm15 client code on the call path.

use std::time::Duration;

use dspyo3_kernels::transport::{ClientOptions, Completion, LmClient, RetryPolicy, TransportError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// What a finished request hands back to Python: `(kind, text, id, model, finish_reason, (prompt, completion,
/// total), status, retry_after)`; `kind` is `"ok"` (text = the content) or an error kind (text = the message).
type Outcome = (&'static str, String, Option<String>, Option<String>, Option<String>, (u64, u64, u64), Option<u16>, Option<f64>);

fn outcome(result: Result<Completion, TransportError>) -> Outcome {
    match result {
        Ok(mut r) => {
            let choice = r.choices.swap_remove(0);
            let usage = (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens);
            ("ok", choice.content.unwrap_or_default(), r.id, r.model, choice.finish_reason, usage, None, None)
        }
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
    client: LmClient,
}

impl NativeClient {
    pub(crate) fn new(api_base: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, TransportError> {
        // hyper's pool spawns onto the runtime the requests run on: create the client inside it.
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        let _guard = runtime.enter();
        // One attempt per engine call: DSPy's execution layer owns retries for engines.
        let mut options = ClientOptions::new(api_base);
        options.api_key = api_key.map(str::to_string);
        options.timeout = timeout;
        options.retry = RetryPolicy { max_retries: 0, ..RetryPolicy::default() };
        Ok(NativeClient { client: LmClient::new(&options)? })
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
