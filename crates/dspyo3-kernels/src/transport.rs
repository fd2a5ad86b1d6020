//! LM HTTP transport (feature `transport`): OpenAI-compatible chat completions on tokio + hyper.
//!
//! One pooled HTTP/1.1 client per endpoint; the request body is built and the response parsed in Rust, and
//! provider errors are classified (rate limit with `Retry-After`, auth, context length, invalid request, server,
//! timeout). This first cut speaks plain `http://` (local and in-cluster OpenAI-compatible servers: vLLM,
//! llama.cpp, Ollama, the loopback test server); TLS, HTTP/2, streaming and retries come with the full native
//! transport.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde_json::{Map, Value};

/// One chat message (text content).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

/// A parsed chat completion (first choice).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Completion id.
    pub id: Option<String>,
    /// Model that answered.
    pub model: Option<String>,
    /// Assistant text (empty when the server sent `null`).
    pub content: String,
    /// `stop`, `length`, ...
    pub finish_reason: Option<String>,
    /// Token counts (zeros when absent).
    pub usage: Usage,
}

/// Why a request failed, classified the way LM clients (and DSPy's error classes) need it.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// HTTP 429; `retry_after` from the `Retry-After` header (seconds).
    RateLimited {
        /// Server message.
        message: String,
        /// Suggested wait.
        retry_after: Option<Duration>,
    },
    /// HTTP 401 / 403.
    Auth {
        /// Status code.
        status: u16,
        /// Server message.
        message: String,
    },
    /// The prompt is longer than the model's context window.
    ContextLength {
        /// Server message.
        message: String,
    },
    /// Another 4xx.
    InvalidRequest {
        /// Status code.
        status: u16,
        /// Server message.
        message: String,
    },
    /// A 5xx.
    Server {
        /// Status code.
        status: u16,
        /// Server message.
        message: String,
    },
    /// No complete answer in time: the client timeout expired, or the server answered 408.
    Timeout {
        /// What timed out.
        message: String,
    },
    /// Could not connect or the connection broke.
    Connect {
        /// What happened.
        message: String,
    },
    /// The server answered 200 with something that is not a chat completion.
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The client was configured wrongly (bad URL, unsupported scheme).
    Config {
        /// What to fix.
        message: String,
    },
}

impl TransportError {
    /// A short stable name: `rate_limit`, `auth`, `context_length`, `invalid_request`, `server`, `timeout`,
    /// `connect`, `protocol`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::RateLimited { .. } => "rate_limit",
            TransportError::Auth { .. } => "auth",
            TransportError::ContextLength { .. } => "context_length",
            TransportError::InvalidRequest { .. } => "invalid_request",
            TransportError::Server { .. } => "server",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Connect { .. } => "connect",
            TransportError::Protocol { .. } => "protocol",
            TransportError::Config { .. } => "config",
        }
    }

    /// HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TransportError::RateLimited { .. } => Some(429),
            TransportError::Auth { status, .. }
            | TransportError::InvalidRequest { status, .. }
            | TransportError::Server { status, .. } => Some(*status),
            TransportError::ContextLength { .. } => Some(400),
            _ => None,
        }
    }

    /// The server's suggested wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransportError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::RateLimited { message, retry_after: Some(after) } => {
                write!(f, "rate limited (HTTP 429, retry after {:.3}s): {message}", after.as_secs_f64())
            }
            TransportError::RateLimited { message, retry_after: None } => write!(f, "rate limited (HTTP 429): {message}"),
            TransportError::Auth { status, message } => write!(f, "authentication failed (HTTP {status}): {message}"),
            TransportError::ContextLength { message } => write!(f, "context window exceeded: {message}"),
            TransportError::InvalidRequest { status, message } => write!(f, "invalid request (HTTP {status}): {message}"),
            TransportError::Server { status, message } => write!(f, "server error (HTTP {status}): {message}"),
            TransportError::Timeout { message } => write!(f, "timed out: {message}"),
            TransportError::Connect { message } => write!(f, "connection failed: {message}"),
            TransportError::Protocol { message } => write!(f, "not a chat completion: {message}"),
            TransportError::Config { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for TransportError {}

/// `Retry-After` as seconds (`"1.5"`, `"2"`); HTTP dates are not used by LM providers and give `None`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["context length", "context_length", "maximum context", "context window", "too many tokens", "prompt is too long"]
        .iter()
        .any(|needle| m.contains(needle))
}

/// Classify a non-200 answer.
pub fn classify_error(status: u16, retry_after: Option<&str>, body: &[u8]) -> TransportError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            error.get("message").and_then(Value::as_str).map(str::to_string).or_else(|| error.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
    match status {
        429 => TransportError::RateLimited { message, retry_after: retry_after.and_then(parse_retry_after) },
        401 | 403 => TransportError::Auth { status, message },
        400 | 413 | 422 if is_context_length(&message) => TransportError::ContextLength { message },
        408 => TransportError::Timeout { message: format!("the server answered 408 Request Timeout: {message}") },
        400..=499 => TransportError::InvalidRequest { status, message },
        _ => TransportError::Server { status, message },
    }
}

/// Parse a 200 chat-completions body.
pub fn parse_completion(body: &[u8]) -> Result<ChatResponse, TransportError> {
    let protocol = |message: String| TransportError::Protocol { message };
    let value: Value = serde_json::from_slice(body).map_err(|e| protocol(format!("body is not JSON ({e})")))?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| protocol("no choices in the response".into()))?;
    let content = match choice.get("message").and_then(|m| m.get("content")) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => return Err(protocol(format!("message.content is {other}, not a string"))),
    };
    let count = |key: &str| value.get("usage").and_then(|u| u.get(key)).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatResponse {
        id: value.get("id").and_then(Value::as_str).map(str::to_string),
        model: value.get("model").and_then(Value::as_str).map(str::to_string),
        content,
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
        usage: Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            total_tokens: count("total_tokens"),
        },
    })
}

