//! A loopback OpenAI-compatible LM server for examples, tests and benchmarks (no network, no API key).
//!
//! [`LoopbackLm`] runs `dspyo3_core.testing`'s loopback server (from the `dspyo3-core` package) in a child
//! process. Every request is answered, after a fixed latency, with each requested output field set to a value of
//! the field's type, derived from a digest of the whole prompt: answers are deterministic, change whenever the
//! prompt (instructions, demos, inputs) changes, and a typed module deserializes them into its output struct.
//! [`LoopbackLm::inject`] makes the next requests fail the ways a real provider does ([`Fault`]).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{ConfigError, Result, RuntimeError};
use crate::lm::{Lm, LmBuilder};

/// The child-process server; stopped when dropped.
///
/// What each output field is answered with, by its type (`<digest>` is a digest of the whole prompt):
///
/// | field type | answer |
/// |---|---|
/// | `String` | `"<field>-<digest>"` |
/// | integers, `f32`/`f64`, `bool` | a number in `0..100`, a number in `[0, 1)`, `true` or `false`, from the digest |
/// | a unit-only enum (`Literal`) | one of its values, picked by the digest |
/// | `Vec<T>` / tuples / `HashMap<String, T>` / `Option<T>` / `#[derive(DspyType)]` structs | two items / one item per element / one `"<field>-key"` entry / `Some(..)` / every field filled in |
///
/// Answers are in the format of DSPy's `ChatAdapter` (the default adapter).
#[derive(Debug)]
pub struct LoopbackLm {
    child: Child,
    api_base: String,
    control: Mutex<Control>,
}

#[derive(Debug)]
struct Control {
    stdin: ChildStdin,
    answers: Receiver<std::io::Result<String>>,
}

/// A way for the server to fail a request, as a real provider or network does.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// HTTP 429 with a `Retry-After` header ([`crate::Error::RateLimited`] with `retry_after`, once retries are
    /// spent).
    RateLimited {
        /// The `Retry-After` value sent.
        retry_after: Duration,
    },
    /// An HTTP error status (500, 502, 503, ...) with an OpenAI-style error body.
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// Accept the request and answer nothing for this long, then close the connection (drives client timeouts:
    /// set the LM's `timeout` kwarg shorter to get [`crate::Error::Timeout`]).
    Hang(Duration),
    /// HTTP 200 whose body is not a valid completion ([`crate::Error::Lm`], not retryable).
    Malformed,
    /// A well-formed completion whose text has none of the requested output fields ([`crate::Error::Parse`]).
    /// DSPy's `ChatAdapter` asks once more with `JSONAdapter` when it cannot parse an answer, so inject it twice
    /// to make a `ChatAdapter` call fail.
    Unparseable,
}

impl Fault {
    fn command(&self, times: usize) -> serde_json::Value {
        use serde_json::json;
        let mut command = match self {
            Fault::RateLimited { retry_after } => json!({"fault": "rate_limited", "retry_after": retry_after.as_secs_f64()}),
            Fault::ServerError { status } => json!({"fault": "server_error", "status": status}),
            Fault::Hang(seconds) => json!({"fault": "hang", "seconds": seconds.as_secs_f64()}),
            Fault::Malformed => json!({"fault": "malformed"}),
            Fault::Unparseable => json!({"fault": "unparseable"}),
        };
        command["times"] = json!(times);
        command
    }
}

/// The venv's `python` (`DSPYO3_VENV` / `VIRTUAL_ENV`), else `python3` on `PATH`.
pub fn venv_python() -> PathBuf {
    crate::runtime::venv_dir()
        .map(|venv| venv.join("bin").join("python"))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The server script (`src/loopback.py`), run with `python -c`.
const SERVER: &str = include_str!("loopback.py");

impl LoopbackLm {
    /// Start a server answering after `latency`.
    pub fn start(latency: Duration) -> Result<LoopbackLm> {
        let python = venv_python();
        let mut child = Command::new(&python)
            .args(["-c", SERVER, "--latency", &latency.as_secs_f64().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ConfigError::Loopback { python: python.clone(), message: format!("cannot run it: {e}") })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take().expect("stdin is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // the first line is the api_base, then one line per control command; reading on keeps the child from
            // blocking on a full pipe
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    read => {
                        if tx.send(read.map(|_| line)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => format!("error: {e}"),
            Err(RecvTimeoutError::Timeout) => "no answer within 60 s".to_string(),
            Err(RecvTimeoutError::Disconnected) => "it exited".to_string(),
        };
        let api_base = line.trim().to_string();
        if !api_base.starts_with("http://") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ConfigError::Loopback {
                message: format!("{api_base}; is dspyo3-core installed in {}?", python.display()),
                python,
            }
            .into());
        }
        Ok(LoopbackLm { child, api_base, control: Mutex::new(Control { stdin, answers: rx }) })
    }

    /// Fail the next `times` chat requests with `fault` (faults queue up in order; then answers resume).
    ///
    /// Each failed attempt counts: `dspy.LM` retries a 429, a 5xx and a timeout (`num_retries`, 3 by default), so
    /// inject one more than the retries to see the error, or fewer to see the call recover.
    pub fn inject(&self, fault: Fault, times: usize) -> Result<()> {
        match self.command(&fault.command(times))?.as_str() {
            "ok" => Ok(()),
            other => Err(RuntimeError::Loopback { message: format!("refused {fault:?}: {other}") }.into()),
        }
    }

    /// How many chat requests the server has received (failed ones included).
    pub fn requests(&self) -> Result<usize> {
        let answer = self.command(&serde_json::json!({"requests": true}))?;
        answer.parse().map_err(|_| RuntimeError::Loopback { message: format!("answered {answer:?}") }.into())
    }

    /// A header of the last chat request the server received (`name` in any case), or `None` when that request
    /// had no such header or no request came yet: what a test of header propagation (`traceparent`) reads.
    pub fn last_request_header(&self, name: &str) -> Result<Option<String>> {
        let answer = self.command(&serde_json::json!({"last_headers": true}))?;
        let headers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&answer)
            .map_err(|_| RuntimeError::Loopback { message: format!("answered {answer:?} for the last headers") })?;
        Ok(headers.get(&name.to_ascii_lowercase()).and_then(|v| v.as_str()).map(str::to_string))
    }

    fn command(&self, command: &serde_json::Value) -> Result<String> {
        let gone = |e: &dyn std::fmt::Display| crate::Error::from(RuntimeError::Loopback { message: format!("is gone: {e}") });
        let mut control = self.control.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        writeln!(control.stdin, "{command}").and_then(|()| control.stdin.flush()).map_err(|e| gone(&e))?;
        match control.answers.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => Ok(line.trim().to_string()),
            Ok(Err(e)) => Err(gone(&e)),
            Err(e) => Err(gone(&e)),
        }
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
