//! Dropping the future of `acall` (a `tokio::time::timeout` that elapses, an aborted task) cancels the Python task
//! and with it the LM request: nothing keeps running, or costing, after the caller gave up.

mod common;

use std::ffi::CString;
use std::time::Duration;

use dspyo3::testing::LoopbackLm;
use dspyo3::{Lm, Predict};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use common::{QAInput, QA};

/// A `dspy.BaseLM` whose async call waits forever and records when it starts and when it is cancelled.
const SLOW_LM: &str = r#"
import asyncio, threading
import dspy

class SlowLM(dspy.BaseLM):
    def __init__(self):
        super().__init__(model="slow")
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def forward(self, prompt=None, messages=None, **kwargs):
        raise RuntimeError("only the async path is exercised")

    async def aforward(self, prompt=None, messages=None, **kwargs):
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise RuntimeError("not cancelled")

lm = SlowLM()
"#;

fn event_is_set(lm: &Py<PyAny>, name: &str, wait: f64) -> bool {
    Python::attach(|py| {
        lm.bind(py).getattr(name).unwrap().call_method1("wait", (wait,)).unwrap().extract().unwrap()
    })
}

#[test]
fn dropping_an_acall_future_cancels_the_python_task() {
    common::init();
    let lm: Py<PyAny> = Python::attach(|py| {
        let scope = PyDict::new(py);
        py.run(&CString::new(SLOW_LM).unwrap(), Some(&scope), None).unwrap();
        scope.get_item("lm").unwrap().unwrap().unbind()
    });
    let slow = Lm::from_py(Python::attach(|py| lm.clone_ref(py)));
    let predict = Predict::<QA>::new().unwrap().with_lm(&slow, None).unwrap();
    let input = QAInput { question: "q".into() };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut call = Box::pin(predict.acall(&input));
        // drive the call until the LM is waiting inside it, then give up on it
        loop {
            tokio::select! {
                out = &mut call => panic!("the call finished: {out:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if event_is_set(&lm, "started", 0.0) {
                        break;
                    }
                }
            }
        }
        drop(call);
    });
    assert!(event_is_set(&lm, "cancelled", 60.0), "the LM call kept running after its future was dropped");
}

#[test]
fn a_timed_out_acall_sends_no_request_that_completes_later() {
    common::init();
    let server = LoopbackLm::start(Duration::from_secs(1)).unwrap();
    let lm = server.lm().num_retries(0).build().unwrap();
    let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let leaked = {
            let predict = predict.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(3600), predict.acall(&QAInput { question: "first".into() }))
                    .await
            })
        };
        // give up on the call once the server holds its request (answering takes a second)
        while server.requests().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        leaked.abort();
        assert!(leaked.await.unwrap_err().is_cancelled());
        // a second call through the same server, received after the first: when it has been answered, the first
        // (answered a second after it arrived, as this one is) would have been too, had it kept running
        predict.acall(&QAInput { question: "second".into() }).await.unwrap();
    });
    assert_eq!(server.requests().unwrap(), 2);
    assert_eq!(lm.history_len().unwrap(), 1, "the abandoned call was answered and recorded anyway");
}
