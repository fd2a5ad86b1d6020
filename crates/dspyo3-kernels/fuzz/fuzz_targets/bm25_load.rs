//! BM25 index files, both formats, with valid checksums so the fuzzer reaches the decoders rather than the
//! checksum checks: a clear error or an index, never a panic or an abort on allocation.
//!
//! * First byte even: arbitrary payload behind a format 1 header (magic, version 1, length, CRC), through
//!   `Bm25Index::load` (old collections still load).
//! * First byte odd: a real format 2 file with the input XORed over it from an offset, checksums recomputed,
//!   through `MappedBm25::open` plus searches (filtered and not) and `Bm25Index::load`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dspyo3_kernels::bm25::{Bm25Index, Bm25Params};
use dspyo3_kernels::bm25_mmap::MappedBm25;
use dspyo3_kernels::tokenizer::TokenizerConfig;
use libfuzzer_sys::fuzz_target;

/// A format 2 file this build saves (so the target follows format changes).
fn seed() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let mut index = Bm25Index::new(TokenizerConfig::default(), Bm25Params::default()).expect("default index");
        let ids: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        index
            .add(&ids, &["seed document", "another seed text", "quick brown fox", "lazy dog documents"])
            .expect("add");
        index.delete(&["b".to_string()]);
        let path = scratch("seed");
        index.save(&path).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dspyo3-fuzz-bm25-{}-{name}.idx", std::process::id()))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Recompute the data CRC (in the metadata) and the metadata CRC (in the header), where the table allows.
fn reseal(bytes: &mut [u8]) {
    let (Some(meta_at), Some(meta_len)) = (u64_at(bytes, 32), u64_at(bytes, 40)) else { return };
    let Some(meta_end) = meta_at.checked_add(meta_len).map(|end| end as usize) else { return };
    if meta_at as usize + 40 > bytes.len() || meta_end > bytes.len() || meta_end < 24 {
        return;
    }
    let data_crc = crc32(&[&bytes[meta_end..]]);
    let at = meta_at as usize + 32;
    bytes[at..at + 4].copy_from_slice(&data_crc.to_le_bytes());
    let meta_crc = crc32(&[&bytes[..20], &bytes[24..meta_end]]);
    bytes[20..24].copy_from_slice(&meta_crc.to_le_bytes());
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, payload)) = input.split_first() else { return };
    let path = scratch("case");
    if mode % 2 == 0 {
        let mut bytes = b"DSPYO3BM".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32(&[payload]).to_le_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(&path, &bytes).expect("write the case");
        let _ = Bm25Index::load(&path);
        return;
    }
    let mut bytes = seed().to_vec();
    let Some((&start, edits)) = payload.split_first() else { return };
    let from = (start as usize * 4) % bytes.len();
    for (byte, edit) in bytes[from..].iter_mut().zip(edits) {
        *byte ^= edit;
    }
    if mode & 2 != 0 {
        let cut = bytes.len() - (start as usize % 64).min(bytes.len());
        bytes.truncate(cut);
    }
    reseal(&mut bytes);
    std::fs::write(&path, &bytes).expect("write the case");
    if let Ok(mapped) = MappedBm25::open(&path) {
        for query in ["seed document", "quick fox dog", "another text"] {
            let _ = mapped.search(query, 5, None);
        }
        let allow = mapped.allow_list(&["a", "c", "zz"]);
        let _ = mapped.search_batch(&["seed", "lazy documents"], 3, Some(&allow));
        let _ = mapped.ids();
    }
    let _ = Bm25Index::load(&path);
});

/// CRC-32 (IEEE) of the concatenated parts, the checksum the index files carry.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
