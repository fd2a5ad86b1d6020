use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A scripted HTTP/1.1 server: each connection reads one request and gets the next scripted answer
/// (`(raw response, delay)`); the raw requests are kept.
struct Scripted {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve(answers: Vec<(String, Duration)>) -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let queue = Arc::new(Mutex::new(VecDeque::from(answers)));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (queue, seen) = (queue.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + length {
                            seen.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let next = queue.lock().unwrap().pop_front();
                let Some((response, delay)) = next else { return };
                tokio::time::sleep(delay).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Scripted { base: format!("http://{addr}/v1"), requests }
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

const OK: &str = r#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn options(base: &str, retries: u32) -> ClientOptions {
    let mut options = ClientOptions::new(base);
    options.api_key = Some("sk-test".into());
    options.timeout = Duration::from_secs(5);
    options.retry = RetryPolicy { max_retries: retries, base: Duration::from_millis(10), ..RetryPolicy::default() };
    options
}

fn body(wire: WireFormat, stream: bool) -> Vec<u8> {
    request_body(wire, "m", &[json!({"role": "user", "content": "hi"})], &Map::new(), stream).unwrap()
}

async fn ask(answers: Vec<(String, Duration)>, retries: u32) -> Result<Completion, TransportError> {
    let server = serve(answers).await;
    LmClient::new(&options(&server.base, retries)).unwrap().complete(body(WireFormat::OpenAi, false)).await
}

#[tokio::test]
async fn completes_and_sends_the_key() {
    let server = serve(vec![(http("200 OK", "", OK), Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 0)).unwrap();
    let out = client.complete(body(WireFormat::OpenAi, false)).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    assert_eq!(out.usage, Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 });
    let request = server.requests.lock().unwrap()[0].clone();
    assert!(request.starts_with("POST /v1/chat/completions"), "{request}");
    assert!(request.to_ascii_lowercase().contains("authorization: bearer sk-test"), "{request}");
}

#[tokio::test]
async fn classifies_errors() {
    let limited = http("429 Too Many Requests", "Retry-After: 1.5\r\n", r#"{"error":{"message":"slow down"}}"#);
    let err = ask(vec![(limited, Duration::ZERO)], 0).await.unwrap_err();
    assert_eq!((err.kind(), err.retry_after()), ("rate_limit", Some(Duration::from_millis(1500))));
    let auth = http("401 Unauthorized", "", r#"{"error":{"message":"bad key"}}"#);
    assert_eq!(ask(vec![(auth, Duration::ZERO)], 3).await.unwrap_err().kind(), "auth", "auth is not retried");
    let ctx = http("400 Bad Request", "", r#"{"error":{"message":"This model's maximum context length is 8192"}}"#);
    assert_eq!(ask(vec![(ctx, Duration::ZERO)], 0).await.unwrap_err().kind(), "context_length");
    let server = http("503 Service Unavailable", "", "overloaded");
    let err = ask(vec![(server, Duration::ZERO)], 0).await.unwrap_err();
    assert_eq!((err.kind(), err.status()), ("server", Some(503)));
    assert!(err.to_string().contains("overloaded"));
    let bad = http("200 OK", "", r#"{"choices": [ this is not json"#);
    assert_eq!(ask(vec![(bad, Duration::ZERO)], 0).await.unwrap_err().kind(), "protocol");
}

#[tokio::test]
async fn retries_honour_retry_after_then_succeed() {
    let limited = http("429 Too Many Requests", "Retry-After: 0.3\r\n", r#"{"error":{"message":"slow"}}"#);
    let failing = http("500 Internal Server Error", "", r#"{"error":{"message":"boom"}}"#);
    let started = Instant::now();
    let out = ask(vec![(limited, Duration::ZERO), (failing, Duration::ZERO), (http("200 OK", "", OK), Duration::ZERO)], 3)
        .await
        .unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    assert!(started.elapsed() >= Duration::from_millis(300), "waited the Retry-After: {:?}", started.elapsed());
}

#[tokio::test]
async fn gives_up_after_the_retries_and_on_long_retry_after() {
    let failing = || (http("502 Bad Gateway", "", "down"), Duration::ZERO);
    let err = ask(vec![failing(), failing(), failing()], 2).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    let long = http("429 Too Many Requests", "Retry-After: 3600\r\n", "{}");
    // reported, not waited: the one scripted reply is all the server has (a guard of 60 s, not 3600, in case)
    let err = tokio::time::timeout(Duration::from_secs(60), ask(vec![(long, Duration::ZERO)], 5))
        .await
        .expect("an hour-long Retry-After is reported, not waited")
        .unwrap_err();
    assert_eq!(err.kind(), "rate_limit");
}

#[tokio::test]
async fn times_out() {
    let server = serve(vec![(http("200 OK", "", OK), Duration::from_secs(3))]).await;
    let mut options = options(&server.base, 0);
    options.timeout = Duration::from_millis(100);
    let err = LmClient::new(&options).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!(err.kind(), "timeout");
    assert!(err.to_string().contains("within 0.100s"), "{err}");
    let err = ask(vec![(http("408 Request Timeout", "", "slow"), Duration::ZERO)], 0).await.unwrap_err();
    assert!(err.to_string().contains("408"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let err = LmClient::new(&options(&base, 0)).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
}

fn sse(events: &[&str]) -> String {
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n{body}")
}

#[tokio::test]
async fn streams_openai_and_retries_before_the_first_byte() {
    let stream = sse(&[
        r#"{"id":"s1","model":"m","choices":[{"delta":{"content":"Pa"}}]}"#,
        r#"{"choices":[{"delta":{"content":"ris"},"finish_reason":"stop"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}"#,
        "[DONE]",
    ]);
    let limited = http("429 Too Many Requests", "Retry-After: 0.05\r\n", "{}");
    let server = serve(vec![(limited, Duration::ZERO), (stream, Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 1)).unwrap();
    let mut events = client.stream(body(WireFormat::OpenAi, true)).await.unwrap();
    let mut text = String::new();
    let mut last = None;
    while let Some(event) = events.next().await {
        match event.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            other => last = Some(other),
        }
    }
    assert_eq!(text, "Paris");
    let usage = Usage { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4 };
    assert_eq!(last, Some(StreamEvent::End { finish_reason: Some("stop".into()), usage }));
    assert!(server.requests.lock().unwrap()[1].contains("\"stream\":true"));
}

#[tokio::test]
async fn a_cut_stream_is_an_error() {
    let cut = sse(&[r#"{"id":"s1","choices":[{"delta":{"content":"Pa"}}]}"#]);
    let server = serve(vec![(cut, Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 0)).unwrap();
    let mut events = client.stream(body(WireFormat::OpenAi, true)).await.unwrap();
    let mut results = Vec::new();
    while let Some(event) = events.next().await {
        results.push(event);
    }
    assert!(matches!(results.last(), Some(Err(TransportError::Protocol { .. }))), "{results:?}");
}

#[tokio::test]
async fn anthropic_headers_and_answer() {
    let answer = r#"{"id":"msg_1","type":"message","model":"claude","content":[{"type":"text","text":"Paris"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#;
    let server = serve(vec![(http("200 OK", "", answer), Duration::ZERO)]).await;
    let mut options = options(&server.base, 0);
    options.wire = WireFormat::Anthropic;
    let client = LmClient::new(&options).unwrap();
    let out = client.complete(body(WireFormat::Anthropic, false)).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    assert_eq!(out.usage.total_tokens, 6);
    let request = server.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(request.starts_with("post /v1/messages"), "{request}");
    assert!(request.contains("x-api-key: sk-test") && request.contains("anthropic-version: 2023-06-01"), "{request}");
    assert!(!request.contains("authorization:"), "{request}");
}

#[tokio::test]
async fn speaks_http2_with_prior_knowledge() {
    use hyper::server::conn::http2;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    assert_eq!(request.version(), hyper::Version::HTTP_2);
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(OK.as_bytes()))))
                });
                let _ = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
            });
        }
    });
    let mut options = options(&format!("http://{addr}/v1"), 0);
    options.http2_prior_knowledge = true;
    let client = LmClient::new(&options).unwrap();
    for _ in 0..3 {
        let out = client.complete(body(WireFormat::OpenAi, false)).await.unwrap();
        assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    }
}

#[tokio::test]
async fn overloaded_honours_retry_after_and_redirects_are_not_retried() {
    let overloaded = http("529 Overloaded", "Retry-After: 0.2\r\n", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
    let started = Instant::now();
    let out = ask(vec![(overloaded, Duration::ZERO), (http("200 OK", "", OK), Duration::ZERO)], 1).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    assert!(started.elapsed() >= Duration::from_millis(200), "waited the 529's Retry-After");
    let moved = http("301 Moved Permanently", "Location: https://elsewhere/v1\r\n", "");
    let err = ask(vec![(moved, Duration::ZERO)], 3).await.unwrap_err();
    assert_eq!((err.kind(), err.status()), ("invalid_request", Some(301)));
    assert!(err.to_string().contains("api_base"), "{err}");
}

#[tokio::test]
async fn custom_headers_replace_the_defaults() {
    let server = serve(vec![(http("200 OK", "", OK), Duration::ZERO)]).await;
    let mut options = options(&server.base, 0);
    options.headers = vec![("Authorization".into(), "Bearer gateway-token".into()), ("User-Agent".into(), "mine".into())];
    LmClient::new(&options).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap();
    let request = server.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert_eq!(request.matches("authorization:").count(), 1, "{request}");
    assert!(request.contains("bearer gateway-token") && !request.contains("sk-test"), "{request}");
    assert_eq!(request.matches("user-agent:").count(), 1, "{request}");
}

#[test]
fn rejects_bad_configuration() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    assert_eq!(LmClient::new(&ClientOptions::new("not a url")).unwrap_err().kind(), "config");
    assert_eq!(LmClient::new(&ClientOptions::new("ftp://x/v1")).unwrap_err().kind(), "config");
    assert!(LmClient::new(&ClientOptions::new("https://api.openai.com/v1")).is_ok(), "https is supported");
    let mut bad_key = ClientOptions::new("http://127.0.0.1:9/v1");
    bad_key.api_key = Some("line\nbreak".into());
    assert!(LmClient::new(&bad_key).unwrap_err().to_string().contains("API key"));
    assert!(parse_retry_after("-1").is_none());
    assert!(parse_retry_after("1e300").is_none(), "absurd values are ignored, not a panic");
    assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_none());
}

#[test]
fn debug_never_shows_the_key() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let mut options = ClientOptions::new("http://127.0.0.1:9/v1");
    options.api_key = Some("sk-SECRET-123".into());
    let client = LmClient::new(&options).unwrap();
    for text in [format!("{client:?}"), format!("{options:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[test]
fn backoff_is_jittered_and_bounded() {
    let policy = RetryPolicy { max_retries: 10, base: Duration::from_millis(100), max_backoff: Duration::from_secs(1), ..RetryPolicy::default() };
    let server = TransportError::Server { status: 500, message: String::new(), retry_after: None };
    for attempt in 0..10 {
        let wait = policy.delay(attempt, &server).unwrap();
        assert!(wait <= Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(1)));
    }
    assert!(policy.delay(10, &server).is_none());
    let waits: std::collections::HashSet<_> = (0..20).map(|_| policy.delay(3, &server).unwrap()).collect();
    assert!(waits.len() > 1, "jittered");
    let auth = TransportError::Auth { status: 401, message: String::new() };
    assert!(policy.delay(0, &auth).is_none());
}

/// An HTTPS server with a fresh self-signed certificate for `localhost`, answering [`OK`] over HTTP/1.1 or
/// HTTP/2 (whichever ALPN picks); returns its base URL, the certificate as PEM, and the versions it served.
async fn serve_tls() -> (String, String, Arc<Mutex<Vec<hyper::Version>>>) {
    serve_tls_as("localhost").await
}

/// [`serve_tls`] with a certificate for `name`, its base URL naming `name` (which only a proxy can resolve unless
/// it is `localhost`).
async fn serve_tls_as(name: &str) -> (String, String, Arc<Mutex<Vec<hyper::Version>>>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else { return };
                let service = service_fn(move |request: Request<Incoming>| {
                    seen.lock().unwrap().push(request.version());
                    async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(OK.as_bytes())))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (format!("https://{name}:{port}/v1"), pem, versions)
}

#[tokio::test]
async fn speaks_tls_and_negotiates_http2() {
    let (base, pem, versions) = serve_tls().await;
    let mut trusted = options(&base, 0);
    trusted.ca_certs_pem = Some(pem.into_bytes());
    let client = LmClient::new(&trusted).unwrap();
    for _ in 0..2 {
        let out = client.complete(body(WireFormat::OpenAi, false)).await.unwrap();
        assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    }
    assert_eq!(*versions.lock().unwrap(), vec![hyper::Version::HTTP_2; 2], "ALPN picked HTTP/2");
    // the same server with only the public roots: the certificate is refused, nothing is sent
    let err = LmClient::new(&options(&base, 0)).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
    assert!(err.to_string().to_ascii_lowercase().contains("certificate"), "{err}");
    assert_eq!(versions.lock().unwrap().len(), 2);
}

#[test]
fn a_bad_ca_file_is_a_config_error() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let mut options = ClientOptions::new("https://localhost:1/v1");
    options.ca_certs_pem = Some(b"not a certificate".to_vec());
    let err = LmClient::new(&options).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn an_oversized_answer_is_refused_and_not_retried() {
    let big = format!(
        r#"{{"id":"c1","model":"m","choices":[{{"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}]}}"#,
        "x".repeat(4096)
    );
    // known length (refused from the header) and chunked without a length (refused while reading)
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    for answer in [http("200 OK", "", &big), chunked] {
        let server = serve(vec![(answer.clone(), Duration::ZERO), (answer, Duration::ZERO)]).await;
        let mut options = options(&server.base, 3);
        options.max_response_bytes = 1000;
        let err = LmClient::new(&options).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
        assert_eq!(err, TransportError::TooLarge { what: "the response body", limit: 1000, setting: "max_response_bytes" });
        assert_eq!(server.requests.lock().unwrap().len(), 1, "a too-large answer is not retried");
    }
    // the same answer within the limit
    let server = serve(vec![(http("200 OK", "", &big), Duration::ZERO)]).await;
    let out = LmClient::new(&options(&server.base, 0)).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref().map(str::len), Some(4096));
}

#[tokio::test]
async fn an_oversized_stream_event_ends_the_stream() {
    let huge = format!(r#"{{"id":"s1","model":"m","choices":[{{"delta":{{"content":"{}"}}}}]}}"#, "x".repeat(5000));
    let server = serve(vec![(sse(&[&huge, "[DONE]"]), Duration::ZERO)]).await;
    let mut options = options(&server.base, 3);
    options.max_event_bytes = 4096;
    let client = LmClient::new(&options).unwrap();
    let mut events = client.stream(body(WireFormat::OpenAi, true)).await.unwrap();
    let mut results = Vec::new();
    while let Some(event) = events.next().await {
        results.push(event);
    }
    let expected = TransportError::TooLarge { what: "a stream event", limit: 4096, setting: "max_event_bytes" };
    assert_eq!(results, vec![Err(expected)]);
    let mut zero = ClientOptions::new(&server.base);
    zero.max_event_bytes = 0;
    assert_eq!(LmClient::new(&zero).unwrap_err().kind(), "config");
}

/// A forwarding proxy on loopback that resolves every host to 127.0.0.1: `CONNECT host:port` opens a tunnel to
/// `127.0.0.1:port`, an absolute-form request is passed on to `127.0.0.1:port` as it came. Returns its
/// `http://` URL and the request heads it received.
async fn serve_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = client.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                seen.lock().unwrap().push(head.clone());
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let authority = target.strip_prefix("http://").unwrap_or(&target).split('/').next().unwrap_or("").to_string();
                let port = authority.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(80);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
                if head.starts_with("CONNECT ") {
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                    let _ = client.write_all(&buf[head_end..]).await;
                } else {
                    let _ = upstream.write_all(&buf).await;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://{addr}"), heads)
}

#[tokio::test]
async fn plain_http_goes_through_the_proxy_in_absolute_form() {
    let (proxy, heads) = serve_proxy().await;
    let server = serve(vec![(http("200 OK", "", OK), Duration::ZERO)]).await;
    let port = server.base.rsplit(':').next().unwrap().trim_end_matches("/v1").to_string();
    let mut via = options(&format!("http://llm.test:{port}/v1"), 0);
    via.proxy = ProxyConfig { http: Some(proxy.replace("http://", "http://joe:s%3Acret@")), ..ProxyConfig::none() };
    let client = LmClient::new(&via).unwrap();
    assert_eq!(client.proxy().map(|p| p.to_string()), Some(format!("{proxy}/")));
    let out = client.complete(body(WireFormat::OpenAi, false)).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with(&format!("POST http://llm.test:{port}/v1/chat/completions HTTP/1.1\r\n")), "{}", heads[0]);
    // base64("joe:s:cret")
    assert!(heads[0].contains("proxy-authorization: Basic am9lOnM6Y3JldA==\r\n"), "{}", heads[0]);
    assert!(format!("{client:?}").contains("proxy"));
}

#[tokio::test]
async fn https_goes_through_a_connect_tunnel_and_no_proxy_bypasses_it() {
    let (proxy, heads) = serve_proxy().await;
    let (base, pem, versions) = serve_tls_as("llm.test").await;
    let mut via = options(&base, 0);
    via.ca_certs_pem = Some(pem.into_bytes());
    via.proxy = ProxyConfig { https: Some(proxy.clone()), no_proxy: Some("other.test".into()), ..ProxyConfig::none() };
    let out = LmClient::new(&via).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap();
    assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
    let port = base.rsplit(':').next().unwrap().trim_end_matches("/v1").to_string();
    assert_eq!(heads.lock().unwrap().len(), 1);
    assert!(heads.lock().unwrap()[0].starts_with(&format!("CONNECT llm.test:{port} HTTP/1.1\r\n")));
    assert_eq!(versions.lock().unwrap().len(), 1, "TLS ran end to end through the tunnel");
    // NO_PROXY names the host: a direct connection, which cannot resolve llm.test
    via.proxy.no_proxy = Some("example.com, .test".into());
    let client = LmClient::new(&via).unwrap();
    assert_eq!(client.proxy(), None);
    let err = client.complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
    assert_eq!(heads.lock().unwrap().len(), 1, "the bypassed request never reached the proxy");
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_a_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut chunk = [0u8; 4096];
            let _ = socket.read(&mut chunk).await;
            let _ = socket.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
        }
    });
    let mut via = options("https://api.example.com/v1", 0);
    via.proxy = ProxyConfig { https: Some(format!("http://{addr}")), ..ProxyConfig::none() };
    let err = LmClient::new(&via).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
    assert!(err.to_string().contains("proxy"), "{err}");
    let mut bad = options("https://api.example.com/v1", 0);
    bad.proxy = ProxyConfig { https: Some("socks5://p:1080".into()), ..ProxyConfig::none() };
    assert_eq!(LmClient::new(&bad).unwrap_err().kind(), "config");
}

