//! An axum HTTP service answering with a DSPy program, JSON and SSE streaming endpoints:
//! `cargo run -p dspyo3 --example serve` (self-test: serves, sends concurrent requests to itself, exits) or
//! `cargo run -p dspyo3 --example serve -- --serve 127.0.0.1:8000` (keeps serving; `curl -N -X POST
//! localhost:8000/ask/stream -H 'content-type: application/json' -d '{"question":"hi"}'`).
//!
//! The LM is the loopback server from `dspyo3_core.testing` with 100 ms latency. Every request is one tokio task
//! awaiting DSPy's `acall` on the shared asyncio loop: no thread per request, no blocked tokio worker.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use dspyo3::testing::LoopbackLm;
use dspyo3::{Error, Predict, Signature, StreamEvent};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answer questions with short factoid answers.
#[derive(Signature)]
struct QA {
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[derive(Deserialize)]
struct Ask {
    question: String,
}

/// DSPy errors as HTTP responses: rate limits keep their Retry-After.
struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Parse { .. } | Error::Lm { .. } | Error::Auth { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (status, Json(serde_json::json!({"error": self.0.to_string()}))).into_response();
        if let Some(after) = self.0.retry_after() {
            let secs = after.as_secs_f64().ceil().to_string();
            response.headers_mut().insert("retry-after", HeaderValue::from_str(&secs).expect("digits"));
        }
        response
    }
}

async fn ask(State(qa): State<Predict<QA>>, Json(body): Json<Ask>) -> Result<Json<QAOutput>, ApiError> {
    qa.acall(&QAInput { question: body.question }).await.map(Json).map_err(ApiError)
}

async fn ask_stream(
    State(qa): State<Predict<QA>>,
    Json(body): Json<Ask>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stream = qa.stream(&QAInput { question: body.question }).map_err(ApiError)?;
    let events = stream.map(|event| {
        Ok(match event {
            Ok(StreamEvent::Token { field, chunk, .. }) => Event::default().event("token").data(
                serde_json::json!({"field": field, "chunk": chunk}).to_string(),
            ),
            Ok(StreamEvent::Status(message)) => Event::default().event("status").data(message),
            Ok(StreamEvent::Prediction(p)) => Event::default().event("prediction").data(
                serde_json::json!({"answer": p.output.answer}).to_string(),
            ),
            Err(err) => Event::default().event("error").data(err.to_string()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// One HTTP/1.1 POST over a fresh connection; returns (status line, body).
async fn post_json(addr: std::net::SocketAddr, path: &str, body: &str) -> std::io::Result<(String, String)> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_at = std::env::args().skip_while(|a| a != "--serve").nth(1);
    let lm_server = LoopbackLm::start(Duration::from_millis(100))?;
    dspyo3::configure(&lm_server.lm().build()?)?;
    let qa = Predict::<QA>::new()?;
    let app = Router::new().route("/ask", post(ask)).route("/ask/stream", post(ask_stream)).with_state(qa);

    let listener = tokio::net::TcpListener::bind(serve_at.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    println!("serving on http://{addr} (POST /ask, POST /ask/stream)");
    if serve_at.is_some() {
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Self-test: 128 concurrent JSON requests, then 16 concurrent streams.
    let started = Instant::now();
    let requests = (0..128).map(|i| {
        tokio::spawn(async move { post_json(addr, "/ask", &format!(r#"{{"question": "question {i}"}}"#)).await })
    });
    let mut ok = 0;
    for handle in requests.collect::<Vec<_>>() {
        let (status, body) = handle.await??;
        if status.contains(" 200 ") && body.contains("\"answer\"") {
            ok += 1;
        }
    }
    let elapsed = started.elapsed();
    println!("/ask: {ok}/128 answered in {:.2}s ({:.0} req/s, LM latency 100 ms)", elapsed.as_secs_f64(),
             128.0 / elapsed.as_secs_f64());

    let streams = (0..16).map(|i| {
        tokio::spawn(async move {
            post_json(addr, "/ask/stream", &format!(r#"{{"question": "streamed question {i}"}}"#)).await
        })
    });
    let mut tokens = 0;
    let mut predictions = 0;
    for handle in streams.collect::<Vec<_>>() {
        let (_, body) = handle.await??;
        tokens += body.matches("event: token").count();
        predictions += body.matches("event: prediction").count();
    }
    println!("/ask/stream: 16 streams, {tokens} token events, {predictions} predictions");
    server.abort();
    if ok != 128 || predictions != 16 || tokens < 32 {
        return Err("self-test failed".into());
    }
    Ok(())
}
