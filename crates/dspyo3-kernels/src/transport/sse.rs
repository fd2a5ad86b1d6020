//! Server-sent events: a byte-level parser, and decoders turning OpenAI / Anthropic stream events into
//! [`StreamEvent`]s.

use std::collections::VecDeque;

use serde_json::Value;

use super::wire::{anthropic_finish, Usage, WireFormat};
use super::{classify_error, TransportError};

/// One decoded streaming event.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The response started (first event).
    Start {
        /// Response id.
        id: Option<String>,
        /// Model that answers.
        model: Option<String>,
    },
    /// Answer text.
    Text(String),
    /// Reasoning text.
    Reasoning(String),
    /// A piece of a tool call (OpenAI delta shape: name once, arguments in pieces).
    ToolCall {
        /// Which call (0-based).
        index: u64,
        /// Call id (first piece).
        id: Option<String>,
        /// Tool name (first piece).
        name: Option<String>,
        /// A piece of the JSON arguments.
        arguments: String,
    },
    /// The response finished (last event).
    End {
        /// `stop`, `length`, `tool_calls`, ...
        finish_reason: Option<String>,
        /// Token counts.
        usage: Usage,
    },
}

/// The default largest stream event (its `data` payload, or one unfinished line): 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 16 << 20;

/// The default largest response body (a whole stream, or a non-streamed answer): 128 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 128 << 20;

/// Incremental SSE parser: feed bytes, take complete `data` payloads.
///
/// Work is linear in the bytes fed, however the stream is split: the newline scan resumes where the previous
/// [`SseParser::feed`] stopped. An event (its `data` payload, or a line not finished yet) larger than
/// `max_event` bytes, or more than `max_response` bytes in all, is a [`TransportError::TooLarge`].
#[derive(Debug)]
pub struct SseParser {
    /// Bytes after the last complete line (an unfinished line).
    buffer: Vec<u8>,
    /// `buffer[..scanned]` holds no newline.
    scanned: usize,
    data: Vec<u8>,
    has_data: bool,
    received: u64,
    max_event: u64,
    max_response: u64,
}

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::with_limits(DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_RESPONSE_BYTES)
    }
}

fn event_too_large(limit: u64) -> TransportError {
    TransportError::TooLarge { what: "a stream event", limit, setting: "max_event_bytes" }
}

fn response_too_large(limit: u64) -> TransportError {
    TransportError::TooLarge { what: "the response body", limit, setting: "max_response_bytes" }
}

/// Append one `data:` line's value (`rest`) to the event's payload, lines joined by `\n`.
fn data_line(data: &mut Vec<u8>, has_data: &mut bool, rest: &[u8]) {
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    if *has_data {
        data.push(b'\n');
    }
    data.extend_from_slice(rest);
    *has_data = true;
}

impl SseParser {
    /// A parser refusing events over `max_event` bytes and streams over `max_response` bytes.
    pub fn with_limits(max_event: u64, max_response: u64) -> SseParser {
        SseParser { buffer: Vec::new(), scanned: 0, data: Vec::new(), has_data: false, received: 0, max_event, max_response }
    }

    /// The size of the event being assembled, its unfinished line included.
    fn pending(&self) -> u64 {
        (self.data.len() + self.buffer.len()) as u64
    }

    /// Feed bytes; return the `data` payload of every event completed by them, or the size limit they break.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, TransportError> {
        self.received = self.received.saturating_add(bytes.len() as u64);
        if self.received > self.max_response {
            return Err(response_too_large(self.max_response));
        }
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(offset) = memchr::memchr(b'\n', &self.buffer[from..]) {
            let end = from + offset;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                data_line(&mut self.data, &mut self.has_data, rest);
                if self.data.len() as u64 > self.max_event {
                    return Err(event_too_large(self.max_event));
                }
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing the decoders need
            start = end + 1;
            from = start;
        }
        self.buffer.drain(..start);
        self.scanned = self.buffer.len();
        if self.pending() > self.max_event {
            return Err(event_too_large(self.max_event));
        }
        Ok(out)
    }

    /// At end of body: a last event not followed by a blank line.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buffer);
        self.scanned = 0;
        let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
        if let Some(data) = line.strip_prefix(b"data:") {
            data_line(&mut self.data, &mut self.has_data, data);
        }
        self.has_data.then(|| {
            self.has_data = false;
            std::mem::take(&mut self.data)
        })
    }
}

