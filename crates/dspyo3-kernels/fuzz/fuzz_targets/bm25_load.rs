//! Arbitrary payloads behind a valid BM25 index header (magic, version, length, checksum), so the fuzzer reaches
//! the decoder rather than the checksum check: a clear error or an index, never a panic or an abort on allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dspyo3_kernels::bm25::{Bm25Index, Bm25Params};
use dspyo3_kernels::tokenizer::TokenizerConfig;
use libfuzzer_sys::fuzz_target;

/// Magic and format version, taken from an index this build saves (so the target follows format changes).
fn header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let mut index = Bm25Index::new(TokenizerConfig::default(), Bm25Params::default()).expect("default index");
        index.add(&["a".to_string()], &["seed document"]).expect("add");
        let path = scratch("seed");
        index.save(&path).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        bytes[..12].to_vec()
    })
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dspyo3-fuzz-bm25-{}-{name}.idx", std::process::id()))
}

fuzz_target!(|payload: &[u8]| {
    let mut bytes = header().to_vec();
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    let path = scratch("case");
    std::fs::write(&path, &bytes).expect("write the case");
    let _ = Bm25Index::load(&path);
});

/// CRC-32 (IEEE), the checksum the index header carries.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
