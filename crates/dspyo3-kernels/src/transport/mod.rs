//! LM HTTP transport (feature `transport`): chat requests to OpenAI-compatible and Anthropic endpoints on tokio +
//! hyper.
//!
//! One pooled client per endpoint ([`LmClient`]): HTTP/1.1 keep-alive, HTTP/2 (ALPN over TLS, or prior knowledge
//! on plain `http://` with [`ClientOptions::http2_prior_knowledge`]), TLS through rustls with the Mozilla root set,
//! connect and request timeouts, retries with full-jitter exponential backoff that honour `Retry-After`, request
//! bodies built and answers parsed in Rust ([`wire`]), and server-sent-event streaming parsed in Rust ([`sse`]).
//! Provider errors are classified the way LM clients need them (rate limit with `Retry-After`, auth, context
//! length, invalid request, server, timeout, connection, protocol), and answers are held to size limits
//! ([`ClientOptions::max_event_bytes`], [`ClientOptions::max_response_bytes`]) so a runaway server cannot grow the
//! client's memory without bound. Requests go through the proxy the `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY`
//! variables name ([`proxy`]).

pub mod proxy;
pub mod sse;
pub mod wire;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

pub use proxy::{Proxy, ProxyConfig};
pub use sse::{SseParser, StreamDecoder, StreamEvent, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_RESPONSE_BYTES};
pub use wire::{parse_completion, request_body, Choice, Completion, Usage, WireFormat};

/// Why a request failed, classified the way LM clients (and DSPy's error classes) need it.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// HTTP 429; `retry_after` from the `Retry-After` header.
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
    /// A 5xx (or Anthropic's 529 overloaded).
    Server {
        /// Status code.
        status: u16,
        /// Server message.
        message: String,
        /// Suggested wait (`Retry-After` on a 503 / 529).
        retry_after: Option<Duration>,
    },
    /// No complete answer in time: the client timeout expired, or the server answered 408.
    Timeout {
        /// What timed out.
        message: String,
    },
    /// Could not connect, or the connection broke.
    Connect {
        /// What happened.
        message: String,
    },
    /// The server answered 200 with something that is not a valid answer (or a stream ended early).
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The client or the request was configured wrongly (bad URL, an option the wire format cannot carry).
    Config {
        /// What to fix.
        message: String,
    },
    /// The answer outgrew a size limit: one stream event, or the whole response body. Never retried (the same
    /// request would get the same answer).
    TooLarge {
        /// What outgrew its limit: `a stream event` or `the response body`.
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
        /// The option that raises the limit: `max_event_bytes` or `max_response_bytes`.
        setting: &'static str,
    },
}

impl TransportError {
    /// A short stable name: `rate_limit`, `auth`, `context_length`, `invalid_request`, `server`, `timeout`,
    /// `connect`, `protocol`, `config`, `too_large`.
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
            TransportError::TooLarge { .. } => "too_large",
        }
    }

    /// HTTP status, when the server answered with an error.
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
            TransportError::RateLimited { retry_after, .. } | TransportError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth retrying: rate limits, 5xx, timeouts and broken connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::RateLimited { .. }
                | TransportError::Server { .. }
                | TransportError::Timeout { .. }
                | TransportError::Connect { .. }
        )
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
            TransportError::Server { status, message, .. } => write!(f, "server error (HTTP {status}): {message}"),
            TransportError::Timeout { message } => write!(f, "timed out: {message}"),
            TransportError::Connect { message } => write!(f, "connection failed: {message}"),
            TransportError::Protocol { message } => write!(f, "malformed answer: {message}"),
            TransportError::Config { message } => f.write_str(message),
            TransportError::TooLarge { what, limit, setting } => write!(
                f,
                "{what} is larger than the {setting} limit of {limit} bytes ({:.1} MiB); raise {setting} if the \
                 server's answers are meant to be that large",
                *limit as f64 / (1 << 20) as f64
            ),
        }
    }
}

impl std::error::Error for TransportError {}