/// Turns SSE payloads into [`StreamEvent`]s for one wire format, checking the stream is complete.
#[derive(Debug)]
pub struct StreamDecoder {
    wire: WireFormat,
    started: bool,
    finished: bool,
    finish_reason: Option<String>,
    usage: Usage,
    /// Anthropic content-block index -> (tool call index) for tool_use blocks.
    tool_blocks: Vec<(u64, u64)>,
    /// Queued events.
    pub events: VecDeque<StreamEvent>,
}

fn protocol(message: impl Into<String>) -> TransportError {
    TransportError::Protocol { message: message.into() }
}

impl StreamDecoder {
    /// A decoder for `wire`.
    pub fn new(wire: WireFormat) -> StreamDecoder {
        StreamDecoder {
            wire,
            started: false,
            finished: false,
            finish_reason: None,
            usage: Usage::default(),
            tool_blocks: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The stream has delivered its end event.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn start(&mut self, id: Option<String>, model: Option<String>) {
        if !self.started {
            self.started = true;
            self.events.push_back(StreamEvent::Start { id, model });
        }
    }

    fn end(&mut self) {
        if !self.finished {
            self.finished = true;
            self.events.push_back(StreamEvent::End { finish_reason: self.finish_reason.take(), usage: self.usage });
        }
    }

    /// Decode one SSE payload.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if self.finished {
            return Ok(());
        }
        if data == b"[DONE]" {
            if self.wire == WireFormat::OpenAi {
                self.start(None, None);
                self.end();
            }
            return Ok(());
        }
        let value: Value = serde_json::from_slice(data).map_err(|e| {
            protocol(format!("a stream event is not JSON ({e}): {:?}", String::from_utf8_lossy(&data[..data.len().min(200)])))
        })?;
        match self.wire {
            WireFormat::OpenAi => self.push_openai(&value),
            WireFormat::Anthropic => self.push_anthropic(&value),
        }
    }

    fn push_openai(&mut self, value: &Value) -> Result<(), TransportError> {
        if let Some(error) = value.get("error") {
            let body = serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default();
            // `code` is a number on some servers and a string (`rate_limit_exceeded`, ...) on OpenAI
            let numeric = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
            let named = [error.get("code"), error.get("type")].into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
            let status = numeric.unwrap_or(if named.contains("rate_limit") {
                429
            } else if named.contains("context_length") || named.contains("invalid_request") {
                400
            } else if named.contains("auth") || named.contains("api_key") {
                401
            } else {
                500
            });
            return Err(classify_error(status, None, &body));
        }
        let str_at = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        self.start(str_at(value, "id"), str_at(value, "model"));
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            self.usage = Usage::from_openai(Some(usage));
        }
        let Some(choice) = value.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else { return Ok(()) };
        if let Some(delta) = choice.get("delta") {
            let reasoning = delta.get("reasoning_content").or_else(|| delta.get("reasoning"));
            if let Some(text) = reasoning.and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.events.push_back(StreamEvent::Reasoning(text.to_string()));
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.events.push_back(StreamEvent::Text(text.to_string()));
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let function = call.get("function");
                self.events.push_back(StreamEvent::ToolCall {
                    index: call.get("index").and_then(Value::as_u64).unwrap_or(0),
                    id: str_at(call, "id"),
                    name: function.and_then(|f| str_at(f, "name")),
                    arguments: function.and_then(|f| str_at(f, "arguments")).unwrap_or_default(),
                });
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        Ok(())
    }