#[tokio::test]
async fn an_error_body_is_read_up_to_max_error_bytes() {
    let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "e".repeat(10_000));
    let answer = || (http("500 Internal Server Error", "", &long), Duration::ZERO);
    let server = serve(vec![answer(), answer()]).await;
    let mut small = options(&server.base, 0);
    small.max_error_bytes = 100;
    let err = LmClient::new(&small).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    assert_eq!((err.kind(), err.status()), ("server", Some(500)));
    let TransportError::Server { message, .. } = &err else { panic!("{err:?}") };
    // 100 bytes of a JSON body are not JSON: the message is those bytes as text
    assert_eq!(message, &long[..100]);
    // the default reads the whole (small) body and finds the message in it
    let err = LmClient::new(&options(&server.base, 0)).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap_err();
    let TransportError::Server { message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(message.len(), 10_000);
}

/// The `traceparent` header lines of the recorded requests (`None` where a request had none).
fn traceparents(server: &Scripted) -> Vec<Option<String>> {
    server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("traceparent:").map(|v| v.trim().to_string())))
        .collect()
}

#[tokio::test]
async fn traced_retries_send_one_traceparent_per_attempt() {
    let limited = http("429 Too Many Requests", "Retry-After: 0.01\r\n", r#"{"error":{"message":"slow"}}"#);
    let failing = http("500 Internal Server Error", "", r#"{"error":{"message":"boom"}}"#);
    let server = serve(vec![(limited, Duration::ZERO), (failing, Duration::ZERO), (http("200 OK", "", OK), Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 3)).unwrap();
    let trace = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let (out, attempts) = client.complete_traced(body(WireFormat::OpenAi, false), Some(&trace)).await;
    assert_eq!(out.unwrap().choices[0].content.as_deref(), Some("Paris"));
    assert_eq!(attempts.len(), 3);
    let sent = traceparents(&server);
    assert_eq!(sent.len(), 3);
    for (header, attempt) in sent.iter().zip(&attempts) {
        let expected = format!("00-0af7651916cd43dd8448eb211c80319c-{:016x}-01", attempt.span_id);
        assert_eq!(header.as_deref(), Some(expected.as_str()));
        assert!(attempt.start_unix_ns > 0 && attempt.start_unix_ns <= attempt.end_unix_ns, "{attempt:?}");
    }
    let ids: std::collections::HashSet<u64> = attempts.iter().map(|a| a.span_id).collect();
    assert_eq!(ids.len(), 3, "each attempt has its own span id");
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(429), Some(500), Some(200)]);
    assert_eq!(attempts.iter().map(|a| a.error_kind).collect::<Vec<_>>(), [Some("rate_limit"), Some("server"), None]);
    assert_eq!(attempts[0].retry_delay, Some(Duration::from_millis(10)), "Retry-After is the delay");
    assert!(attempts[1].retry_delay.is_some() && attempts[2].retry_delay.is_none());
}

#[tokio::test]
async fn untraced_requests_send_no_traceparent_but_still_count_attempts() {
    let failing = http("500 Internal Server Error", "", "boom");
    let server = serve(vec![(failing.clone(), Duration::ZERO), (failing, Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 1)).unwrap();
    let (out, attempts) = client.complete_traced(body(WireFormat::OpenAi, false), None).await;
    assert_eq!(out.unwrap_err().kind(), "server");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].retry_delay, None, "the last attempt is not retried");
    assert_eq!(traceparents(&server), [None, None]);
    let server = serve(vec![(http("200 OK", "", OK), Duration::ZERO)]).await;
    LmClient::new(&options(&server.base, 0)).unwrap().complete(body(WireFormat::OpenAi, false)).await.unwrap();
    assert_eq!(traceparents(&server), [None]);
}

