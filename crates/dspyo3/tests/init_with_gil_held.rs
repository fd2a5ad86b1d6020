//! The first use of dspyo3 may come from code that holds the GIL (a #[pyfunction], inside Python::attach):
//! starting the runtime must not deadlock. Its own test binary, so the runtime is not started yet.

mod common;

use std::time::Duration;

use pyo3::prelude::*;

#[test]
fn first_use_while_holding_the_gil_does_not_deadlock() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("dspyo3::init() deadlocked when called with the GIL held");
        std::process::exit(1);
    });
    Python::initialize();
    let info = Python::attach(|py| {
        let _held = py.import("sys").unwrap(); // we hold the GIL here
        dspyo3::init()
    });
    if let Err(err) = info {
        common::init(); // panics with the environment hint
        panic!("{err}");
    }
}