/// The JSON body of a chat-completions request: `model`, `messages`, then `params` (temperature, max_tokens...).
pub fn request_body(model: &str, messages: &[ChatMessage], params: &Map<String, Value>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        model: &'a str,
        messages: &'a [ChatMessage],
        #[serde(flatten)]
        params: &'a Map<String, Value>,
    }
    serde_json::to_vec(&Body { model, messages, params }).expect("JSON values serialize")
}

/// A pooled client for one OpenAI-compatible endpoint. Cheap to clone; use it from any tokio task.
/// Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct ChatClient {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatClient")
            .field("url", &self.url)
            .field("authorization", &self.authorization.as_ref().map(|_| "Bearer ***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ChatClient {
    /// A client for `api_base` (`http://host:port/v1`), sending `Authorization: Bearer <api_key>` when given.
    /// Must be created inside a tokio runtime context or used only from one.
    pub fn new(api_base: &str, api_key: Option<&str>, timeout: Duration) -> Result<ChatClient, TransportError> {
        let config = |message: String| TransportError::Config { message };
        if api_base.starts_with("https://") {
            return Err(config(format!(
                "{api_base}: the native transport speaks plain http:// only for now (no TLS); use the default \
                 transport for https endpoints"
            )));
        }
        let url: Uri = format!("{}/chat/completions", api_base.trim_end_matches('/'))
            .parse()
            .map_err(|e| config(format!("api_base {api_base:?} is not a URL: {e}")))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(config(format!("api_base {api_base:?} must look like http://host:port/v1")));
        }
        let authorization = match api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| config("the API key contains characters not allowed in an HTTP header".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        if timeout.is_zero() {
            return Err(config("timeout must be > 0".into()));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(ChatClient { client, url, authorization, timeout })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// POST a prepared body (see [`request_body`]) and parse the answer.
    pub async fn complete(&self, body: Vec<u8>) -> Result<ChatResponse, TransportError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::Config { message: e.to_string() })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| TransportError::Connect { message: format!("{}: {e}", self.url) })?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| TransportError::Connect { message: format!("reading the response: {e}") })?
                .to_bytes();
            Ok::<_, TransportError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout {
                message: format!("no answer from {} within {:.3}s", self.url, self.timeout.as_secs_f64()),
            })??;
        if status == 200 {
            parse_completion(&body)
        } else {
            Err(classify_error(status, retry_after.as_deref(), &body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering every connection with `response` (after `delay`).
    async fn serve(response: &'static str, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = socket.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/v1")
    }

    fn http(status: &str, headers: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    async fn ask(response: &'static str, delay: Duration, timeout: Duration) -> Result<ChatResponse, TransportError> {
        let base = serve(response, delay).await;
        let client = ChatClient::new(&base, Some("sk-test"), timeout).unwrap();
        let messages = [ChatMessage { role: "user".into(), content: "hi".into() }];
        client.complete(request_body("m", &messages, &Map::new())).await
    }

    #[tokio::test]
    async fn parses_a_completion() {
        let body = r#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let out = ask(http("200 OK", "", body), Duration::ZERO, Duration::from_secs(5)).await.unwrap();
        assert_eq!(out.content, "Paris");
        assert_eq!(out.id.as_deref(), Some("c1"));
        assert_eq!(out.usage, Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 });
    }

    #[tokio::test]
    async fn classifies_errors() {
        let limited = http("429 Too Many Requests", "Retry-After: 1.5\r\n", r#"{"error":{"message":"slow down"}}"#);
        let err = ask(limited, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(err.kind(), "rate_limit");
        let auth = http("401 Unauthorized", "", r#"{"error":{"message":"bad key"}}"#);
        assert_eq!(ask(auth, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err().kind(), "auth");
        let ctx = http("400 Bad Request", "", r#"{"error":{"message":"This model's maximum context length is 8192"}}"#);
        assert_eq!(ask(ctx, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err().kind(), "context_length");
        let server = http("503 Service Unavailable", "", "overloaded");
        let err = ask(server, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!((err.kind(), err.status()), ("server", Some(503)));
        assert!(err.to_string().contains("overloaded"));
        let bad = http("200 OK", "", r#"{"choices": []}"#);
        assert_eq!(ask(bad, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err().kind(), "protocol");
    }

    #[tokio::test]
    async fn times_out() {
        let ok = http("200 OK", "", "{}");
        let err = ask(ok, Duration::from_secs(3), Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(err.kind(), "timeout");
        assert!(err.to_string().contains("within 0.100s"), "{err}");
        let server_timeout = http("408 Request Timeout", "", "slow");
        let err = ask(server_timeout, Duration::ZERO, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("408"), "{err}");
    }

    #[test]
    fn rejects_bad_configuration() {
        let err = ChatClient::new("https://api.openai.com/v1", None, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("plain http://"), "{err}");
        assert_eq!(ChatClient::new("not a url", None, Duration::from_secs(1)).unwrap_err().kind(), "config");
        assert!(parse_retry_after("-1").is_none());
        assert!(parse_retry_after("1e300").is_none(), "absurd values are ignored, not a panic");
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_none());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let client = ChatClient::new("http://127.0.0.1:9/v1", Some("sk-SECRET-123"), Duration::from_secs(1)).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("SECRET") && text.contains("Bearer ***"), "{text}");
    }

    #[test]
    fn body_flattens_params() {
        let mut params = Map::new();
        params.insert("temperature".into(), Value::from(0.5));
        let body = request_body("m", &[ChatMessage { role: "user".into(), content: "x".into() }], &params);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["messages"][0]["content"], "x");
    }
}