#[tokio::test]
async fn traced_streams_carry_the_header_on_every_opening_attempt() {
    let stream = sse(&[r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}"#, "[DONE]"]);
    let limited = http("429 Too Many Requests", "Retry-After: 0.01\r\n", "{}");
    let server = serve(vec![(limited, Duration::ZERO), (stream, Duration::ZERO)]).await;
    let client = LmClient::new(&options(&server.base, 1)).unwrap();
    let trace = TraceContext { trace_id: 0x1234, flags: 0 };
    let (opened, attempts) = client.stream_traced(body(WireFormat::OpenAi, true), Some(&trace)).await;
    let mut events = opened.unwrap();
    while events.next().await.is_some() {}
    let expected: Vec<Option<String>> =
        attempts.iter().map(|a| Some(format!("00-{:032x}-{:016x}-00", 0x1234, a.span_id))).collect();
    assert_eq!(traceparents(&server), expected);
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(429), Some(200)]);
}

#[test]
fn traceparent_parsing_names_the_problem() {
    let good = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    assert_eq!(good, TraceContext { trace_id: 0x0af7651916cd43dd8448eb211c80319c, flags: 1 });
    for (bad, problem) in [
        ("", "4 dash-separated fields"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "4 dash-separated fields"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", "4 dash-separated fields"),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "only version 00"),
        ("0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version must be 2"),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "trace id must be 32 lower-case hex"),
        ("00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01", "trace id must be 32"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01", "span id must be 16"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "flags must be 2"),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "must not be all zeros"),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "must not be all zeros"),
        ("00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "trace id must be 32"),
    ] {
        let error = TraceContext::parse(bad).unwrap_err();
        assert!(error.contains(problem), "{bad:?}: {error}");
    }
}

proptest::proptest! {
    #[test]
    fn traceparent_round_trips(trace_id in 1u128.., span_id in 1u64.., flags in proptest::prelude::any::<u8>()) {
        let header = TraceContext { trace_id, flags }.traceparent(span_id);
        proptest::prop_assert_eq!(header.len(), 55);
        proptest::prop_assert_eq!(&header, &format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}"));
        proptest::prop_assert_eq!(TraceContext::parse(&header), Ok(TraceContext { trace_id, flags }));
    }
}
