//! Shared helpers: a scripted, in-process `dspyo3_core.testing.LMServer` driven through the embedded interpreter.

#![allow(dead_code)]

use std::ffi::CString;

use dspyo3::{Lm, Signature};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Answer questions with short factoid answers.
#[derive(Signature)]
pub struct QA {
    #[input]
    pub question: String,
    #[output]
    pub answer: String,
}

/// Start the runtime or fail with the environment the tests need.
pub fn init() {
    if let Err(err) = dspyo3::init() {
        panic!(
            "{err}\nthe dspyo3 crate tests embed Python: set VIRTUAL_ENV to a venv with dspy and dspyo3-core \
             (the hatch env: `export VIRTUAL_ENV=$(hatch env find)`), PYO3_PYTHON=$VIRTUAL_ENV/bin/python when \
             building, and LITELLM_LOCAL_MODEL_COST_MAP=true offline (see crates/dspyo3/README.md)"
        );
    }
}

pub struct Server {
    server: Py<PyAny>,
    pub api_base: String,
}

fn scope(py: Python<'_>) -> Bound<'_, PyDict> {
    let globals = PyDict::new(py);
    let testing = py.import("dspyo3_core.testing").expect("dspyo3_core.testing imports");
    for name in ["LMServer", "Reply", "chat_reply", "field_responder", "parse_fields", "last_user_text"] {
        globals.set_item(name, testing.getattr(name).unwrap()).unwrap();
    }
    globals.set_item("json", py.import("json").unwrap()).unwrap();
    globals
}

impl Server {
    pub fn start() -> Server {
        init();
        Python::attach(|py| {
            let server = scope(py).get_item("LMServer").unwrap().unwrap().call0().unwrap();
            server.call_method0("start").unwrap();
            let api_base = server.getattr("api_base").unwrap().extract().unwrap();
            Server { server: server.unbind(), api_base }
        })
    }

    /// Queue replies given as Python expressions (`Reply`, `chat_reply` ... are in scope).
    pub fn script(&self, exprs: &[&str]) {
        Python::attach(|py| {
            let globals = scope(py);
            for expr in exprs {
                let code = CString::new(*expr).unwrap();
                let reply = py.eval(&code, Some(&globals), None).unwrap_or_else(|e| panic!("{expr}: {e}"));
                self.server.bind(py).call_method1("script", (reply,)).unwrap();
            }
        })
    }

    /// Answer requests with a Python expression evaluating to a responder callable.
    pub fn responder(&self, expr: &str) {
        Python::attach(|py| {
            let code = CString::new(expr).unwrap();
            let responder = py.eval(&code, Some(&scope(py)), None).unwrap();
            self.server.bind(py).setattr("responder", responder).unwrap();
        })
    }

    /// The requests received, as JSON.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        Python::attach(|py| {
            let json = py.import("json").unwrap();
            let text: String = json
                .call_method1("dumps", (self.server.bind(py).getattr("requests").unwrap(),))
                .unwrap()
                .extract()
                .unwrap();
            serde_json::from_str(&text).unwrap()
        })
    }

    /// Everything the prompt of request `i` said.
    pub fn prompt(&self, i: usize) -> String {
        self.requests()[i]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn lm(&self) -> Lm {
        self.lm_builder().build().unwrap()
    }

    pub fn lm_builder(&self) -> dspyo3::LmBuilder {
        Lm::new("openai/dspyo3-test").api_base(self.api_base.clone()).api_key("test-key").cache(false).num_retries(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        Python::attach(|py| {
            let _ = self.server.bind(py).call_method0("stop");
        });
    }
}
