//! OTLP/HTTP span export (feature `otlp`): a hand-written protobuf encoder for `ExportTraceServiceRequest` and a
//! [`SpanSink`] that batches finished spans on one background thread and POSTs them to a collector.
//!
//! The encoder covers the handful of OTLP messages a span needs (ResourceSpans, Resource, ScopeSpans,
//! InstrumentationScope, Span, Event, Status, KeyValue, AnyValue, ArrayValue). Message lengths are computed before
//! writing, so each request is written once into one buffer with no nested copies.
//!
//! The sink never blocks its callers: [`SpanSink::push`] queues a span (or drops and counts it when the queue is
//! full); the export thread sends a batch when `max_batch` spans wait, every `delay`, or on [`SpanSink::flush`].
//! Each POST has `timeout`; a 429, a 5xx or a connection error is retried (after `Retry-After`, else a doubling
//! backoff) while the retry starts within `timeout` of the first attempt; a batch that still fails is counted in
//! [`SinkStats::failed_batches`] and dropped. Header values are
//! treated as secrets: they never appear in an error or a log. Secret strings registered with
//! [`SpanSink::set_secrets`] are replaced in every exported string (leftmost-longest) on the export thread.
//!
//! Fork safety: every call checks the fork generation ([`crate::fork`]: one atomic load, no `getpid`); in a
//! forked child the sink starts a fresh queue and export thread and never touches the parent's (whose locks may
//! have been held by a thread that does not exist in the child). Spans queued in the parent but not yet exported
//! are not exported by the child.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::{Condvar, Mutex};

use crate::transport::proxy::{Connector, ProxyConfig};

// ---------------------------------------------------------------------------------------------------------------
// Data model

/// An attribute value: OTLP `AnyValue` restricted to what span attributes carry.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyValue {
    /// `string_value`.
    Str(String),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `array_value` of scalars.
    Array(Vec<AnyValue>),
}

/// Key-value attributes, in the order they are exported.
pub type Attributes = Vec<(String, AnyValue)>;

/// A span event: name, time (Unix nanoseconds) and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// Event name.
    pub name: String,
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    /// Event attributes.
    pub attributes: Attributes,
}

/// One finished span, owned, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    /// Span name.
    pub name: String,
    /// 0 internal, 1 server, 2 client (OTLP `SpanKind` is `kind + 1`).
    pub kind: u8,
    /// Trace id (non-zero).
    pub trace_id: u128,
    /// Span id (non-zero).
    pub span_id: u64,
    /// Parent span id; 0 for a root span.
    pub parent_id: u64,
    /// The parent came from another process (a `traceparent` header).
    pub parent_remote: bool,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// Span attributes.
    pub attributes: Attributes,
    /// Span events.
    pub events: Vec<SpanEvent>,
    /// `None` = status UNSET; `Some(message)` = ERROR with that message.
    pub status: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets

/// Secret strings and their replacements, applied leftmost-longest to every exported string.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// `(secret, replacement)`, longest secret first; empty secrets are left out.
    pairs: Vec<(String, String)>,
    /// `first[b]`: some secret starts with byte `b`.
    first: Vec<bool>,
}

impl Secrets {
    /// Secrets from `(secret, replacement)` pairs; empty secrets are ignored, and of two equal secrets the first
    /// pair wins.
    pub fn new(pairs: Vec<(String, String)>) -> Secrets {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().filter(|(s, _)| !s.is_empty()).collect();
        // stable: equal lengths keep their given order
        pairs.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let mut first = vec![false; 256];
        for (s, _) in &pairs {
            first[usize::from(s.as_bytes()[0])] = true;
        }
        Secrets { pairs, first }
    }

