//! A JSON-lines event log written by a background thread.
//!
//! The caller hands over an [`Event`] (a timestamp taken at once, a level, a logger name, an event name and
//! flat fields) and returns; a writer thread renders each event as one JSON object per line, masks every
//! configured secret value in the finished line, and writes batches to the output every few milliseconds.
//! [`EventLog::flush`] waits until everything emitted before it is written.
//!
//! This is what keeps structured logging of every LM call off the calling thread in dspyo3-production.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

/// One field value of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A JSON string.
    Str(String),
    /// A JSON integer.
    Int(i64),
    /// A JSON number (non-finite values are written as `null`).
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// One event: rendered as `{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}`.
#[derive(Debug, Clone)]
pub struct Event {
    /// When it happened.
    pub ts: SystemTime,
    /// Level name, written lower-case (`"info"`, `"warning"`).
    pub level: String,
    /// Logger name (`"dspyo3.events"`).
    pub logger: String,
    /// Event name (`"lm_call"`).
    pub name: String,
    /// Fields in the order they are written.
    pub fields: Vec<(String, Value)>,
    /// More fields, already serialized: the members of a JSON object without its braces (`"a":1,"b":"x"`),
    /// written after `fields`. The caller vouches that it is valid JSON.
    pub raw_fields: Option<String>,
}

enum Message {
    Event(Box<Event>),
    Flush(SyncSender<()>),
}

struct Shared {
    queue: Mutex<Vec<Message>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// How long the writer sleeps between looks at the queue: short while events flow, longer when idle.
const BUSY_INTERVAL: Duration = Duration::from_millis(5);
const IDLE_INTERVAL: Duration = Duration::from_millis(200);

/// The background writer. Dropping it writes what is queued and stops the thread.
///
/// Emitting never wakes the writer (a wake-up is a system call, and across CPUs of a virtual machine an
/// interrupt): events wait in a queue the writer drains every few milliseconds. [`EventLog::flush`] and dropping
/// the log wake it at once.
pub struct EventLog {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
    written: Arc<AtomicU64>,
}

impl EventLog {
    /// Start a writer thread that renders events to `out`, masking each of `secrets` (values shorter than 4
    /// bytes are ignored: they would mask ordinary text).
    pub fn new<W: Write + Send + 'static>(out: W, secrets: Vec<String>) -> std::io::Result<Self> {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len())); // a longer secret containing a shorter one first
        let shared = Arc::new(Shared { queue: Mutex::new(Vec::new()), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let written = Arc::new(AtomicU64::new(0));
        let (state, counter) = (shared.clone(), written.clone());
        let handle = std::thread::Builder::new()
            .name("dspyo3-eventlog".into())
            .spawn(move || write_loop(&state, out, &secrets, &counter))?;
        Ok(Self { shared, handle: Some(handle), written })
    }

    /// Queue one event (no I/O, no wake-up: a lock and a push).
    pub fn emit(&self, event: Event) {
        self.shared.queue.lock().push(Message::Event(Box::new(event)));
    }

    /// Wait until every event emitted before this call is written and flushed; false if the writer did not
    /// answer within `timeout` (it is gone, e.g. in a forked child, or its output is stuck). A timeout too long
    /// for the clock to represent, such as `Duration::MAX`, waits as long as it takes.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.shared.queue.lock().push(Message::Flush(done_tx));
        self.shared.wake.notify_one();
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join(); // the writer drains the queue before it stops
        }
    }
}

fn write_loop<W: Write>(shared: &Shared, out: W, secrets: &[String], written: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut interval = BUSY_INTERVAL;
    loop {
        let batch = {
            let mut queue = shared.queue.lock();
            if queue.is_empty() && !shared.stop.load(Ordering::Acquire) {
                shared.wake.wait_for(&mut queue, interval);
            }
            std::mem::take(&mut *queue)
        };
        interval = if batch.is_empty() { (interval * 2).min(IDLE_INTERVAL) } else { BUSY_INTERVAL };
        let mut waiters = Vec::new();
        for message in batch {
            match message {
                Message::Event(event) => {
                    line.clear();
                    render(&event, &mut line);
                    let masked = mask(&line, secrets);
                    let _ = out.write_all(masked.as_bytes());
                    let _ = out.write_all(b"\n");
                    written.fetch_add(1, Ordering::Relaxed);
                }
                Message::Flush(done) => waiters.push(done),
            }
        }
        let _ = out.flush();
        for done in waiters {
            let _ = done.send(());
        }
        if shared.stop.load(Ordering::Acquire) && shared.queue.lock().is_empty() {
            break;
        }
    }
    let _ = out.flush();
}

fn mask<'a>(line: &'a str, secrets: &[String]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(line);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            let chars: Vec<char> = secret.chars().collect();
            let shown = if chars.len() >= 12 {
                format!("****{}", chars[chars.len() - 4..].iter().collect::<String>())
            } else {
                "****".to_string()
            };
            out = std::borrow::Cow::Owned(out.replace(secret.as_str(), &shown));
        }
    }
    out
}

