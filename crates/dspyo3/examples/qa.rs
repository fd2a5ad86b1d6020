//! Typed `Predict` against the loopback LM server: `cargo run -p dspyo3 --example qa`.
//!
//! Needs `VIRTUAL_ENV` (or `DSPYO3_VENV`) pointing at a venv with dspy and dspyo3-core (see the README).

use std::time::Duration;

use dspyo3::testing::LoopbackLm;
use dspyo3::{ChainOfThought, Predict, Signature};

/// Answer questions with short factoid answers.
#[derive(Signature)]
struct QA {
    #[input]
    question: String,
    /// often between 1 and 5 words
    #[output]
    answer: String,
}

fn main() -> dspyo3::Result<()> {
    let info = dspyo3::init()?;
    println!("embedded Python {} with DSPy {}", info.python_version.split_whitespace().next().unwrap_or(""), info.dspy_version);

    let server = LoopbackLm::start(Duration::from_millis(20))?;
    dspyo3::configure(&server.lm().build()?)?;

    let qa = Predict::<QA>::new()?;
    let out = qa.call(&QAInput { question: "What is the capital of France?".into() })?;
    println!("Predict        -> answer = {:?}", out.answer);

    let cot = ChainOfThought::<QA>::new()?;
    let full = cot.call_full(&QAInput { question: "What is the capital of France?".into() })?;
    println!("ChainOfThought -> answer = {:?}, reasoning = {:?}", full.output.answer, full.reasoning());
    Ok(())
}