    /// No secret registered.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `text` with every secret replaced (leftmost-longest, non-overlapping); `None` when nothing matched.
    pub fn replace(&self, text: &str) -> Option<String> {
        if self.pairs.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        let mut out: Option<String> = None;
        let mut copied = 0; // bytes of `text` already in `out`
        let mut i = 0;
        while i < bytes.len() {
            if self.first[usize::from(bytes[i])] {
                if let Some((secret, replacement)) = self.pairs.iter().find(|(s, _)| bytes[i..].starts_with(s.as_bytes())) {
                    // a UTF-8 secret matches only at char boundaries of a UTF-8 text
                    let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    o.push_str(&text[copied..i]);
                    o.push_str(replacement);
                    i += secret.len();
                    copied = i;
                    continue;
                }
            }
            i += 1;
        }
        let mut o = out?;
        o.push_str(&text[copied..]);
        Some(o)
    }

    fn apply(&self, text: &mut String) {
        if let Some(replaced) = self.replace(text) {
            *text = replaced;
        }
    }

    fn apply_value(&self, value: &mut AnyValue) {
        match value {
            AnyValue::Str(s) => self.apply(s),
            AnyValue::Array(items) => items.iter_mut().for_each(|v| self.apply_value(v)),
            _ => {}
        }
    }

