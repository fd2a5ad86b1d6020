//! A typed Rust client for a program served by `dspyo3 serve` (the Python service): JSON in and out through serde
//! structs, the SSE stream read event by event, the service's errors as a typed value.
//!
//! Start a service, then point the example at it:
//!
//! ```text
//! dspyo3 serve my_app:qa --port 8000
//! cargo run -p dspyo3 --example serve_client -- --url http://127.0.0.1:8000 qa "What is DSPy?"
//! ```
//!
//! `--api-key KEY` (or `DSPYO3_SERVE_KEY`) authenticates against a service with tenants. The program must take a
//! `question` and answer an `answer` (change `QaInput` / `QaOutput` for your own signature). The example makes one
//! JSON call, one streamed call, and one call with a wrong input type to show the 422 the service answers; it exits
//! 1 if any of them does not behave as the HTTP contract says.

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The program's input fields (the JSON body of `POST /v1/programs/{name}`).
#[derive(Serialize)]
struct QaInput {
    question: String,
}

/// The program's output fields (`outputs` in the answer).
#[derive(Deserialize, Debug)]
struct QaOutput {
    answer: String,
}

/// Token counts of one request.
#[derive(Deserialize, Debug, Default)]
struct Usage {
    #[serde(default)]
    total_tokens: u64,
}

/// A 200 answer: the outputs plus which version and A/B arm answered, usage, cost and the request id.
#[derive(Deserialize, Debug)]
struct Served<O> {
    outputs: O,
    version: String,
    #[serde(default)]
    arm: Option<String>,
    #[serde(default)]
    usage: Usage,
    #[serde(default)]
    cost: Option<f64>,
    #[serde(default)]
    cache_hit: bool,
    request_id: String,
}

/// One wrong or missing input field of a 422.
#[derive(Deserialize, Debug)]
struct FieldProblem {
    field: String,
    problem: String,
    #[serde(default)]
    expected: Option<String>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    #[serde(default)]
    fields: Option<Vec<FieldProblem>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
    #[serde(default)]
    request_id: Option<String>,
}

/// What a call can fail with: the service's error body, a body that is not one (a proxy's HTML page), or I/O.
#[derive(Debug)]
enum ServeError {
    /// The service refused or failed the request (`status` 0: an `error` event inside a stream).
    Service {
        status: u16,
        kind: String,
        message: String,
        fields: Vec<FieldProblem>,
        retry_after: Option<u64>,
        request_id: Option<String>,
    },
    /// A response that is not the service's JSON (wrong URL, a proxy in between).
    Unexpected { status: u16, body: String },
    /// Connecting, sending or reading failed.
    Transport(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Service { status, kind, message, fields, retry_after, request_id } => {
                write!(f, "{status} {kind}: {message}")?;
                for p in fields {
                    write!(f, " [{}: {}, expected {}]", p.field, p.problem, p.expected.as_deref().unwrap_or("?"))?;
                }
                if let Some(after) = retry_after {
                    write!(f, " (retry after {after} s)")?;
                }
                if let Some(id) = request_id {
                    write!(f, " (request {id})")?;
                }
                Ok(())
            }
            ServeError::Unexpected { status, body } => {
                write!(f, "HTTP {status} that is not a dspyo3 service answer: {body}")
            }
            ServeError::Transport(what) => write!(f, "could not reach the service: {what}"),
        }
    }
}

impl std::error::Error for ServeError {}

fn transport(err: impl fmt::Display) -> ServeError {
    ServeError::Transport(err.to_string())
}

/// A service error from an error body, or `Unexpected` when the body is not one.
fn service_error(status: u16, retry_after: Option<u64>, body: &[u8]) -> ServeError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ServeError::Service {
            status,
            kind: e.error.kind,
            message: e.error.message,
            fields: e.error.fields.unwrap_or_default(),
            retry_after,
            request_id: e.request_id,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            ServeError::Unexpected { status, body: text }
        }
    }
}

/// One streamed event, typed.
#[derive(Debug)]
enum Event<O> {
    /// A piece of an output field's text.
    Chunk { field: String, text: String },
    /// A progress message.
    Status(String),
    /// The final answer.
    Prediction(Served<O>),
}

#[derive(Deserialize)]
struct ChunkData {
    field: String,
    text: String,
}