    fn push_anthropic(&mut self, value: &Value) -> Result<(), TransportError> {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                let message = value.get("message").cloned().unwrap_or_default();
                let input = message.get("usage").and_then(|u| u.get("input_tokens")).and_then(Value::as_u64).unwrap_or(0);
                self.usage.prompt_tokens = input;
                self.start(
                    message.get("id").and_then(Value::as_str).map(str::to_string),
                    message.get("model").and_then(Value::as_str).map(str::to_string),
                );
            }
            "content_block_start" => {
                let block = value.get("content_block").cloned().unwrap_or_default();
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let block_index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let call_index = self.tool_blocks.len() as u64;
                    self.tool_blocks.push((block_index, call_index));
                    self.events.push_back(StreamEvent::ToolCall {
                        index: call_index,
                        id: block.get("id").and_then(Value::as_str).map(str::to_string),
                        name: block.get("name").and_then(Value::as_str).map(str::to_string),
                        arguments: String::new(),
                    });
                }
            }
            "content_block_delta" => {
                let delta = value.get("delta").cloned().unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = delta.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            self.events.push_back(StreamEvent::Text(text.to_string()));
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(text) = delta.get("thinking").and_then(Value::as_str) {
                            self.events.push_back(StreamEvent::Reasoning(text.to_string()));
                        }
                    }
                    Some("input_json_delta") => {
                        let block_index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let index = self.tool_blocks.iter().find(|(b, _)| *b == block_index).map(|(_, i)| *i).unwrap_or(0);
                        let piece = delta.get("partial_json").and_then(Value::as_str).unwrap_or("").to_string();
                        self.events.push_back(StreamEvent::ToolCall { index, id: None, name: None, arguments: piece });
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = value.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
                    self.finish_reason = Some(anthropic_finish(reason));
                }
                if let Some(out) = value.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64) {
                    self.usage.completion_tokens = out;
                }
            }
            "message_stop" => {
                self.usage = Usage::new(self.usage.prompt_tokens, self.usage.completion_tokens, None);
                self.start(None, None);
                self.end();
            }
            "error" => {
                let error = value.get("error").cloned().unwrap_or_default();
                let status = match error.get("type").and_then(Value::as_str) {
                    Some("rate_limit_error") => 429,
                    Some("overloaded_error") => 529,
                    Some("authentication_error") => 401,
                    Some("invalid_request_error") => 400,
                    _ => 500,
                };
                let body = serde_json::to_vec(value).unwrap_or_default();
                return Err(classify_error(status, None, &body));
            }
            _ => {} // ping, content_block_stop
        }
        Ok(())
    }

    /// The body ended: an error unless the end event was seen.
    pub fn close(&mut self) -> Result<(), TransportError> {
        if self.finished {
            return Ok(());
        }
        if self.wire == WireFormat::OpenAi && self.finish_reason.is_some() {
            // servers that end with a finish_reason chunk but no [DONE]
            self.start(None, None);
            self.end();
            return Ok(());
        }
        Err(protocol("the stream ended before the response was complete"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(wire: WireFormat, raw: &[u8], split: usize) -> Result<Vec<StreamEvent>, TransportError> {
        let mut parser = SseParser::default();
        let mut decoder = StreamDecoder::new(wire);
        for piece in raw.chunks(split) {
            for data in parser.feed(piece)? {
                decoder.push(&data)?;
            }
        }
        if let Some(data) = parser.finish() {
            decoder.push(&data)?;
        }
        decoder.close()?;
        Ok(decoder.events.into_iter().collect())
    }

    const OPENAI: &[u8] = b"data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Pa\"}}]}\r\n\r\n\
: keep-alive\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"ris\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn openai_stream_in_any_split() {
        for split in [1, 3, 7, 64, 4096] {
            let events = decode(WireFormat::OpenAi, OPENAI, split).unwrap();
            assert_eq!(events[0], StreamEvent::Start { id: Some("c1".into()), model: Some("m".into()) });
            assert_eq!(events[1], StreamEvent::Text("Pa".into()));
            assert_eq!(events[2], StreamEvent::Text("ris".into()));
            let usage = Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
            assert_eq!(events[3], StreamEvent::End { finish_reason: Some("stop".into()), usage });
        }
    }

    #[test]
    fn anthropic_stream() {
        let raw = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg\",\"model\":\"claude\",\"usage\":{\"input_tokens\":4}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let events = decode(WireFormat::Anthropic, raw, 5).unwrap();
        assert_eq!(events[1], StreamEvent::Text("Hi".into()));
        let usage = Usage { prompt_tokens: 4, completion_tokens: 1, total_tokens: 5 };
        assert_eq!(events[2], StreamEvent::End { finish_reason: Some("stop".into()), usage });
    }

    #[test]
    fn absurd_stream_usage_saturates() {
        let max = u64::MAX;
        let openai = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"x\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{max},\"completion_tokens\":{max}}}}}\n\ndata: [DONE]\n\n"
        );
        let events = decode(WireFormat::OpenAi, openai.as_bytes(), 7).unwrap();
        let usage = Usage { prompt_tokens: max, completion_tokens: max, total_tokens: max };
        assert_eq!(events.last(), Some(&StreamEvent::End { finish_reason: Some("stop".into()), usage }));
        let anthropic = format!(
            "data: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max}}}}}}}\n\n\
data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{max}}}}}\n\n\
data: {{\"type\":\"message_stop\"}}\n\n"
        );
        let events = decode(WireFormat::Anthropic, anthropic.as_bytes(), 5).unwrap();
        assert_eq!(events.last(), Some(&StreamEvent::End { finish_reason: Some("stop".into()), usage }));
    }

    #[test]
    fn truncated_and_error_streams_fail() {
        let cut = &OPENAI[..OPENAI.len() / 3];
        assert_eq!(decode(WireFormat::OpenAi, cut, 16).unwrap_err().kind(), "protocol");
        let overloaded = b"data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let err = decode(WireFormat::Anthropic, overloaded, 8).unwrap_err();
        assert_eq!((err.kind(), err.status()), ("server", Some(529)));
        assert_eq!(decode(WireFormat::OpenAi, b"data: {nope\n\n", 4).unwrap_err().kind(), "protocol");
        let too_long = b"data: {\"error\":{\"message\":\"maximum context length exceeded\",\"code\":\"context_length_exceeded\"}}\n\n";
        assert_eq!(decode(WireFormat::OpenAi, too_long, 16).unwrap_err().kind(), "context_length");
    }

    /// Every event of `raw` fed in the given pieces, then finished.
    fn payloads(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(parser.feed(piece).unwrap());
        }
        out.extend(parser.finish());
        out
    }

    #[test]
    fn every_split_parses_the_same_events() {
        let raw: &[u8] = b": comment\r\nevent: delta\r\ndata: {\"a\":1}\r\n\r\ndata: first\ndata:second\n\n\
id: 7\nretry: 10\ndata: \n\n\n\ndata: x\r\n\r\ndata: last without blank line";
        let expected: Vec<Vec<u8>> =
            vec![b"{\"a\":1}".to_vec(), b"first\nsecond".to_vec(), b"".to_vec(), b"x".to_vec(), b"last without blank line".to_vec()];
        assert_eq!(payloads(&[raw]), expected);
        for at in 0..=raw.len() {
            assert_eq!(payloads(&[&raw[..at], &raw[at..]]), expected, "split at byte {at}");
        }
        for size in 1..raw.len() {
            let pieces: Vec<&[u8]> = raw.chunks(size).collect();
            assert_eq!(payloads(&pieces), expected, "pieces of {size} bytes");
        }
    }

    #[test]
    fn an_endless_data_line_stops_at_the_event_limit() {
        // 50 MB of one `data:` line without a newline, in 8 KiB reads: refused once it passes 16 MiB
        let chunk = vec![b'x'; 8 << 10];
        let mut parser = SseParser::default();
        parser.feed(b"data: ").unwrap();
        let mut fed = 6u64;
        let error = loop {
            assert!(fed < 50_000_000, "50 MB fed without an error");
            match parser.feed(&chunk) {
                Ok(events) => assert!(events.is_empty()),
                Err(error) => break error,
            }
            fed += chunk.len() as u64;
        };
        assert_eq!(error, TransportError::TooLarge { what: "a stream event", limit: DEFAULT_MAX_EVENT_BYTES, setting: "max_event_bytes" });
        assert!(fed <= DEFAULT_MAX_EVENT_BYTES && fed + chunk.len() as u64 > DEFAULT_MAX_EVENT_BYTES, "refused at {fed} bytes");
        assert_eq!(error.kind(), "too_large");
        assert!(!error.is_retryable());
        let text = error.to_string();
        assert!(text.contains("max_event_bytes") && text.contains("16777216 bytes"), "{text}");
    }

    #[test]
    fn a_many_line_event_and_a_long_stream_are_capped() {
        let mut parser = SseParser::with_limits(1000, 1 << 20);
        let line = [b"data: ".as_slice(), &[b'y'; 94], b"\n"].concat(); // 94 payload bytes (+1 joining newline)
        let error = (0..20).find_map(|_| parser.feed(&line).err()).expect("a 1900-byte event passed a 1000-byte limit");
        assert_eq!(error.kind(), "too_large");
        // many small events are fine until the response limit
        let mut parser = SseParser::with_limits(1000, 1 << 20);
        let event = b"data: {\"ok\":true}\n\n";
        let mut delivered = 0;
        let error = loop {
            match parser.feed(event) {
                Ok(events) => delivered += events.len(),
                Err(error) => break error,
            }
        };
        assert_eq!(delivered, (1 << 20) / event.len());
        assert_eq!(error, TransportError::TooLarge { what: "the response body", limit: 1 << 20, setting: "max_response_bytes" });
        assert!(error.to_string().contains("max_response_bytes"), "{error}");
    }
}

