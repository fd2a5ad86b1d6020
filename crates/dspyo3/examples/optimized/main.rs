//! Run a program optimized and saved in Python from Rust: `cargo run -p dspyo3 --example optimized`.
//!
//! 1. `optimize.py` (next to this file) compiles `QAProgram` with BootstrapFewShot against the loopback LM server
//!    and saves `program.json` plus the answers it gives from Python;
//! 2. Rust loads the saved state into the program's architecture (`qa_program:QAProgram`) and asks the same
//!    questions: the answers are identical, because the prompts (instructions + bootstrapped demos) are.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dspyo3::testing::{venv_python, LoopbackLm};
use dspyo3::{Program, Signature};

/// Answer questions with short factoid answers.
#[derive(Signature)]
struct QA {
    #[input]
    question: String,
    #[output]
    answer: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("optimized");
    let out = std::env::temp_dir().join(format!("dspyo3-optimized-{}", std::process::id()));
    let server = LoopbackLm::start(Duration::ZERO)?;

    let status = Command::new(venv_python())
        .arg(here.join("optimize.py"))
        .args(["--api-base", server.api_base(), "--out"])
        .arg(&out)
        .status()?;
    if !status.success() {
        return Err(format!("optimize.py failed ({status})").into());
    }

    dspyo3::configure(&server.lm().build()?)?;
    dspyo3::add_python_path(&here)?;
    let program = Program::load(out.join("program.json"), "qa_program:QAProgram")?.typed::<QA>();

    let recorded: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_str(&std::fs::read_to_string(out.join("predictions.json"))?)?;
    let mut same = 0;
    for (question, python_answer) in &recorded["optimized"] {
        let answer = program.call(&QAInput { question: question.clone() })?.answer;
        println!("{question}\n  python: {python_answer}\n  rust:   {answer}");
        same += usize::from(&answer == python_answer);
    }
    println!("{same}/{} answers identical", recorded["optimized"].len());
    std::fs::remove_dir_all(&out)?;
    if same != recorded["optimized"].len() {
        return Err("Rust and Python answers differ".into());
    }
    Ok(())
}
