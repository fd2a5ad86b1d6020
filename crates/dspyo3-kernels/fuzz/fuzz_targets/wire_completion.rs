//! Arbitrary bytes as a non-streamed answer body of either wire format: an error or a completion, never a panic.
#![no_main]

use dspyo3_kernels::transport::{parse_completion, WireFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = parse_completion(WireFormat::OpenAi, body);
    let _ = parse_completion(WireFormat::Anthropic, body);
});
