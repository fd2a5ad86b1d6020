//! The Rust half of `benchmarks/rust_driver.py` (run that script; it builds this in release mode).
//!
//! * `bench_driver overhead --calls N`: sync `Predict::<QA>::call` with `dspy.utils.DummyLM` (the LM costs
//!   nothing), against the same `dspy.Predict` in a Python loop, alternating rounds, best of 7 each, in µs.
//! * `bench_driver async --api-base URL --tasks C --requests N`: C tokio tasks calling `acall` until N requests
//!   are done, against an LM server; requests/s and this process's CPU time per request.
//! * `bench_driver threads --api-base URL --tasks C --requests N`: the same with C OS threads calling sync `call`.
//!
//! Prints one JSON object.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dspyo3::{Lm, Predict, Signature};
use pyo3::prelude::*;
use pyo3::types::PyDict;

#[derive(Signature)]
struct QA {
    #[input]
    question: String,
    #[output]
    answer: String,
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn num(name: &str, default: usize) -> usize {
    arg(name).map(|v| v.parse().expect("a number")).unwrap_or(default)
}

/// CPU time (user + system) of this process, in seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` for RUSAGE_SELF into the buffer we own.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Per-call time of `Predict::<QA>::call` from Rust and of the same `dspy.Predict` object called in a plain Python
/// loop, in alternating rounds in this one process (same interpreter, same LM, same warm caches); best of 7 each.
fn overhead(calls: usize) -> serde_json::Value {
    let lm = Python::attach(|py| -> PyResult<Py<PyAny>> {
        let answers = PyDict::new(py);
        answers.set_item("answer", "Paris")?;
        let replies = vec![answers; calls * 20 + 1000];
        Ok(py.import("dspy.utils")?.getattr("DummyLM")?.call1((replies,))?.unbind())
    })
    .expect("DummyLM");
    let lm = Lm::from_py(lm);
    dspyo3::configure(&lm).unwrap();
    let qa = Predict::<QA>::new().unwrap();
    let program = qa.module().program().unwrap();
    let python_loop = Python::attach(|py| -> PyResult<Py<PyAny>> {
        let code = c"
import time
import dspy

def python_loop(program, lm, n, tag):
    with dspy.context(lm=lm):
        started = time.perf_counter()
        for i in range(n):
            assert program(question=f'q{tag}-{i}').answer == 'Paris'
        return time.perf_counter() - started
";
        let module = pyo3::types::PyModule::from_code(py, code, c"bench_loop.py", c"bench_loop")?;
        Ok(module.getattr("python_loop")?.unbind())
    })
    .unwrap();
    let run_python = |tag: usize| -> f64 {
        Python::attach(|py| {
            python_loop.bind(py).call1((program.bind(py), lm.as_py().bind(py), calls, tag)).unwrap().extract().unwrap()
        })
    };
    let run_rust = |tag: usize| -> f64 {
        let started = Instant::now();
        for i in 0..calls {
            let out = qa.call(&QAInput { question: format!("q{tag}-{i}") }).unwrap();
            assert_eq!(out.answer, "Paris");
        }
        started.elapsed().as_secs_f64()
    };
    run_python(0);
    run_rust(0);
    let (mut best_python, mut best_rust) = (f64::INFINITY, f64::INFINITY);
    for round in 1..=7 {
        best_python = best_python.min(run_python(round));
        best_rust = best_rust.min(run_rust(round));
    }
    let (python_us, rust_us) = (best_python / calls as f64 * 1e6, best_rust / calls as f64 * 1e6);
    serde_json::json!({"rust_per_call_us": rust_us, "python_per_call_us": python_us,
                       "overhead_ratio": rust_us / python_us, "calls": calls})
}

/// The LM: the server at `--api-base`, or with `--free-engine DIR LATENCY` the zero-cost engine of
/// `DIR/free_engine.py` (DSPy's own work only, plus waiting).
fn configure_server() -> Predict<QA> {
    let lm = if let Some(dir) = arg("--free-engine") {
        let latency: f64 = arg("--latency").expect("--latency SECONDS").parse().expect("a number");
        dspyo3::add_python_path(dir).unwrap();
        let lm = Python::attach(|py| -> PyResult<Py<PyAny>> {
            Ok(py.import("free_engine")?.getattr("free_lm")?.call1((latency,))?.unbind())
        })
        .unwrap();
        Lm::from_py(lm)
    } else {
        let api_base = arg("--api-base").expect("--api-base URL");
        let builder = Lm::new("openai/dspyo3-test").api_base(api_base).api_key("bench").cache(false);
        let builder = if std::env::args().any(|a| a == "--native") { builder.native() } else { builder };
        builder.build().unwrap()
    };
    dspyo3::configure(&lm).unwrap();
    Predict::<QA>::new().unwrap()
}

fn throughput_async(tasks: usize, requests: usize) -> serde_json::Value {
    let qa = configure_server();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let warm: Vec<_> = (0..tasks)
            .map(|i| {
                let qa = qa.clone();
                tokio::spawn(async move { qa.acall(&QAInput { question: format!("warm {i}") }).await })
            })
            .collect();
        for w in warm {
            w.await.unwrap().unwrap();
        }
        let next = Arc::new(AtomicUsize::new(0));
        let (cpu0, started) = (cpu_seconds(), Instant::now());
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (qa, next) = (qa.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        qa.acall(&QAInput { question: "What is the capital of France?".into() }).await.unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let (elapsed, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        serde_json::json!({"rps": requests as f64 / elapsed, "cpu_us_per_request": cpu / requests as f64 * 1e6})
    })
}

fn throughput_threads(threads: usize, requests: usize) -> serde_json::Value {
    let qa = configure_server();
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, started) = (cpu_seconds(), Instant::now());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (qa, next) = (qa.clone(), next.clone());
            scope.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    qa.call(&QAInput { question: "What is the capital of France?".into() }).unwrap();
                }
            });
        }
    });
    let (elapsed, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    serde_json::json!({"rps": requests as f64 / elapsed, "cpu_us_per_request": cpu / requests as f64 * 1e6})
}

fn main() {
    dspyo3::init().expect("dspyo3 runtime (set VIRTUAL_ENV)");
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "overhead" => overhead(num("--calls", 2000)),
        "async" => throughput_async(num("--tasks", 64), num("--requests", 1280)),
        "threads" => throughput_threads(num("--tasks", 64), num("--requests", 1280)),
        other => panic!("unknown mode {other:?}; use overhead, async or threads"),
    };
    println!("{result}");
}