    /// Replace secrets in every string of `span`: name, attribute values, event names and attribute values,
    /// status message.
    pub fn redact(&self, span: &mut SpanData) {
        if self.is_empty() {
            return;
        }
        self.apply(&mut span.name);
        span.attributes.iter_mut().for_each(|(_, v)| self.apply_value(v));
        for event in &mut span.events {
            self.apply(&mut event.name);
            event.attributes.iter_mut().for_each(|(_, v)| self.apply_value(v));
        }
        if let Some(message) = &mut span.status {
            self.apply(message);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Protobuf encoding

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// Bytes a varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least 1
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Append `v` as a protobuf varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

fn put_tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(buf, u64::from((field << 3) | wire));
}

/// Size of a length-delimited field holding `len` bytes.
fn len_field(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

fn put_len(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(buf, field, WIRE_LEN);
    put_varint(buf, len as u64);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len(buf, field, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Append field `field` as fixed64 (little-endian).
pub fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, WIRE_FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    put_tag(buf, field, WIRE_FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, WIRE_VARINT);
    put_varint(buf, v);
}

// AnyValue: string 1, bool 2, int 3, double 4, array 5. ArrayValue: values 1.
fn any_len(v: &AnyValue) -> usize {
    match v {
        AnyValue::Str(s) => len_field(1, s.len()),
        AnyValue::Bool(_) => 2,
        AnyValue::Int(i) => 1 + varint_len(*i as u64),
        AnyValue::Double(_) => 9,
        AnyValue::Array(items) => len_field(5, array_len(items)),
    }
}

fn array_len(items: &[AnyValue]) -> usize {
    items.iter().map(|v| len_field(1, any_len(v))).sum()
}

fn put_any(buf: &mut Vec<u8>, v: &AnyValue) {
    match v {
        AnyValue::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        AnyValue::Bool(b) => put_varint_field(buf, 2, u64::from(*b)),
        AnyValue::Int(i) => put_varint_field(buf, 3, *i as u64),
        AnyValue::Double(d) => put_fixed64(buf, 4, d.to_bits()),
        AnyValue::Array(items) => {
            put_len(buf, 5, array_len(items));
            for item in items {
                put_len(buf, 1, any_len(item));
                put_any(buf, item);
            }
        }
    }
}

// KeyValue: key 1, value 2.
fn kv_len(key: &str, v: &AnyValue) -> usize {
    len_field(1, key.len()) + len_field(2, any_len(v))
}

fn put_attributes(buf: &mut Vec<u8>, field: u32, attributes: &[(String, AnyValue)]) {
    for (key, value) in attributes {
        put_len(buf, field, kv_len(key, value));
        put_bytes(buf, 1, key.as_bytes());
        put_len(buf, 2, any_len(value));
        put_any(buf, value);
    }
}

fn attributes_len(field: u32, attributes: &[(String, AnyValue)]) -> usize {
    attributes.iter().map(|(k, v)| len_field(field, kv_len(k, v))).sum()
}

// Event: time_unix_nano 1 (fixed64), name 2, attributes 3.
fn event_len(e: &SpanEvent) -> usize {
    9 + len_field(2, e.name.len()) + attributes_len(3, &e.attributes)
}

// Status: message 2, code 3 (2 = ERROR).
fn status_len(message: &str) -> usize {
    len_field(2, message.len()) + 2
}

/// `flags`: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE, plus SPAN_FLAGS_CONTEXT_IS_REMOTE for a remote parent.
fn span_flags(span: &SpanData) -> u32 {
    0x100 | if span.parent_remote && span.parent_id != 0 { 0x200 } else { 0 }
}

// Span: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8, attributes 9, events 11,
// status 15, flags 16 (fixed32).
fn span_len(s: &SpanData) -> usize {
    let mut n = len_field(1, 16) + len_field(2, 8);
    if s.parent_id != 0 {
        n += len_field(4, 8);
    }
    n += len_field(5, s.name.len());
    n += 2; // kind: tag + one-byte varint
    n += 9 + 9;
    n += attributes_len(9, &s.attributes);
    n += s.events.iter().map(|e| len_field(11, event_len(e))).sum::<usize>();
    if let Some(message) = &s.status {
        n += len_field(15, status_len(message));
    }
    n + tag_len(16) + 4
}

fn put_span(buf: &mut Vec<u8>, s: &SpanData) {
    put_bytes(buf, 1, &s.trace_id.to_be_bytes());
    put_bytes(buf, 2, &s.span_id.to_be_bytes());
    if s.parent_id != 0 {
        put_bytes(buf, 4, &s.parent_id.to_be_bytes());
    }
    put_bytes(buf, 5, s.name.as_bytes());
    put_varint_field(buf, 6, u64::from(s.kind.min(2)) + 1);
    put_fixed64(buf, 7, s.start_ns);
    put_fixed64(buf, 8, s.end_ns);
    put_attributes(buf, 9, &s.attributes);
    for e in &s.events {
        put_len(buf, 11, event_len(e));
        put_fixed64(buf, 1, e.time_ns);
        put_bytes(buf, 2, e.name.as_bytes());
        put_attributes(buf, 3, &e.attributes);
    }
    if let Some(message) = &s.status {
        put_len(buf, 15, status_len(message));
        put_bytes(buf, 2, message.as_bytes());
        put_varint_field(buf, 3, 2);
    }
    put_fixed32(buf, 16, span_flags(s));
}

/// The resource and instrumentation scope every exported span belongs to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    /// Resource attributes (`service.name`, `openinference.project.name`, ...).
    pub resource: Attributes,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Instrumentation scope version (empty = not sent).
    pub scope_version: String,
}

/// Encode an `ExportTraceServiceRequest` with one ResourceSpans holding one ScopeSpans of `spans`.
pub fn encode_request(origin: &Origin, spans: &[SpanData]) -> Vec<u8> {
    // Resource: attributes 1. InstrumentationScope: name 1, version 2.
    let resource_len = attributes_len(1, &origin.resource);
    let mut scope_len = 0;
    if !origin.scope_name.is_empty() {
        scope_len += len_field(1, origin.scope_name.len());
    }
    if !origin.scope_version.is_empty() {
        scope_len += len_field(2, origin.scope_version.len());
    }
    // ScopeSpans: scope 1, spans 2.
    let scope_spans_len = len_field(1, scope_len) + spans.iter().map(|s| len_field(2, span_len(s))).sum::<usize>();
    // ResourceSpans: resource 1, scope_spans 2.
    let resource_spans_len = len_field(1, resource_len) + len_field(2, scope_spans_len);
    let total = len_field(1, resource_spans_len);
    let mut buf = Vec::with_capacity(total);
    put_len(&mut buf, 1, resource_spans_len);
    put_len(&mut buf, 1, resource_len);
    put_attributes(&mut buf, 1, &origin.resource);
    put_len(&mut buf, 2, scope_spans_len);
    put_len(&mut buf, 1, scope_len);
    if !origin.scope_name.is_empty() {
        put_bytes(&mut buf, 1, origin.scope_name.as_bytes());
    }
    if !origin.scope_version.is_empty() {
        put_bytes(&mut buf, 2, origin.scope_version.as_bytes());
    }
    for s in spans {
        put_len(&mut buf, 2, span_len(s));
        put_span(&mut buf, s);
    }
    debug_assert_eq!(buf.len(), total);
    buf
}

// ---------------------------------------------------------------------------------------------------------------
// The sink

/// How a [`SpanSink`] exports.
#[derive(Clone)]
pub struct SinkOptions {
    /// Collector URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Extra request headers (values are secrets: never logged nor put in errors).
    pub headers: Vec<(String, String)>,
    /// Resource and scope of every span.
    pub origin: Origin,
    /// Spans held at most; a push beyond it is dropped and counted.
    pub max_queue: usize,
    /// Spans per request at most.
    pub max_batch: usize,
    /// Export at least this often while spans wait.
    pub delay: Duration,
    /// Timeout of one POST, and how long after a batch's first attempt a retry may still start.
    pub timeout: Duration,
}

impl std::fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("SinkOptions")
            .field("endpoint", &self.endpoint)
            .field("headers", &names)
            .field("max_queue", &self.max_queue)
            .field("max_batch", &self.max_batch)
            .field("delay", &self.delay)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Counters of a [`SpanSink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Spans accepted by [`SpanSink::push`] (in total, exported or not yet).
    pub queued: u64,
    /// Spans the collector accepted (2xx).
    pub exported: u64,
    /// Spans refused by [`SpanSink::push`] because the queue was full.
    pub dropped: u64,
    /// Requests that failed after their retries; their spans are lost.
    pub failed_batches: u64,
}

struct State {
    queue: VecDeque<SpanData>,
    secrets: Arc<Secrets>,
    /// Flushes asked for / done (a flush waits until `done >= its number`).
    flush_asked: u64,
    flush_done: u64,
    /// Every batch of the last finished flush was exported.
    flush_ok: bool,
    /// Shutdown asked: no more pushes; the thread drains the queue and stops.
    stopping: bool,
    /// The export thread has ended.
    stopped: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the export thread.
    wake: Condvar,
    /// Wakes flush / shutdown waiters.
    done: Condvar,
    queued: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
}

/// Batches spans on a background thread and POSTs them as OTLP/HTTP protobuf (see the module docs).
pub struct SpanSink {
    options: SinkOptions,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The fork generation ([`crate::fork::generation`]) the current `inner` belongs to, and the inner state.
    current: Mutex<(u64, Arc<Inner>)>,
    /// Secrets carried over to a fresh inner state after a fork.
    secrets: Mutex<Arc<Secrets>>,
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanSink").field("options", &self.options).finish()
    }
}

impl SpanSink {
    /// A sink exporting to `options.endpoint`; starts its export thread. Errors name the bad option (a header
    /// error names the header, never its value).
    pub fn new(options: SinkOptions) -> Result<SpanSink, String> {
        let url: Uri = options
            .endpoint
            .parse()
            .map_err(|_| format!("endpoint {:?} is not a URL; use http://host:port/v1/traces", options.endpoint))?;
        if !matches!(url.scheme_str(), Some("http") | Some("https")) || url.host().is_none() {
            return Err(format!("endpoint {:?} must look like http://host:port/v1/traces or https://...", options.endpoint));
        }
        if options.max_queue == 0 || options.max_batch == 0 {
            return Err("max_queue and max_batch must be > 0".into());
        }
        if options.delay.is_zero() || options.timeout.is_zero() {
            return Err("delay_ms and timeout_s must be > 0".into());
        }
        let mut headers = vec![
            (CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf")),
            (USER_AGENT, HeaderValue::from_static(concat!("dspyo3-otlp/", env!("CARGO_PKG_VERSION")))),
        ];
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("{name:?} is not an HTTP header name"))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("the value of header {name} contains characters not allowed in an HTTP header"))?;
            value.set_sensitive(true);
            headers.retain(|(existing, _)| *existing != name);
            headers.push((name, value));
        }
        ProxyConfig::from_env().proxy_for(&url).map_err(|e| format!("proxy settings: {e}"))?;
        let secrets = Arc::new(Secrets::default());
        let sink = SpanSink {
            current: Mutex::new((crate::fork::generation(), Arc::new(Inner::new(secrets.clone())))),
            secrets: Mutex::new(secrets),
            options,
            url,
            headers,
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        sink.start(&sink.current.lock().1)?;
        Ok(sink)
    }

    fn start(&self, inner: &Arc<Inner>) -> Result<(), String> {
        let worker = Worker {
            inner: inner.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            origin: self.options.origin.clone(),
            max_batch: self.options.max_batch,
            delay: self.options.delay,
            timeout: self.options.timeout,
        };
        std::thread::Builder::new()
            .name("dspyo3-otlp".into())
            .spawn(move || worker.run())
            .map(|_| ())
            .map_err(|e| format!("could not start the export thread: {e}"))
    }

    /// The inner state of this process: after a fork, a fresh one with its own thread (the parent's is left
    /// untouched: its lock may be held by a thread the child does not have).
    fn inner(&self) -> Arc<Inner> {
        let mut current = self.current.lock();
        let generation = crate::fork::generation();
        if current.0 != generation {
            let inner = Arc::new(Inner::new(self.secrets.lock().clone()));
            let old = std::mem::replace(&mut *current, (generation, inner.clone()));
            std::mem::forget(old); // dropping could touch state shared with a thread that is gone
            if self.closed.load(Ordering::Relaxed) {
                let mut state = inner.state.lock();
                state.stopping = true;
                state.stopped = true;
            } else if self.start(&inner).is_err() {
                inner.state.lock().stopped = true;
            }
            return inner;
        }
        current.1.clone()
    }

    /// Queue `span`; `false` when it was dropped (full queue, or the sink is shut down).
    pub fn push(&self, span: SpanData) -> bool {
        let inner = self.inner();
        let mut state = inner.state.lock();
        if state.stopping {
            return false;
        }
        if state.queue.len() >= self.options.max_queue {
            drop(state);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.queue.push_back(span);
        let wake = state.queue.len() >= self.options.max_batch;
        drop(state);
        inner.queued.fetch_add(1, Ordering::Relaxed);
        if wake {
            inner.wake.notify_one();
        }
        true
    }

    /// Replace the secrets (see [`Secrets`]); applies to spans exported after this call.
    pub fn set_secrets(&self, pairs: Vec<(String, String)>) {
        let secrets = Arc::new(Secrets::new(pairs));
        *self.secrets.lock() = secrets.clone();
        self.inner().state.lock().secrets = secrets;
    }

    /// Export every span queued so far; `true` when all of them were exported within `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let inner = self.inner();
        let deadline = Instant::now().checked_add(timeout);
        let mut state = inner.state.lock();
        if state.stopped {
            return state.queue.is_empty() && state.flush_ok;
        }
        state.flush_asked += 1;
        let ticket = state.flush_asked;
        inner.wake.notify_one();
        while state.flush_done < ticket {
            if state.stopped {
                return false;
            }
            match deadline {
                Some(d) => {
                    if inner.done.wait_until(&mut state, d).timed_out() && state.flush_done < ticket {
                        return false;
                    }
                }
                None => inner.done.wait(&mut state),
            }
        }
        state.flush_ok
    }

    /// Flush (waiting at most `timeout`), then stop the export thread; later pushes are dropped silently.
    pub fn shutdown(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let inner = self.inner();
        let deadline = Instant::now().checked_add(timeout);
        let mut state = inner.state.lock();
        state.stopping = true;
        inner.wake.notify_one();
        while !state.stopped {
            match deadline {
                Some(d) => {
                    if inner.done.wait_until(&mut state, d).timed_out() {
                        return;
                    }
                }
                None => inner.done.wait(&mut state),
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> SinkStats {
        let inner = self.inner();
        SinkStats {
            queued: inner.queued.load(Ordering::Relaxed),
            exported: inner.exported.load(Ordering::Relaxed),
            dropped: inner.dropped.load(Ordering::Relaxed),
            failed_batches: inner.failed_batches.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SpanSink {
    /// Tells the export thread to send what is queued and stop; does not wait for it.
    fn drop(&mut self) {
        let current = self.current.get_mut();
        if current.0 == crate::fork::generation() {
            current.1.state.lock().stopping = true;
            current.1.wake.notify_one();
        }
    }
}

impl Inner {
    fn new(secrets: Arc<Secrets>) -> Inner {
        Inner {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                secrets,
                flush_asked: 0,
                flush_done: 0,
                flush_ok: true,
                stopping: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            queued: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
        }
    }
}

/// Why one POST failed.
#[derive(Debug)]
enum PostError {
    /// Worth retrying (429, 5xx, connection error), after the server's `Retry-After` if it gave one.
    Retryable(Option<Duration>),
    /// Not worth retrying (other 4xx, timeout, bad request).
    Final,
}

/// Bytes of a collector's answer read at most (it is discarded; OTLP answers are tiny).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type HttpClient = Client<hyper_rustls::HttpsConnector<Connector>, Full<Bytes>>;

struct Worker {
    inner: Arc<Inner>,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    origin: Origin,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(_) => return self.finish_without_client(),
        };
        let client = {
            let _guard = runtime.enter();
            match self.client() {
                Some(c) => c,
                None => return self.finish_without_client(),
            }
        };
        let mut next_tick = Instant::now() + self.delay;
        loop {
            let mut state = self.inner.state.lock();
            loop {
                if state.stopping || state.flush_asked > state.flush_done || state.queue.len() >= self.max_batch {
                    break;
                }
                if Instant::now() >= next_tick {
                    break;
                }
                let _ = self.inner.wake.wait_until(&mut state, next_tick);
            }
            next_tick = Instant::now() + self.delay;
            let flush_target = state.flush_asked;
            let stopping = state.stopping;
            let draining = stopping || flush_target > state.flush_done;
            // a timer tick or a full batch sends what waits now; a flush sends everything queued
            let mut all_ok = true;
            loop {
                let n = state.queue.len().min(self.max_batch);
                if n == 0 {
                    break;
                }
                let mut batch: Vec<SpanData> = state.queue.drain(..n).collect();
                let secrets = state.secrets.clone();
                drop(state);
                for span in &mut batch {
                    secrets.redact(span);
                }
                let body = encode_request(&self.origin, &batch);
                if runtime.block_on(self.export(&client, body)) {
                    self.inner.exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
                } else {
                    self.inner.failed_batches.fetch_add(1, Ordering::Relaxed);
                    all_ok = false;
                }
                drop(batch);
                state = self.inner.state.lock();
                if !draining {
                    break;
                }
            }
            if flush_target > state.flush_done {
                state.flush_done = flush_target;
                state.flush_ok = all_ok;
                self.inner.done.notify_all();
            }
            if stopping && state.queue.is_empty() {
                state.stopped = true;
                state.flush_done = state.flush_asked;
                self.inner.done.notify_all();
                return;
            }
        }
    }

    /// Without an HTTP client nothing can be sent: count what arrives as failed and answer waiters.
    fn finish_without_client(self) {
        let mut state = self.inner.state.lock();
        state.stopping = true;
        state.stopped = true;
        state.flush_ok = false;
        if !state.queue.is_empty() {
            state.queue.clear();
            self.inner.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
        state.flush_done = state.flush_asked;
        self.inner.done.notify_all();
    }

    fn client(&self) -> Option<HttpClient> {
        let https = self.url.scheme_str() == Some("https");
        let via = ProxyConfig::from_env().proxy_for(&self.url).ok()?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(Connector::new(http, via.as_ref(), https));
        Some(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector),
        )
    }

    /// POST `body`; a 429, a 5xx or a connection error is retried after the server's `Retry-After`, else after a
    /// backoff doubling from 100 ms (up to 5 s), for as long as the next attempt starts within `timeout` of the
    /// first (a collector busy for a moment loses nothing; one that stays down costs a batch about `timeout`).
    /// `true` when the collector accepted it.
    async fn export(&self, client: &HttpClient, body: Vec<u8>) -> bool {
        let body = Bytes::from(body);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.post(client, body.clone()).await {
                Ok(()) => return true,
                Err(PostError::Final) => return false,
                Err(PostError::Retryable(after)) => {
                    let wait = after.unwrap_or(backoff);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn post(&self, client: &HttpClient, body: Bytes) -> Result<(), PostError> {
        let mut builder = Request::builder().method(Method::POST).uri(self.url.clone());
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(body)).map_err(|_| PostError::Final)?;
        let attempt = async {
            let response = match client.request(request).await {
                Ok(r) => r,
                // could not connect, or the connection broke
                Err(_) => return Err(PostError::Retryable(None)),
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::transport::parse_retry_after);
            // read (and discard) the answer so the connection can be reused; a runaway answer is cut off
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            match status {
                200..=299 => Ok(()),
                429 | 500..=599 => Err(PostError::Retryable(retry_after)),
                _ => Err(PostError::Final),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PostError::Final),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// Walk a message: (field, wire type, payload range or value).
    fn fields(buf: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let tag = read_varint(buf, &mut pos);
            let (field, wire) = ((tag >> 3) as u32, (tag & 7) as u32);
            let payload = match wire {
                0 => {
                    let start = pos;
                    read_varint(buf, &mut pos);
                    buf[start..pos].to_vec()
                }
                1 => {
                    pos += 8;
                    buf[pos - 8..pos].to_vec()
                }
                5 => {
                    pos += 4;
                    buf[pos - 4..pos].to_vec()
                }
                2 => {
                    let len = read_varint(buf, &mut pos) as usize;
                    pos += len;
                    buf[pos - len..pos].to_vec()
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((field, wire, payload));
        }
        assert_eq!(pos, buf.len(), "message overran");
        out
    }

    #[test]
    fn otlp_varints_round_trip_and_have_the_right_length() {
        for v in [0u64, 1, 127, 128, 255, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX >> 1, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos), v);
        }
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
        assert_eq!(varint_len(u64::MAX), 10);
        // negative int64 is ten bytes
        let mut buf = Vec::new();
        put_any(&mut buf, &AnyValue::Int(-1));
        assert_eq!(buf.len(), 11);
        assert_eq!(any_len(&AnyValue::Int(-1)), 11);
    }

    #[test]
    fn otlp_fixed64_is_little_endian() {
        let mut buf = Vec::new();
        put_fixed64(&mut buf, 7, 0x0102_0304_0506_0708);
        assert_eq!(buf, [(7 << 3) | 1, 8, 7, 6, 5, 4, 3, 2, 1]);
        let mut buf = Vec::new();
        put_any(&mut buf, &AnyValue::Double(1.5));
        assert_eq!(buf[0], (4 << 3) | 1);
        assert_eq!(f64::from_bits(u64::from_le_bytes(buf[1..9].try_into().unwrap())), 1.5);
    }

    fn span(name: &str) -> SpanData {
        SpanData {
            name: name.into(),
            kind: 2,
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            span_id: 0x1112_1314_1516_1718,
            parent_id: 0x2122_2324_2526_2728,
            parent_remote: true,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_000_500_000_000,
            attributes: vec![
                ("s".into(), AnyValue::Str("x".repeat(200))),
                ("b".into(), AnyValue::Bool(true)),
                ("i".into(), AnyValue::Int(-5)),
                ("f".into(), AnyValue::Double(0.25)),
                ("l".into(), AnyValue::Array(vec![AnyValue::Str("a".into()), AnyValue::Int(3)])),
            ],
            events: vec![SpanEvent { name: "ev".into(), time_ns: 42, attributes: vec![("k".into(), AnyValue::Str("v".into()))] }],
            status: Some("boom".into()),
        }
    }

    #[test]
    fn otlp_nested_lengths_are_consistent() {
        let origin = Origin {
            resource: vec![("service.name".into(), AnyValue::Str("svc".into()))],
            scope_name: "dspyo3".into(),
            scope_version: "1".into(),
        };
        let spans: Vec<SpanData> = (0..3).map(|i| span(&format!("span{i}"))).collect();
        let buf = encode_request(&origin, &spans);
        let top = fields(&buf);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].0, top[0].1), (1, 2));
        let rs = fields(&top[0].2);
        assert_eq!(rs.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2]);
        let resource = fields(&rs[0].2);
        let kv = fields(&resource[0].2);
        assert_eq!(kv[0].2, b"service.name");
        let ss = fields(&rs[1].2);
        assert_eq!(ss.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 2, 2]);
        let scope = fields(&ss[0].2);
        assert_eq!(scope[0].2, b"dspyo3");
        assert_eq!(scope[1].2, b"1");
        let s = fields(&ss[1].2);
        let by = |n: u32| s.iter().filter(|f| f.0 == n).collect::<Vec<_>>();
        assert_eq!(by(1)[0].2, 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes());
        assert_eq!(by(2)[0].2, 0x1112_1314_1516_1718u64.to_be_bytes());
        assert_eq!(by(4)[0].2, 0x2122_2324_2526_2728u64.to_be_bytes());
        assert_eq!(by(5)[0].2, b"span0");
        assert_eq!(by(6)[0].2, [3]);
        assert_eq!(by(9).len(), 5);
        assert_eq!(by(11).len(), 1);
        let status = fields(&by(15)[0].2);
        assert_eq!(status[0].2, b"boom");
        assert_eq!(status[1].2, [2]);
        assert_eq!(u32::from_le_bytes(by(16)[0].2.clone().try_into().unwrap()), 0x300);
        // every nested message parses to its end (checked inside `fields`)
        for attr in by(9) {
            let kv = fields(&attr.2);
            fields(&kv[1].2);
        }
        let mut root = span("r");
        root.parent_id = 0;
        root.status = None;
        root.events.clear();
        let buf = encode_request(&Origin::default(), &[root]);
        let top = fields(&buf);
        let ss = fields(&fields(&top[0].2)[1].2);
        let s = fields(&ss[1].2);
        assert!(!s.iter().any(|f| f.0 == 4 || f.0 == 11 || f.0 == 15), "a root span has no parent, events or status");
        assert_eq!(u32::from_le_bytes(s.last().unwrap().2.clone().try_into().unwrap()), 0x100);
    }

    #[test]
    fn otlp_secrets_replace_leftmost_longest() {
        let s = Secrets::new(vec![("abc".into(), "[1]".into()), ("abcdef".into(), "[2]".into()), ("".into(), "x".into())]);
        assert_eq!(s.replace("xxabcdefyy abc ab").as_deref(), Some("xx[2]yy [1] ab"));
        assert_eq!(s.replace("nothing here"), None);
        assert_eq!(s.replace("ééabcé").as_deref(), Some("éé[1]é"));
        let mut sp = span("abc");
        sp.attributes.push(("k".into(), AnyValue::Array(vec![AnyValue::Str("abcdef".into())])));
        sp.status = Some("key abc".into());
        sp.events[0].name = "abc".into();
        s.redact(&mut sp);
        assert_eq!(sp.name, "[1]");
        assert_eq!(sp.status.as_deref(), Some("key [1]"));
        assert_eq!(sp.events[0].name, "[1]");
        assert_eq!(sp.attributes.last().unwrap().1, AnyValue::Array(vec![AnyValue::Str("[2]".into())]));
    }

    #[test]
    fn otlp_sink_refuses_bad_options_without_showing_header_values() {
        let options = |endpoint: &str, headers: Vec<(String, String)>| SinkOptions {
            endpoint: endpoint.into(),
            headers,
            origin: Origin::default(),
            max_queue: 10,
            max_batch: 5,
            delay: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        };
        assert!(SpanSink::new(options("not a url", vec![])).is_err());
        assert!(SpanSink::new(options("ftp://x/y", vec![])).is_err());
        let err = SpanSink::new(options("http://127.0.0.1:1/v1/traces", vec![("x-key".into(), "sec\nret".into())])).unwrap_err();
        assert!(err.contains("x-key") && !err.contains("sec"), "{err}");
        let sink = SpanSink::new(options("http://127.0.0.1:1/v1/traces", vec![])).unwrap();
        assert!(sink.push(span("a")));
        assert!(!sink.flush(Duration::from_secs(5)), "nothing listens on port 1");
        assert_eq!(sink.stats().failed_batches, 1);
        sink.shutdown(Duration::from_secs(5));
        assert!(!sink.push(span("b")));
    }
}
