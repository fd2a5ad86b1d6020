//! Arbitrary bytes, split at arbitrary points, through the SSE parser and the stream decoder of both wire
//! formats: never a panic, and the parser's size limits always hold.
#![no_main]

use dspyo3_kernels::transport::{SseParser, StreamDecoder, WireFormat};
use libfuzzer_sys::fuzz_target;

const MAX_EVENT: u64 = 4096;
const MAX_RESPONSE: u64 = 64 * 1024;

fuzz_target!(|input: &[u8]| {
    // the first byte picks the wire format and the chunk size, the rest is the stream
    let Some((&control, stream)) = input.split_first() else { return };
    let wire = if control & 1 == 0 { WireFormat::OpenAi } else { WireFormat::Anthropic };
    let chunk = usize::from(control >> 1).max(1);
    let mut parser = SseParser::with_limits(MAX_EVENT, MAX_RESPONSE);
    let mut decoder = StreamDecoder::new(wire);
    for piece in stream.chunks(chunk) {
        match parser.feed(piece) {
            Ok(payloads) => {
                for payload in payloads {
                    assert!(payload.len() as u64 <= MAX_EVENT, "an event over the limit got through");
                    if decoder.push(&payload).is_err() {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
    }
    if let Some(last) = parser.finish() {
        let _ = decoder.push(&last);
    }
    let _ = decoder.close();
});
