//! A loopback OpenAI-compatible LM server for examples, tests and benchmarks (no network, no API key).
//!
//! It runs `python -m dspyo3_core.testing` (from the `dspyo3-core` package) in a child process: every request is
//! answered, after a fixed latency, with each requested output field set to `<field>-<digest of the prompt>`,
//! so answers are deterministic and change whenever the prompt (instructions, demos, inputs) changes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lm::{Lm, LmBuilder};

/// The child-process server; stopped when dropped.
#[derive(Debug)]
pub struct LoopbackLm {
    child: Child,
    api_base: String,
}

/// The venv's `python` (`DSPYO3_VENV` / `VIRTUAL_ENV`), else `python3` on `PATH`.
pub fn venv_python() -> PathBuf {
    crate::runtime::venv_dir()
        .map(|venv| venv.join("bin").join("python"))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

impl LoopbackLm {
    /// Start a server answering after `latency`.
    pub fn start(latency: Duration) -> Result<LoopbackLm> {
        let python = venv_python();
        let mut child = Command::new(&python)
            .args(["-m", "dspyo3_core.testing", "--latency", &latency.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::Config(format!("cannot run {} -m dspyo3_core.testing: {e}", python.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // keep draining so the child never blocks on a full pipe
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer within 60 s".to_string(),
        };
        let api_base = line.trim().to_string();
        if !api_base.starts_with("http://") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Config(format!(
                "the loopback LM server did not start ({api_base}; is dspyo3-core installed in {}?)",
                python.display()
            )));
        }
        Ok(LoopbackLm { child, api_base })
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// An LM pointed at this server (`openai/dspyo3-test`, a dummy key, DSPy's cache off).
    pub fn lm(&self) -> LmBuilder {
        Lm::new("openai/dspyo3-test").api_base(self.api_base.clone()).api_key("dspyo3-loopback").cache(false)
    }
}

impl Drop for LoopbackLm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