#[derive(Deserialize)]
struct StatusData {
    message: String,
}

/// Incremental `text/event-stream` decoding: lines end in CRLF, LF or CR (also split across reads), `:` lines are
/// comments (keep-alives), several `data:` lines join with `\n`, an event ends at a blank line.
#[derive(Default)]
struct SseDecoder {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    event: String,
    data: Vec<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the `(event, data)` pairs they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue; // the LF of a CRLF
                }
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let mut line = std::mem::take(&mut self.line);
                    if !std::mem::replace(&mut self.started, true) && line.starts_with("\u{feff}".as_bytes()) {
                        line.drain(..3); // a byte order mark before the first line
                    }
                    if let Some(event) = self.end_line(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn end_line(&mut self, line: &str) -> Option<(String, String)> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some((if event.is_empty() { "message".into() } else { event }, data));
        }
        if line.starts_with(':') {
            return None;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "event" => self.event = value.to_string(),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

/// A client for one service: a keep-alive connection pool, the base URL and an optional API key.
struct ServeClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    api_key: Option<String>,
}

impl ServeClient {
    fn new(base: &str, api_key: Option<String>) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        ServeClient { http, base: base.trim_end_matches('/').to_string(), api_key }
    }

    async fn post(&self, path: &str, body: Vec<u8>, accept: &str) -> Result<Response<Incoming>, ServeError> {
        let mut request = Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("accept", accept);
        if let Some(key) = &self.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        // the URL and headers come from the command line: a bad one is reported, never shown with the key
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ServeError::Transport("the URL or API key is not valid in an HTTP request".into()))?;
        self.http.request(request).await.map_err(transport)
    }

    /// `POST /v1/programs/{name}`: typed inputs in, typed outputs out.
    async fn predict<I: Serialize, O: DeserializeOwned>(&self, name: &str, input: &I) -> Result<Served<O>, ServeError> {
        let body = serde_json::to_vec(input).map_err(transport)?;
        let response = self.post(&format!("/v1/programs/{name}"), body, "application/json").await?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let bytes = response.into_body().collect().await.map_err(transport)?.to_bytes();
        if status != StatusCode::OK {
            return Err(service_error(status.as_u16(), retry_after, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| ServeError::Unexpected {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        })
    }

    /// `POST /v1/programs/{name}/stream`: calls `on_event` for each chunk and status, returns the final answer.
    async fn stream<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        mut on_event: impl FnMut(&Event<O>),
    ) -> Result<Served<O>, ServeError> {
        let body = serde_json::to_vec(input).map_err(transport)?;
        let response = self.post(&format!("/v1/programs/{name}/stream"), body, "text/event-stream").await?;
        let status = response.status();
        if status != StatusCode::OK {
            let retry_after = retry_after(&response);
            let bytes = response.into_body().collect().await.map_err(transport)?.to_bytes();
            return Err(service_error(status.as_u16(), retry_after, &bytes));
        }
        let mut body = response.into_body();
        let mut decoder = SseDecoder::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(transport)?;
            let Some(data) = frame.data_ref() else { continue };
            for (event, data) in decoder.feed(data) {
                let unexpected = |_| ServeError::Unexpected { status: 200, body: format!("bad {event} event") };
                let event = match event.as_str() {
                    "chunk" => {
                        let chunk: ChunkData = serde_json::from_str(&data).map_err(unexpected)?;
                        Event::Chunk { field: chunk.field, text: chunk.text }
                    }
                    "status" => {
                        let status: StatusData = serde_json::from_str(&data).map_err(unexpected)?;
                        Event::Status(status.message)
                    }
                    "prediction" => Event::Prediction(serde_json::from_str(&data).map_err(unexpected)?),
                    "error" => return Err(service_error(0, None, data.as_bytes())),
                    _ => continue, // events this client does not know
                };
                if let Event::Prediction(served) = event {
                    return Ok(served);
                }
                on_event(&event);
            }
        }
        Err(ServeError::Transport("the stream ended without a prediction".into()))
    }
}

fn retry_after(response: &Response<Incoming>) -> Option<u64> {
    response.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()
}