/// Render `event` as one JSON object (no newline) into `out`.
pub fn render(event: &Event, out: &mut String) {
    out.push_str("{\"ts\":\"");
    push_timestamp(event.ts, out);
    out.push_str("\",\"level\":");
    push_str(&event.level.to_lowercase(), out);
    out.push_str(",\"logger\":");
    push_str(&event.logger, out);
    out.push_str(",\"event\":");
    push_str(&event.name, out);
    for (key, value) in &event.fields {
        out.push(',');
        push_str(key, out);
        out.push(':');
        match value {
            Value::Str(s) => push_str(s, out),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) if f.is_finite() => {
                let text = format!("{f}");
                out.push_str(&text);
                if !text.contains(['.', 'e', 'E']) {
                    out.push_str(".0");
                }
            }
            Value::Float(_) | Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
    if let Some(raw) = event.raw_fields.as_deref().filter(|raw| !raw.is_empty()) {
        out.push(',');
        out.push_str(raw);
    }
    out.push('}');
}

fn push_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with microseconds: `2026-11-25T01:02:03.456789+00:00` (what Python's `isoformat` writes).
fn push_timestamp(ts: SystemTime, out: &mut String) {
    let since = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let micros = since.subsec_micros();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    out.push_str(&format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    ));
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(fields: Vec<(String, Value)>) -> Event {
        Event {
            ts: UNIX_EPOCH + Duration::from_micros(1_764_032_523_123_456),
            level: "INFO".into(),
            logger: "dspyo3.events".into(),
            name: "lm_call".into(),
            fields,
            raw_fields: None,
        }
    }

    #[test]
    fn renders_raw_fields_after_the_typed_ones() {
        let mut line = String::new();
        let mut e = event(vec![("model".into(), Value::Str("m".into()))]);
        e.raw_fields = Some("\"n\":1,\"s\":\"x\"".into());
        render(&e, &mut line);
        assert!(line.ends_with(",\"model\":\"m\",\"n\":1,\"s\":\"x\"}"), "{line}");
        e.raw_fields = Some(String::new());
        line.clear();
        render(&e, &mut line);
        assert!(line.ends_with(",\"model\":\"m\"}"), "{line}");
    }

    #[test]
    fn renders_one_json_object_with_escapes_and_types() {
        let mut line = String::new();
        render(
            &event(vec![
                ("model".into(), Value::Str("a\"b\n\u{1}".into())),
                ("n".into(), Value::Int(-3)),
                ("x".into(), Value::Float(2.0)),
                ("nan".into(), Value::Float(f64::NAN)),
                ("ok".into(), Value::Bool(true)),
                ("none".into(), Value::Null),
            ]),
            &mut line,
        );
        assert_eq!(
            line,
            "{\"ts\":\"2025-11-25T01:02:03.123456+00:00\",\"level\":\"info\",\"logger\":\"dspyo3.events\",\
             \"event\":\"lm_call\",\"model\":\"a\\\"b\\n\\u0001\",\"n\":-3,\"x\":2.0,\"nan\":null,\"ok\":true,\
             \"none\":null}"
        );
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn writes_in_order_masks_secrets_and_flush_waits() {
        let sink = Shared::default();
        let log = EventLog::new(sink.clone(), vec!["sk-live-0123456789abcd".into(), "ab".into(), "pässwörd-€€€€".into()])
            .unwrap();
        log.emit(event(vec![("multibyte".into(), Value::Str("x pässwörd-€€€€ y".into()))]));
        assert!(log.flush(Duration::from_secs(10)));
        assert!(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap().contains("x ****€€€€ y"));
        sink.0.lock().unwrap().clear();
        let log = EventLog::new(sink.clone(), vec!["sk-live-0123456789abcd".into(), "ab".into()]).unwrap();
        for i in 0..1000 {
            log.emit(event(vec![
                ("i".into(), Value::Int(i)),
                ("note".into(), Value::Str("key sk-live-0123456789abcd ab".into())),
            ]));
        }
        assert!(log.flush(Duration::from_secs(10)));
        assert_eq!(log.written(), 1000);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        for (i, line) in lines.iter().enumerate() {
            assert!(line.contains(&format!("\"i\":{i},")), "out of order at {i}: {line}");
            assert!(!line.contains("sk-live-0123456789abcd"));
            assert!(line.contains("****abcd ab"), "{line}"); // too-short values are not masked
        }
    }

    #[test]
    fn flush_with_an_unrepresentable_timeout_waits() {
        let sink = Shared::default();
        let log = EventLog::new(sink.clone(), vec![]).unwrap();
        log.emit(event(vec![("i".into(), Value::Int(1))]));
        assert!(log.flush(Duration::MAX));
        assert_eq!(log.written(), 1);
    }

    #[test]
    fn drop_writes_what_is_queued() {
        let sink = Shared::default();
        {
            let log = EventLog::new(sink.clone(), vec![]).unwrap();
            for i in 0..100 {
                log.emit(event(vec![("i".into(), Value::Int(i))]));
            }
        }
        assert_eq!(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap().lines().count(), 100);
    }
}
