//! Trace propagation from the Rust driver: a `traceparent` in `CallOptions` becomes the remote parent of the
//! Python call, so NativeLM's request to the LM carries the caller's trace id (checked on the loopback server),
//! under the program span the bridge opens. A small recording tracer, installed from Python, stands in for
//! production's.

mod common;

use std::sync::Once;

use dspyo3::pyo3::prelude::*;
use dspyo3::testing::LoopbackLm;
use dspyo3::{CallOptions, Lm, Predict};
use futures::StreamExt;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-01")
}

/// The recording tracer: `TRACER.started` holds `(name, ref, parent)` of ended spans, `TRACER.records`
/// `(name, span_id, parent)` of recorded ones.
const TRACER: &std::ffi::CStr = cr#"
import random
from dspyo3_core import spans

class Span:
    def __init__(self, tracer, name, ref, parent):
        self.tracer, self.name, self.ref, self.parent = tracer, name, ref, parent
        self.token = spans.CURRENT.set(ref)
    def set(self, key, value): pass
    def event(self, name, attrs=None): pass
    def fail(self, error): pass
    def end(self, end_ns=None):
        if self.token is not None:
            try:
                spans.CURRENT.reset(self.token)
            except ValueError:
                pass
            self.token = None
            self.tracer.started.append((self.name, self.ref, self.parent))
    def __enter__(self): return self
    def __exit__(self, *exc): self.end()

class Tracer:
    capture_content = False
    propagate = True
    def __init__(self):
        self.started, self.records = [], []
    def start(self, name, kind=0, attrs=None, *, current=True, start_ns=None, span_id=None, parent=None):
        parent = parent or spans.CURRENT.get()
        trace = parent.trace_id if parent is not None else random.getrandbits(127) + 1
        return Span(self, name, spans.SpanRef(trace, span_id or random.getrandbits(63) + 1, True), parent)
    def record(self, name, start_ns, end_ns, attrs=None, *, kind=0, error=None, span_id=None, parent=None):
        self.records.append((name, span_id, parent or spans.CURRENT.get()))
    def traceparent(self, span_id=None):
        ref = spans.CURRENT.get()
        return None if ref is None else spans.format_traceparent(ref, span_id)

def chain(header):
    """(program span name, its parent's span id, trace id) behind the attempt a request header names."""
    span_id = int(header.split("-")[2], 16)
    _, _, parent = next(r for r in spans.TRACER.records if r[1] == span_id)
    name, _, grandparent = next(s for s in spans.TRACER.started if s[1] == parent)
    return name, f"{grandparent.span_id:016x}", f"{grandparent.trace_id:032x}"

if spans.TRACER is None:
    spans.install(Tracer())
    spans.chain = chain
"#;

fn install_tracer() {
    static ONCE: Once = Once::new();
    common::init();
    ONCE.call_once(|| Python::attach(|py| py.run(TRACER, None, None).expect("the recording tracer installs")));
}

/// A `Predict` whose LM is a NativeLM on `server` (the transport that sends `traceparent`).
fn predict(server: &LoopbackLm) -> Predict<common::QA> {
    install_tracer();
    let lm = Python::attach(|py| -> PyResult<Lm> {
        let kwargs = dspyo3::pyo3::types::PyDict::new(py);
        kwargs.set_item("api_base", server.api_base())?;
        kwargs.set_item("api_key", "dspyo3-loopback")?;
        kwargs.set_item("cache", false)?;
        kwargs.set_item("num_retries", 0)?;
        let lm = py.import("dspyo3_core.native_lm")?.getattr("NativeLM")?.call(("openai/dspyo3-test",), Some(&kwargs))?;
        Ok(Lm::from_py(lm.unbind()))
    })
    .expect("NativeLM builds");
    Predict::<common::QA>::new().unwrap().with_lm(&lm, None).unwrap()
}

fn input(question: &str) -> String {
    serde_json::json!({ "question": question }).to_string()
}

/// The request carried the caller's trace, with the span id of an attempt recorded under the program span, which
/// sits under the caller's span.
fn assert_propagated(server: &LoopbackLm) {
    let header = server.last_request_header("traceparent").unwrap().expect("the LM request carries a traceparent");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{header}");
    assert_ne!(parts[2], CALLER_SPAN, "the request is an attempt span of its own");
    let (name, parent, trace) = Python::attach(|py| -> PyResult<(String, String, String)> {
        py.import("dspyo3_core.spans")?.getattr("chain")?.call1((&header,))?.extract()
    })
    .unwrap();
    assert_eq!(name, "dspyo3.program Predict");
    assert_eq!((parent.as_str(), trace.as_str()), (CALLER_SPAN, TRACE));
}

#[test]
fn a_sync_call_runs_under_the_callers_trace() {
    let server = LoopbackLm::start(std::time::Duration::ZERO).unwrap();
    let qa = predict(&server);
    qa.module().call_json_with(&input("sync?"), &CallOptions::traced(traceparent())).unwrap();
    assert_propagated(&server);
    let typed = qa.call_with(&common::QAInput { question: "typed?".into() }, &CallOptions::traced(traceparent()));
    assert!(!typed.unwrap().output.answer.is_empty());
    assert_eq!(server.requests().unwrap(), 2);
    assert_propagated(&server);
}

#[test]
fn async_and_streamed_calls_run_under_the_callers_trace() {
    let server = LoopbackLm::start(std::time::Duration::ZERO).unwrap();
    let qa = predict(&server);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(qa.module().acall_json_with(&input("async?"), &CallOptions::traced(traceparent()))).unwrap();
    assert_propagated(&server);
    rt.block_on(async {
        let mut stream = qa.module().stream_json_with(&input("streamed?"), &CallOptions::traced(traceparent())).unwrap();
        while let Some(event) = stream.next().await {
            event.unwrap();
        }
    });
    assert_eq!(server.requests().unwrap(), 2);
    assert_propagated(&server);
}

#[test]
fn without_a_parent_or_with_a_malformed_one_the_call_starts_its_own_trace() {
    let server = LoopbackLm::start(std::time::Duration::ZERO).unwrap();
    let qa = predict(&server);
    for options in [CallOptions::default(), CallOptions::traced("00-not-a-traceparent-01")] {
        qa.module().call_json_with(&input("own trace?"), &options).unwrap();
        let header = server.last_request_header("traceparent").unwrap().expect("the tracer is on: a new trace");
        assert_ne!(header.split('-').nth(1), Some(TRACE), "{header}");
    }
}

/// With the `opentelemetry` feature, a call without options runs under the current OpenTelemetry span.
#[cfg(feature = "opentelemetry")]
#[test]
fn the_ambient_opentelemetry_span_is_the_parent() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    let server = LoopbackLm::start(std::time::Duration::ZERO).unwrap();
    let qa = predict(&server);
    let caller = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(CALLER_SPAN).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let guard = opentelemetry::Context::current().with_remote_span_context(caller).attach();
    assert_eq!(CallOptions::ambient().traceparent.as_deref(), Some(traceparent().as_str()));
    qa.module().call_json(&input("ambient?")).unwrap();
    assert_propagated(&server);
    drop(guard);
    assert_eq!(CallOptions::ambient(), CallOptions::default(), "outside a span there is no parent");
}
