//! Calls made from threads Python created (a `threading.Thread`, the worker thread of `asyncio.to_thread` a Rust
//! tool runs on) must not leave a thread state behind that Rust releases after CPython freed it: that aborts the
//! process (`Fatal Python error: PyGILState_Release`) when the thread exits. The scenario runs in a child process
//! (this test binary re-run with `DSPYO3_THREAD_STATE_CHILD` set), so an abort is seen as the child's exit status.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use dspyo3::Predict;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};

use common::{QAInput, Server, QA};

const CHILD: &str = "DSPYO3_THREAD_STATE_CHILD";
const DONE: &str = "dspyo3-thread-state-child-done";

/// In the child: `Predict::call` from two `threading.Thread`s (each ends before the next starts), then wait until
/// their OS threads are gone, since the abort came at OS-thread exit, after `join()` returned.
fn child() {
    let server = Server::start();
    server.responder(r#"lambda request: Reply(content=chat_reply(answer="A:" + parse_fields(last_user_text(request))["question"]))"#);
    dspyo3::configure(&server.lm()).unwrap();
    let predict = Predict::<QA>::new().unwrap();
    let answers: Vec<String> = Python::attach(|py| {
        let ask = PyCFunction::new_closure(
            py,
            Some(c"ask"),
            None,
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<String> {
                let question: String = args.get_item(0)?.extract()?;
                // a Rust function called from Python on a Python thread making its own DSPy call
                let predict = predict.clone();
                args.py()
                    .detach(move || predict.call(&QAInput { question }))
                    .map(|out| out.answer)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
            },
        )
        .unwrap();
        let scope = PyDict::new(py);
        scope.set_item("ask", ask).unwrap();
        py.run(
            cr#"
import threading
answers, native_ids = [], []
for question in ("q1", "q2"):
    thread = threading.Thread(target=lambda q=question: (answers.append(ask(q)), native_ids.append(threading.get_native_id())))
    thread.start()
    thread.join()
"#,
            Some(&scope),
            None,
        )
        .unwrap();
        let ids: Vec<u64> = scope.get_item("native_ids").unwrap().unwrap().extract().unwrap();
        assert_eq!(ids.len(), 2, "both threads ran");
        for id in ids {
            wait_until_thread_exits(py, id);
        }
        scope.get_item("answers").unwrap().unwrap().extract().unwrap()
    });
    assert_eq!(answers, ["A:q1", "A:q2"]);
    println!("{DONE}");
}

/// Wait (without the GIL) until the OS thread `id` of this process has exited.
fn wait_until_thread_exits(py: Python<'_>, id: u64) {
    py.detach(|| {
        let task = format!("/proc/self/task/{id}");
        let start = Instant::now();
        while std::path::Path::new(&task).exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "thread {id} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        if !cfg!(target_os = "linux") {
            std::thread::sleep(Duration::from_secs(1)); // no /proc: give the thread time to exit
        }
    });
}

#[test]
fn predict_call_from_a_python_thread_does_not_abort_at_thread_exit() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "predict_call_from_a_python_thread_does_not_abort_at_thread_exit", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(DONE),
        "the child process died ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
}