/// `Retry-After` in seconds (`"1.5"`, `"2"`); negative, absurd and HTTP-date values give `None`.
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

/// Classify a non-200 answer from its status, `Retry-After` header and body (OpenAI's or Anthropic's error
/// envelope, or plain text).
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
        300..=399 => TransportError::InvalidRequest {
            status,
            message: format!("the server redirected; set api_base to the final URL ({message})"),
        },
        _ => TransportError::Server { status, message, retry_after: retry_after.and_then(parse_retry_after) },
    }
}

/// Retries of retryable failures ([`TransportError::is_retryable`]): attempt `k` (0-based) waits the server's
/// `Retry-After` when given, else a uniformly random time in `[0, min(max_backoff, base * 2^k)]` (full jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = one attempt).
    pub max_retries: u32,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited out: the error is returned at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `attempt + 1` after `error`, or `None` to give up.
    pub fn delay(&self, attempt: u32, error: &TransportError) -> Option<Duration> {
        if attempt >= self.max_retries || !error.is_retryable() {
            return None;
        }
        if let Some(after) = error.retry_after() {
            return (after <= self.max_retry_after).then_some(after);
        }
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max_backoff);
        Some(ceiling.mul_f64(fastrand::f64()))
    }
}

/// A W3C trace context to propagate: every attempt of a traced request carries
/// `traceparent: 00-{trace_id:032x}-{span_id:016x}-{flags:02x}` with a fresh span id of its own
/// ([`Attempt::span_id`]), so the server's parent id names exactly one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The 128-bit trace id (never 0).
    pub trace_id: u128,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Read a W3C `traceparent` value strictly: version `00`, then 32 and 16 lower-case hex digits that are not
    /// all zero, then two hex digits of flags, and nothing after. The parent span id it names is validated and
    /// dropped (each attempt gets its own). The error says what is wrong.
    pub fn parse(text: &str) -> Result<TraceContext, String> {
        const FORMAT: &str = "expected 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>";
        let parts: Vec<&str> = text.split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return Err(format!("traceparent {text:?} does not have 4 dash-separated fields ({FORMAT})"));
        };
        let hex = |field: &str, len: usize, what: &str| -> Result<(), String> {
            if field.len() != len || !field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(format!("traceparent {text:?}: the {what} must be {len} lower-case hex digits ({FORMAT})"));
            }
            Ok(())
        };
        hex(version, 2, "version")?;
        if version != "00" {
            return Err(format!("traceparent {text:?}: only version 00 is supported ({FORMAT})"));
        }
        hex(trace, 32, "trace id")?;
        hex(span, 16, "span id")?;
        hex(flags, 2, "flags")?;
        let trace_id = u128::from_str_radix(trace, 16).map_err(|e| e.to_string())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|e| e.to_string())?;
        if trace_id == 0 || span_id == 0 {
            return Err(format!("traceparent {text:?}: the trace id and the span id must not be all zeros"));
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|e| e.to_string())?;
        Ok(TraceContext { trace_id, flags })
    }

    /// The `traceparent` value for a request made as span `span_id`.
    pub fn traceparent(&self, span_id: u64) -> String {
        format!("00-{:032x}-{span_id:016x}-{:02x}", self.trace_id, self.flags)
    }
}