struct Args {
    url: String,
    api_key: Option<String>,
    program: String,
    question: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8000".into(),
        api_key: std::env::var("DSPYO3_SERVE_KEY").ok().filter(|k| !k.is_empty()),
        program: "qa".into(),
        question: "What is DSPy?".into(),
    };
    let mut positional = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--url" => args.url = it.next().ok_or("--url needs a value")?,
            "--api-key" => args.api_key = Some(it.next().ok_or("--api-key needs a value")?),
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    if let Some(program) = positional.next() {
        args.program = program;
    }
    if let Some(question) = positional.next() {
        args.question = question;
    }
    if positional.next().is_some() {
        return Err("too many arguments".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("Error: {problem}; see the usage below");
            }
            eprintln!("usage: serve_client [--url http://127.0.0.1:8000] [--api-key KEY] [PROGRAM] [QUESTION]");
            std::process::exit(2);
        }
    };
    if let Err(err) = run(&args).await {
        eprintln!("Error: {err}; check that `dspyo3 serve` runs at {} and serves {}", args.url, args.program);
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), ServeError> {
    let client = ServeClient::new(&args.url, args.api_key.clone());
    let input = QaInput { question: args.question.clone() };

    let served: Served<QaOutput> = client.predict(&args.program, &input).await?;
    println!(
        "predict: {:?} (version {}, arm {}, {} tokens, cost {}, cache hit {}, request {})",
        served.outputs.answer,
        served.version,
        served.arm.as_deref().unwrap_or("-"),
        served.usage.total_tokens,
        served.cost.map_or("unknown".to_string(), |c| format!("${c:.6}")),
        served.cache_hit,
        served.request_id
    );

    let mut chunks = 0;
    let mut text = String::new();
    let streamed: Served<QaOutput> = client
        .stream(&args.program, &input, |event| match event {
            Event::Chunk { field, text: piece } if field == "answer" => {
                chunks += 1;
                text.push_str(piece);
            }
            Event::Status(message) => println!("stream status: {message}"),
            _ => {}
        })
        .await?;
    println!("stream: {chunks} chunks {text:?}, then {:?} (version {})", streamed.outputs.answer, streamed.version);

    // a wrong input type: the service answers 422 naming the field and the type it expects
    let wrong = serde_json::json!({ "question": 42 });
    match client.predict::<_, QaOutput>(&args.program, &wrong).await {
        Err(err @ ServeError::Service { status: 422, .. }) => println!("invalid input: {err}"),
        Err(err) => return Err(err),
        Ok(_) => return Err(ServeError::Transport("a number was accepted as the question".into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut decoder = SseDecoder::default();
        chunks.iter().flat_map(|chunk| decoder.feed(chunk)).collect()
    }

    fn pair(event: &str, data: &str) -> (String, String) {
        (event.to_string(), data.to_string())
    }

    #[test]
    fn joins_data_lines_and_skips_comments() {
        let stream = b": keep-alive\n\nevent: chunk\ndata: one\ndata:two\n\ndata: plain\n\n";
        assert_eq!(decode(&[stream]), vec![pair("chunk", "one\ntwo"), pair("message", "plain")]);
    }

    #[test]
    fn crlf_split_between_reads_and_bare_cr() {
        let stream = "\u{feff}event: status\r\ndata: caf\u{e9}\r\n\r\ndata: x\rdata: y\r\r".as_bytes();
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(&bytes), vec![pair("status", "caf\u{e9}"), pair("message", "x\ny")]);
    }

    #[test]
    fn event_without_data_is_dropped_and_unterminated_event_discarded() {
        assert_eq!(decode(&[b"event: chunk\n\ndata: kept\n\ndata: never ended\n"]), vec![pair("message", "kept")]);
    }

    #[test]
    fn error_body_or_not() {
        let body = br#"{"error": {"type": "validation_error", "message": "bad", "fields": [{"field": "question",
            "problem": "missing", "expected": "string"}]}, "request_id": "r1"}"#;
        let text = service_error(422, None, body).to_string();
        assert_eq!(text, "422 validation_error: bad [question: missing, expected string] (request r1)");
        let html = service_error(502, None, b"<html>502 Bad Gateway</html>");
        assert!(matches!(html, ServeError::Unexpected { status: 502, .. }));
        assert!(html.to_string().contains("502 Bad Gateway"));
    }
}