/// Properties of the SSE parser and the stream decoders over generated streams, splits and bytes.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Cut `raw` at `cuts` (positions taken modulo its length) and feed the pieces.
    fn pieces(raw: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| if raw.is_empty() { 0 } else { c % (raw.len() + 1) }).collect();
        at.push(0);
        at.push(raw.len());
        at.sort_unstable();
        at.windows(2).map(|w| raw[w[0]..w[1]].to_vec()).collect()
    }

    fn payloads(parser: &mut SseParser, chunks: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, TransportError> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(parser.feed(chunk)?);
        }
        out.extend(parser.finish());
        Ok(out)
    }

    fn decode(wire: WireFormat, chunks: &[Vec<u8>]) -> Result<Vec<StreamEvent>, TransportError> {
        let mut parser = SseParser::default();
        let mut decoder = StreamDecoder::new(wire);
        for data in payloads(&mut parser, chunks)? {
            decoder.push(&data)?;
        }
        decoder.close()?;
        Ok(decoder.events.into_iter().collect())
    }

    /// A line's text: anything but CR and LF.
    fn line_text() -> impl Strategy<Value = String> {
        "[^\r\n]{0,40}"
    }

    /// One SSE event: its extra lines (comments, `event:`, `id:`), its `data:` lines, and the line ending used.
    fn event() -> impl Strategy<Value = (Vec<String>, Vec<String>, bool)> {
        let other = prop_oneof![
            line_text().prop_map(|t| format!(":{t}")),
            "[a-z_]{1,12}".prop_map(|t| format!("event: {t}")),
            "[0-9]{1,6}".prop_map(|t| format!("id: {t}")),
        ];
        (vec(other, 0..3), vec(line_text(), 1..4), any::<bool>())
    }

    fn sse_stream(events: &[(Vec<String>, Vec<String>, bool)]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut raw = String::new();
        let mut expected = Vec::new();
        for (others, data, crlf) in events {
            let eol = if *crlf { "\r\n" } else { "\n" };
            for line in others {
                raw.push_str(line);
                raw.push_str(eol);
            }
            for line in data {
                raw.push_str("data: ");
                raw.push_str(line);
                raw.push_str(eol);
            }
            raw.push_str(eol);
            // one leading space after `data:` is dropped (the one written above)
            expected.push(data.join("\n").into_bytes());
        }
        (raw.into_bytes(), expected)
    }

    fn openai_stream(texts: &[String], tool_args: &[String]) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut push = |value: serde_json::Value| raw.extend_from_slice(format!("data: {value}\n\n").as_bytes());
        push(json!({"id": "c1", "model": "m", "choices": [{"delta": {"role": "assistant"}}]}));
        for text in texts {
            push(json!({"choices": [{"delta": {"content": text}}]}));
        }
        for (i, args) in tool_args.iter().enumerate() {
            push(json!({"choices": [{"delta": {"tool_calls": [{"index": i, "id": format!("t{i}"), "function": {"name": "f", "arguments": args}}]}}]}));
        }
        push(json!({"choices": [{"delta": {}, "finish_reason": "stop"}]}));
        push(json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": texts.len(), "total_tokens": 3 + texts.len()}}));
        raw.extend_from_slice(b"data: [DONE]\n\n");
        raw
    }

    fn anthropic_stream(texts: &[String]) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut push = |kind: &str, value: serde_json::Value| {
            raw.extend_from_slice(format!("event: {kind}\r\ndata: {value}\r\n\r\n").as_bytes())
        };
        push("message_start", json!({"type": "message_start", "message": {"id": "msg", "model": "claude", "usage": {"input_tokens": 4}}}));
        for text in texts {
            push("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}));
            push("ping", json!({"type": "ping"}));
        }
        push("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}));
        push("message_stop", json!({"type": "message_stop"}));
        raw
    }

    /// Arbitrary JSON values, a few levels deep.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            prop_oneof![Just("choices".to_string()), Just("type".to_string()), Just("message_stop".to_string()), "[a-z_]{0,12}"]
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("choices"), Just("delta"), Just("message"), Just("usage"), Just("type"), Just("error"), Just("content"),
                Just("tool_calls"), Just("index"), Just("content_block"), Just("prompt_tokens"), Just("input_tokens"),
                Just("output_tokens"), Just("finish_reason"), Just("stop_reason"), Just("text"), Just("function"),
            ];
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                vec((key, inner), 0..5)
                    .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_of_a_valid_stream_gives_the_events_of_one_piece(
            events in vec(event(), 0..8),
            cuts in vec(any::<usize>(), 0..12),
        ) {
            let (raw, expected) = sse_stream(&events);
            let whole = payloads(&mut SseParser::default(), std::slice::from_ref(&raw)).unwrap();
            prop_assert_eq!(&whole, &expected);
            let split = payloads(&mut SseParser::default(), &pieces(&raw, &cuts)).unwrap();
            prop_assert_eq!(split, expected);
        }

        #[test]
        fn any_split_of_an_openai_stream_decodes_the_same(
            texts in vec("[^\u{0}]{1,20}", 0..6),
            tool_args in vec("[ -~]{0,20}", 0..3),
            cuts in vec(any::<usize>(), 0..12),
        ) {
            let raw = openai_stream(&texts, &tool_args);
            let whole = decode(WireFormat::OpenAi, std::slice::from_ref(&raw)).unwrap();
            prop_assert_eq!(whole.len(), texts.len() + tool_args.len() + 2);
            let text: String = whole.iter().filter_map(|e| match e { StreamEvent::Text(t) => Some(t.as_str()), _ => None }).collect();
            prop_assert_eq!(text, texts.concat());
            let usage = Usage::new(3, texts.len() as u64, Some(3 + texts.len() as u64));
            prop_assert_eq!(whole.last(), Some(&StreamEvent::End { finish_reason: Some("stop".into()), usage }));
            prop_assert_eq!(decode(WireFormat::OpenAi, &pieces(&raw, &cuts)).unwrap(), whole);
        }

        #[test]
        fn any_split_of_an_anthropic_stream_decodes_the_same(
            texts in vec("[^\u{0}]{1,20}", 0..6),
            cuts in vec(any::<usize>(), 0..12),
        ) {
            let raw = anthropic_stream(&texts);
            let whole = decode(WireFormat::Anthropic, std::slice::from_ref(&raw)).unwrap();
            let expected_texts: Vec<StreamEvent> = texts.iter().cloned().map(StreamEvent::Text).collect();
            prop_assert_eq!(&whole[1..whole.len() - 1], expected_texts.as_slice());
            prop_assert_eq!(decode(WireFormat::Anthropic, &pieces(&raw, &cuts)).unwrap(), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in vec(vec(any::<u8>(), 0..200), 0..8),
            max_event in 1u64..512,
            max_response in 1u64..2048,
        ) {
            for wire in [WireFormat::OpenAi, WireFormat::Anthropic] {
                let mut parser = SseParser::with_limits(max_event, max_response);
                let mut decoder = StreamDecoder::new(wire);
                for chunk in &chunks {
                    match parser.feed(chunk) {
                        Ok(found) => {
                            for data in found {
                                let _ = decoder.push(&data);
                            }
                        }
                        Err(error) => {
                            prop_assert_eq!(error.kind(), "too_large");
                            break;
                        }
                    }
                }
                let _ = parser.finish();
                let _ = decoder.close();
                let raw: Vec<u8> = chunks.concat();
                let _ = decoder.push(&raw);
                let _ = super::super::wire::parse_completion(wire, &raw);
            }
        }

        #[test]
        fn arbitrary_json_never_panics_the_decoders_or_the_answer_parsers(values in vec(json_value(), 1..6)) {
            for wire in [WireFormat::OpenAi, WireFormat::Anthropic] {
                let mut decoder = StreamDecoder::new(wire);
                for value in &values {
                    let bytes = serde_json::to_vec(value).unwrap();
                    let _ = decoder.push(&bytes);
                    let _ = super::super::wire::parse_completion(wire, &bytes);
                }
                let _ = decoder.close();
            }
        }

        #[test]
        fn an_event_over_the_limit_is_refused_and_one_under_it_is_delivered(
            max_event in 16u64..4096,
            extra in 1u64..512,
            cuts in vec(any::<usize>(), 0..12),
        ) {
            let over = [b"data: ".to_vec(), vec![b'z'; (max_event + extra) as usize], b"\n\n".to_vec()].concat();
            let mut parser = SseParser::with_limits(max_event, u64::MAX);
            let error = payloads(&mut parser, &pieces(&over, &cuts)).unwrap_err();
            prop_assert_eq!(error, TransportError::TooLarge { what: "a stream event", limit: max_event, setting: "max_event_bytes" });
            // the `data: ` prefix and the blank line count while the line is unfinished
            let fits = (max_event - 8) as usize;
            let under = [b"data: ".to_vec(), vec![b'z'; fits], b"\n\n".to_vec()].concat();
            let mut parser = SseParser::with_limits(max_event, u64::MAX);
            prop_assert_eq!(payloads(&mut parser, &pieces(&under, &cuts)).unwrap(), vec![vec![b'z'; fits]]);
        }

        #[test]
        fn a_stream_over_the_response_limit_is_refused(
            max_response in 64u64..8192,
            cuts in vec(any::<usize>(), 0..12),
        ) {
            let event = b"data: {}\n\n";
            let count = max_response as usize / event.len() + 1;
            let raw = event.repeat(count);
            let mut parser = SseParser::with_limits(64, max_response);
            let error = payloads(&mut parser, &pieces(&raw, &cuts)).unwrap_err();
            prop_assert_eq!(error, TransportError::TooLarge { what: "the response body", limit: max_response, setting: "max_response_bytes" });
            let fits = event.repeat(max_response as usize / event.len());
            let mut parser = SseParser::with_limits(64, max_response);
            prop_assert_eq!(payloads(&mut parser, &pieces(&fits, &cuts)).unwrap().len(), max_response as usize / event.len());
        }
    }
}