/// One HTTP attempt of a request (the first try or a retry), as a client span would record it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The attempt's own random span id (never 0); the one its `traceparent` carried, when traced.
    pub span_id: u64,
    /// When the attempt started, in nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// When it ended (answer read, or stream headers received, or failed), in nanoseconds since the Unix epoch.
    pub end_unix_ns: u64,
    /// The HTTP status the server answered with, if it answered.
    pub status: Option<u16>,
    /// [`TransportError::kind`] when the attempt failed.
    pub error_kind: Option<&'static str>,
    /// The wait before the next attempt, when this one is retried.
    pub retry_delay: Option<Duration>,
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How to reach one endpoint.
#[derive(Clone)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://api.openai.com/v1`, `http://127.0.0.1:8000/v1`, `https://api.anthropic.com/v1`.
    pub api_base: String,
    /// API key: sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic). Never shown by `Debug`.
    pub api_key: Option<String>,
    /// Wire format.
    pub wire: WireFormat,
    /// Deadline for a whole non-streaming exchange, and for each gap between stream chunks.
    pub timeout: Duration,
    /// Deadline for opening a connection.
    pub connect_timeout: Duration,
    /// Retries.
    pub retry: RetryPolicy,
    /// Speak HTTP/2 without TLS (h2c prior knowledge), for servers that only take HTTP/2. Over `https://` HTTP/2
    /// is negotiated by ALPN anyway.
    pub http2_prior_knowledge: bool,
    /// Extra request headers (Azure's `api-key`, an `anthropic-beta` flag, ...).
    pub headers: Vec<(String, String)>,
    /// PEM certificates trusted besides the Mozilla roots (a corporate or self-signed CA).
    pub ca_certs_pem: Option<Vec<u8>>,
    /// Largest stream event accepted (its `data` payload, or a line not finished yet), in bytes.
    pub max_event_bytes: u64,
    /// Largest response body accepted (a whole stream, or a non-streamed answer), in bytes.
    pub max_response_bytes: u64,
    /// How much of an error answer's body (4xx / 5xx) is read for its message, in bytes; the rest is dropped with
    /// the connection (an error body is truncated, never refused).
    pub max_error_bytes: u64,
    /// The proxy settings (by default the `*_proxy` variables when the options were made; see [`proxy`]).
    pub proxy: ProxyConfig,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("wire", &self.wire)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_error_bytes", &self.max_error_bytes)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Options for `api_base` with the defaults: no key, OpenAI wire format, 600 s timeout, 10 s connect timeout,
    /// 3 retries, HTTP/1.1 on plain http, 16 MiB per stream event, 128 MiB per response body, 64 KiB read of an
    /// error body, and the proxy
    /// variables of the environment ([`ProxyConfig::from_env`]).
    pub fn new(api_base: impl Into<String>) -> ClientOptions {
        ClientOptions {
            api_base: api_base.into(),
            api_key: None,
            wire: WireFormat::OpenAi,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            http2_prior_knowledge: false,
            headers: Vec::new(),
            ca_certs_pem: None,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_error_bytes: DEFAULT_MAX_ERROR_BYTES,
            proxy: ProxyConfig::from_env(),
        }
    }
}

/// The default for [`ClientOptions::max_error_bytes`]: 64 KiB of an error answer's body is read for its message.
pub const DEFAULT_MAX_ERROR_BYTES: u64 = 64 << 10;

/// The Anthropic API version sent in `anthropic-version`.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A pooled client for one endpoint. Cheap to clone; use it from any task of the tokio runtime it was built in.
/// Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct LmClient {
    client: Client<HttpsConnector<proxy::Connector>, Full<Bytes>>,
    url: Uri,
    proxy: Option<Uri>,
    wire: WireFormat,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    retry: RetryPolicy,
    max_event_bytes: u64,
    max_response_bytes: u64,
    max_error_bytes: usize,
}

impl fmt::Debug for LmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LmClient")
            .field("url", &self.url)
            .field("proxy", &self.proxy)
            .field("wire", &self.wire)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// An error and its causes, `outer: inner: innermost` (hyper's own message is only "client error (Connect)").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn config(message: String) -> TransportError {
    TransportError::Config { message }
}

fn header_value(value: &str, what: &str, sensitive: bool) -> Result<HeaderValue, TransportError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| config(format!("{what} contains characters not allowed in an HTTP header")))?;
    value.set_sensitive(sensitive);
    Ok(value)
}

/// rustls settings: the Mozilla roots plus `extra_pem` certificates, ring crypto, TLS 1.2 and 1.3.
fn tls_config(extra_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, TransportError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| config(format!("the CA certificate file is not valid PEM: {e}")))?;
            roots.add(cert).map_err(|e| config(format!("a CA certificate was refused: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(config("the CA certificate file holds no PEM certificate".into()));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl LmClient {
    /// A client for `options`. Must be called inside a tokio runtime context (hyper's pool spawns onto it).
    pub fn new(options: &ClientOptions) -> Result<LmClient, TransportError> {
        let base = options.api_base.trim_end_matches('/');
        let url: Uri = format!("{base}{}", options.wire.path())
            .parse()
            .map_err(|e| config(format!("api_base {:?} is not a URL: {e}", options.api_base)))?;
        if !matches!(url.scheme_str(), Some("http") | Some("https")) || url.host().is_none() {
            return Err(config(format!(
                "api_base {:?} must look like https://host/v1 or http://host:port/v1",
                options.api_base
            )));
        }
        if options.timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(config("timeout and connect_timeout must be > 0".into()));
        }
        if options.max_event_bytes == 0 || options.max_response_bytes == 0 {
            return Err(config("max_event_bytes and max_response_bytes must be > 0".into()));
        }
        let mut headers = vec![
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (USER_AGENT, HeaderValue::from_static(concat!("dspyo3-native/", env!("CARGO_PKG_VERSION")))),
        ];
        match (options.wire, &options.api_key) {
            (WireFormat::OpenAi, Some(key)) => headers.push((AUTHORIZATION, header_value(&format!("Bearer {key}"), "the API key", true)?)),
            (WireFormat::Anthropic, Some(key)) => headers.push((HeaderName::from_static("x-api-key"), header_value(key, "the API key", true)?)),
            (_, None) => {}
        }
        if options.wire == WireFormat::Anthropic && !options.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("anthropic-version")) {
            headers.push((HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION)));
        }
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| config(format!("{name:?} is not an HTTP header name")))?;
            let sensitive = matches!(name.as_str(), "authorization" | "api-key" | "x-api-key");
            headers.retain(|(existing, _)| *existing != name); // a custom header replaces the default one
            headers.push((name.clone(), header_value(value, &format!("header {name}"), sensitive)?));
        }
        let via = options.proxy.proxy_for(&url)?;
        let https = url.scheme_str() == Some("https");
        if let (Some(proxy), false) = (&via, https) {
            // plain http through a forwarding proxy: its credentials go on every request
            if let Some(auth) = &proxy.authorization {
                headers.push((hyper::header::PROXY_AUTHORIZATION, auth.clone()));
            }
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(options.ca_certs_pem.as_deref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(proxy::Connector::new(http, via.as_ref(), https));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(options.http2_prior_knowledge)
            .build(connector);
        Ok(LmClient {
            client,
            url,
            proxy: via.map(|p| p.uri),
            wire: options.wire,
            headers,
            timeout: options.timeout,
            retry: options.retry,
            max_event_bytes: options.max_event_bytes,
            max_response_bytes: options.max_response_bytes,
            max_error_bytes: usize::try_from(options.max_error_bytes).unwrap_or(usize::MAX),
        })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The proxy requests go through, if any.
    pub fn proxy(&self) -> Option<&Uri> {
        self.proxy.as_ref()
    }

    /// The wire format.
    pub fn wire(&self) -> WireFormat {
        self.wire
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }

    fn request(&self, body: Bytes, extra: Option<&(HeaderName, HeaderValue)>) -> Result<Request<Full<Bytes>>, TransportError> {
        let mut request = Request::builder().method(Method::POST).uri(self.url.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        request.body(Full::new(body)).map_err(|e| config(e.to_string()))
    }

    async fn send(&self, body: Bytes, extra: Option<&(HeaderName, HeaderValue)>) -> Result<Response<Incoming>, TransportError> {
        let response = self
            .client
            .request(self.request(body, extra)?)
            .await
            .map_err(|e| TransportError::Connect { message: format!("{}: {}", self.url, chain(&e)) })?;
        Ok(response)
    }

    async fn read_error(&self, response: Response<Incoming>) -> TransportError {
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        // an error body only feeds a message: its first max_error_bytes are read, the rest is dropped
        let limit = self.max_error_bytes;
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while kept.len() < limit {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        kept.extend_from_slice(&data[..data.len().min(limit - kept.len())]);
                    }
                }
                _ => break,
            }
        }
        classify_error(status, retry_after.as_deref(), &kept)
    }

    /// Read a whole answer body, refusing one over `max_response_bytes` (by its `Content-Length` before reading,
    /// else as soon as the bytes read pass the limit).
    async fn read_body(&self, mut body: Incoming) -> Result<Vec<u8>, TransportError> {
        use hyper::body::Body as _;

        let limit = self.max_response_bytes;
        let too_large = || TransportError::TooLarge { what: "the response body", limit, setting: "max_response_bytes" };
        let hint = body.size_hint();
        if hint.lower() > limit {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(hint.exact().unwrap_or(0).min(limit).min(1 << 24) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| TransportError::Connect { message: format!("reading the answer from {}: {e}", self.url) })?;
            if let Ok(data) = frame.into_data() {
                if (out.len() + data.len()) as u64 > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    fn timed_out(&self) -> TransportError {
        TransportError::Timeout { message: format!("no answer from {} within {:.3}s", self.url, self.timeout.as_secs_f64()) }
    }

    /// Send `body` and return the status and the answer's body once the status says success (else the
    /// classified error).
    async fn open(&self, body: Bytes, extra: Option<&(HeaderName, HeaderValue)>) -> Result<(u16, Incoming), TransportError> {
        let response = self.send(body, extra).await?;
        if !response.status().is_success() {
            return Err(self.read_error(response).await);
        }
        Ok((response.status().as_u16(), response.into_body()))
    }

    /// Run `once` until it succeeds or the [`RetryPolicy`] gives up, sleeping between attempts. Each attempt is
    /// pushed onto `attempts` with a fresh span id; with a `trace`, `once` gets the `traceparent` header naming it.
    async fn with_retries<T, F, Fut>(
        &self,
        trace: Option<&TraceContext>,
        attempts: &mut Vec<Attempt>,
        mut once: F,
    ) -> Result<T, TransportError>
    where
        F: FnMut(Option<(HeaderName, HeaderValue)>) -> Fut,
        Fut: std::future::Future<Output = Result<(u16, T), TransportError>>,
    {
        let mut attempt = 0;
        loop {
            let span_id = fastrand::u64(1..);
            let extra = match trace {
                Some(trace) => Some((
                    HeaderName::from_static("traceparent"),
                    HeaderValue::from_str(&trace.traceparent(span_id)).map_err(|e| config(e.to_string()))?,
                )),
                None => None,
            };
            let start_unix_ns = unix_ns();
            let outcome = once(extra).await;
            let mut record =
                Attempt { span_id, start_unix_ns, end_unix_ns: unix_ns(), status: None, error_kind: None, retry_delay: None };
            match outcome {
                Ok((status, done)) => {
                    record.status = Some(status);
                    attempts.push(record);
                    return Ok(done);
                }
                Err(error) => {
                    record.status = error.status();
                    record.error_kind = Some(error.kind());
                    let delay = self.retry.delay(attempt, &error);
                    record.retry_delay = delay;
                    attempts.push(record);
                    match delay {
                        Some(wait) => {
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        None => return Err(error),
                    }
                }
            }
        }
    }

    async fn attempt(&self, body: Bytes, extra: Option<(HeaderName, HeaderValue)>) -> Result<(u16, Completion), TransportError> {
        let exchange = async {
            let (status, answer) = self.open(body, extra.as_ref()).await?;
            let answer = self.read_body(answer).await?;
            Ok((status, parse_completion(self.wire, &answer)?))
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| self.timed_out())?
    }

    /// POST a prepared body (see [`request_body`]) and parse the answer, retrying per the [`RetryPolicy`].
    pub async fn complete(&self, body: Vec<u8>) -> Result<Completion, TransportError> {
        self.complete_traced(body, None).await.0
    }

    /// [`LmClient::complete`], also returning every HTTP attempt made (one, plus one per retry). With a `trace`,
    /// each attempt sends a `traceparent` carrying that attempt's [`Attempt::span_id`].
    pub async fn complete_traced(
        &self,
        body: Vec<u8>,
        trace: Option<&TraceContext>,
    ) -> (Result<Completion, TransportError>, Vec<Attempt>) {
        let body = Bytes::from(body);
        let mut attempts = Vec::new();
        let result = self.with_retries(trace, &mut attempts, |extra| self.attempt(body.clone(), extra)).await;
        (result, attempts)
    }

    /// POST a streaming request (a body built with `stream = true`). Failures before the first byte of the
    /// stream (429, 5xx, connection errors, a timeout waiting for headers) are retried per the
    /// [`RetryPolicy`]; once events flow, an error ends the stream (nothing visible is ever replayed).
    pub async fn stream(&self, body: Vec<u8>) -> Result<EventStream, TransportError> {
        self.stream_traced(body, None).await.0
    }

    /// [`LmClient::stream`], also returning the HTTP attempts made to open the stream (each ends when the
    /// answer's headers arrive or the attempt fails). With a `trace`, each attempt sends a `traceparent`
    /// carrying that attempt's [`Attempt::span_id`].
    pub async fn stream_traced(
        &self,
        body: Vec<u8>,
        trace: Option<&TraceContext>,
    ) -> (Result<EventStream, TransportError>, Vec<Attempt>) {
        let body = Bytes::from(body);
        let mut attempts = Vec::new();
        let opened = self
            .with_retries(trace, &mut attempts, |extra| {
                let body = body.clone();
                async move {
                    tokio::time::timeout(self.timeout, self.open(body, extra.as_ref())).await.map_err(|_| self.timed_out())?
                }
            })
            .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => return (Err(error), attempts),
        };
        let stream = EventStream {
            body: opened,
            parser: SseParser::with_limits(self.max_event_bytes, self.max_response_bytes),
            decoder: StreamDecoder::new(self.wire),
            idle_timeout: self.timeout,
            done: false,
            url: self.url.to_string(),
        };
        (Ok(stream), attempts)
    }
}

/// An open response stream: [`EventStream::next`] yields [`StreamEvent`]s, `Start` first and `End` last.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    parser: SseParser,
    decoder: StreamDecoder,
    idle_timeout: Duration,
    done: bool,
    url: String,
}

impl EventStream {
    /// The next event, `None` after `End`, or the error that broke the stream (after which it yields `None`).
    pub async fn next(&mut self) -> Option<Result<StreamEvent, TransportError>> {
        loop {
            if let Some(event) = self.decoder.events.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let frame = match tokio::time::timeout(self.idle_timeout, self.body.frame()).await {
                Err(_) => {
                    return self.fail(TransportError::Timeout {
                        message: format!("the stream from {} was silent for {:.3}s", self.url, self.idle_timeout.as_secs_f64()),
                    })
                }
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let payloads = match self.parser.feed(&data) {
                            Ok(payloads) => payloads,
                            Err(e) => return self.fail(e),
                        };
                        for payload in payloads {
                            if let Err(e) = self.decoder.push(&payload) {
                                return self.fail(e);
                            }
                        }
                        if self.decoder.finished() {
                            self.done = true;
                        }
                    }
                }
                Some(Err(e)) => {
                    return self.fail(TransportError::Connect { message: format!("the stream from {} broke: {e}", self.url) })
                }
                None => {
                    self.done = true;
                    if let Some(payload) = self.parser.finish() {
                        if let Err(e) = self.decoder.push(&payload) {
                            return self.fail(e);
                        }
                    }
                    if let Err(e) = self.decoder.close() {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: TransportError) -> Option<Result<StreamEvent, TransportError>> {
        self.done = true;
        self.decoder.events.clear();
        Some(Err(error))
    }
}

#[cfg(test)]
mod tests;
