//! A BM25 index searched straight from a memory-mapped format 2 file: opening reads only the header, the
//! section table, the configuration and the term / document offset arrays (O(terms + docs), no postings), so a
//! large index answers its first query in milliseconds. Read-only; scores, order and ties are those of
//! [`Bm25Index`](crate::bm25::Bm25Index) (the same scoring code runs over the mapped slices).
//!
//! # Format 2
//!
//! All integers little-endian. A 24-byte header: magic `DSPYO3BM`, version `u32` (2), file length `u64`, and
//! a CRC-32 of the metadata (header bytes `0..20`, then everything from byte 24 to the end of the `META`
//! section). At byte 24: section count `u32` (13), a zero `u32`, then per section `(offset u64, length u64)`.
//! Every section starts 8-byte aligned, in table order, without overlap:
//!
//! | # | section | contents |
//! |---|---|---|
//! | 0 | `META` | live docs `N` u64, total length u64, terms `T` u64, postings `P` u64, data CRC u32, 0 u32, tokenizer config + params |
//! | 1 | `TERM_OFFSETS` | `T + 1` u64 offsets into `TERM_BLOB` (terms sorted bytewise) |
//! | 2 | `TERM_BLOB` | UTF-8 terms, concatenated |
//! | 3 | `TERM_DF` | `T` u32 document frequencies |
//! | 4 | `TERM_MAX` | `T` f32 largest impact per term |
//! | 5 | `TERM_START` | `T + 1` u64 offsets into the postings arrays |
//! | 6..8 | `POST_DOCS`, `POST_TFS`, `POST_IMPACTS` | `P` u32 doc slots (ascending per term), u32 tfs, f32 impacts |
//! | 9 | `DOC_LEN` | `N` u32 document lengths |
//! | 10, 11 | `ID_OFFSETS`, `ID_BLOB` | `N + 1` u64 offsets, UTF-8 ids concatenated |
//! | 12 | `ID_ORDER` | `N` u32 slots sorted by id bytewise |
//!
//! The data CRC covers every byte after the `META` section; [`Bm25Index::load`](crate::bm25::Bm25Index::load)
//! checks it, the mapped open does not (it would touch every page).

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::bm25::{
    decode_config, pruned_top_k, score_prepared, top_docs, AllowList, Bm25Params, Reader, ScoreBuf, TermPostings,
    FORMAT_VERSION, MAGIC,
};
use crate::error::{KernelError, Result};
use crate::tokenizer::{Tokenizer, TokenizerConfig};

const SECTIONS: usize = 13;
pub(crate) const META: usize = 0;
pub(crate) const TERM_OFFSETS: usize = 1;
pub(crate) const TERM_BLOB: usize = 2;
pub(crate) const TERM_DF: usize = 3;
pub(crate) const TERM_MAX: usize = 4;
pub(crate) const TERM_START: usize = 5;
pub(crate) const POST_DOCS: usize = 6;
pub(crate) const POST_TFS: usize = 7;
pub(crate) const POST_IMPACTS: usize = 8;
pub(crate) const DOC_LEN: usize = 9;
pub(crate) const ID_OFFSETS: usize = 10;
pub(crate) const ID_BLOB: usize = 11;
pub(crate) const ID_ORDER: usize = 12;
const TABLE_END: usize = 32 + SECTIONS * 16;
const META_FIXED: usize = 40;

/// The postings arrays of a format 2 file, produced on demand so [`write_v2`] never holds them in memory.
pub(crate) trait PostingsSource {
    /// Write section `section` ([`POST_DOCS`], [`POST_TFS`] or [`POST_IMPACTS`]) to `out`: one little-endian
    /// 4-byte value per posting, terms in file order, exactly `Parts::starts.last()` values.
    fn write_section(&self, section: usize, out: &mut impl Write) -> io::Result<()>;
}

/// What [`write_v2`] lays out. Everything but the postings is small (O(terms + docs)) and passed as slices.
pub(crate) struct Parts<'a, T: Iterator<Item = &'a str>, I: Iterator<Item = &'a str>, P: PostingsSource> {
    pub(crate) config: &'a [u8],
    pub(crate) live: u64,
    pub(crate) total_len: u64,
    pub(crate) terms: T,
    pub(crate) term_count: usize,
    pub(crate) dfs: &'a [u32],
    pub(crate) max_impacts: &'a [f32],
    /// `term_count + 1` offsets into the postings arrays; the last one is the postings count.
    pub(crate) starts: &'a [u64],
    pub(crate) postings: P,
    pub(crate) lens: &'a [u32],
    pub(crate) ids: I,
    pub(crate) order: &'a [u32],
}

/// Forwards writes and CRCs every byte that passes.
struct CrcWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_u32s(out: &mut impl Write, values: impl IntoIterator<Item = u32>) -> io::Result<()> {
    values.into_iter().try_for_each(|v| out.write_all(&v.to_le_bytes()))
}

fn put_offsets<'a>(out: &mut impl Write, items: impl Iterator<Item = &'a str>) -> io::Result<()> {
    let mut at = 0u64;
    out.write_all(&at.to_le_bytes())?;
    for item in items {
        at += item.len() as u64;
        out.write_all(&at.to_le_bytes())?;
    }
    Ok(())
}

/// Write a format 2 file to `out` (positioned at its start, empty) section by section, holding no postings:
/// the section table is computed from the sizes, the data is streamed through a buffer while its CRC is
/// taken, then the header and metadata are rewritten with the CRCs. Extra memory is the header plus the
/// write buffer.
pub(crate) fn write_v2<'a, T, I, P, W>(parts: &Parts<'a, T, I, P>, out: &mut W) -> io::Result<()>
where
    T: Iterator<Item = &'a str> + Clone,
    I: Iterator<Item = &'a str> + Clone,
    P: PostingsSource,
    W: Write + Seek,
{
    let term_count = parts.term_count;
    let postings = parts.starts.last().copied().unwrap_or(0);
    let live = parts.lens.len();
    let term_blob: u64 = parts.terms.clone().map(|t| t.len() as u64).sum();
    let id_blob: u64 = parts.ids.clone().map(|t| t.len() as u64).sum();
    let meta_len = (META_FIXED + parts.config.len()) as u64;
    let lengths: [u64; SECTIONS] = [
        meta_len,
        8 * (term_count as u64 + 1),
        term_blob,
        4 * term_count as u64,
        4 * term_count as u64,
        8 * parts.starts.len() as u64,
        4 * postings,
        4 * postings,
        4 * postings,
        4 * live as u64,
        8 * (live as u64 + 1),
        id_blob,
        4 * parts.order.len() as u64,
    ];
    let mut offsets = [0u64; SECTIONS];
    let mut at = TABLE_END as u64;
    for s in 0..SECTIONS {
        offsets[s] = at;
        at = (at + lengths[s]).next_multiple_of(8);
    }
    let file_len = at;
    let meta_end = (offsets[META] + meta_len) as usize;

    // header, table and metadata with the two CRC fields zero; rewritten once the data CRC is known
    let mut head = vec![0u8; meta_end];
    head[..8].copy_from_slice(MAGIC);
    head[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    head[12..20].copy_from_slice(&file_len.to_le_bytes());
    head[24..28].copy_from_slice(&(SECTIONS as u32).to_le_bytes());
    for s in 0..SECTIONS {
        let entry = 32 + s * 16;
        head[entry..entry + 8].copy_from_slice(&offsets[s].to_le_bytes());
        head[entry + 8..entry + 16].copy_from_slice(&lengths[s].to_le_bytes());
    }
    let meta_at = offsets[META] as usize;
    for (i, value) in [parts.live, parts.total_len, term_count as u64, postings].into_iter().enumerate() {
        head[meta_at + 8 * i..meta_at + 8 * i + 8].copy_from_slice(&value.to_le_bytes());
    }
    head[meta_at + META_FIXED..meta_end].copy_from_slice(parts.config);
    out.write_all(&head)?;

    let crc = CrcWriter { inner: &mut *out, hasher: crc32fast::Hasher::new(), written: 0 };
    let mut data = io::BufWriter::with_capacity(1 << 20, crc);
    let position = |data: &io::BufWriter<CrcWriter<&mut W>>| {
        meta_end as u64 + data.get_ref().written + data.buffer().len() as u64
    };
    for s in TERM_OFFSETS..SECTIONS {
        // zero padding up to this section's 8-byte aligned start (it follows the previous section)
        let pad = (offsets[s] - position(&data)) as usize;
        data.write_all(&[0u8; 8][..pad])?;
        match s {
            TERM_OFFSETS => put_offsets(&mut data, parts.terms.clone())?,
            TERM_BLOB => parts.terms.clone().try_for_each(|t| data.write_all(t.as_bytes()))?,
            TERM_DF => put_u32s(&mut data, parts.dfs.iter().copied())?,
            TERM_MAX => put_u32s(&mut data, parts.max_impacts.iter().map(|v| v.to_bits()))?,
            TERM_START => parts.starts.iter().try_for_each(|v| data.write_all(&v.to_le_bytes()))?,
            POST_DOCS | POST_TFS | POST_IMPACTS => parts.postings.write_section(s, &mut data)?,
            DOC_LEN => put_u32s(&mut data, parts.lens.iter().copied())?,
            ID_OFFSETS => put_offsets(&mut data, parts.ids.clone())?,
            ID_BLOB => parts.ids.clone().try_for_each(|t| data.write_all(t.as_bytes()))?,
            _ => put_u32s(&mut data, parts.order.iter().copied())?,
        }
        if position(&data) != offsets[s] + lengths[s] {
            return Err(io::Error::other(format!("BM25 save: section {s} has an unexpected length (a bug)")));
        }
    }
    let tail = (file_len - position(&data)) as usize;
    data.write_all(&[0u8; 8][..tail])?;
    let crc = data.into_inner().map_err(|err| err.into_error())?;
    if meta_end as u64 + crc.written != file_len {
        return Err(io::Error::other("BM25 save: the file length does not match its table (a bug)"));
    }
    let data_crc = crc.hasher.finalize();
    head[meta_at + 32..meta_at + 36].copy_from_slice(&data_crc.to_le_bytes());
    let crc = meta_crc(&head, meta_end);
    head[20..24].copy_from_slice(&crc.to_le_bytes());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&head)?;
    out.flush()
}

/// What [`write_v2_reference`] lays out.
#[cfg(test)]
pub(crate) struct ReferenceParts<'a, T: Iterator<Item = &'a str>, I: Iterator<Item = &'a str>> {
    pub(crate) config: &'a [u8],
    pub(crate) live: u64,
    pub(crate) total_len: u64,
    pub(crate) terms: T,
    pub(crate) term_count: usize,
    pub(crate) dfs: &'a [u32],
    pub(crate) max_impacts: &'a [f32],
    pub(crate) starts: &'a [u64],
    pub(crate) docs: &'a [u32],
    pub(crate) tfs: &'a [u32],
    pub(crate) impacts: &'a [f32],
    pub(crate) lens: &'a [u32],
    pub(crate) ids: I,
    pub(crate) order: &'a [u32],
}

#[cfg(test)]
fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
fn u64_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
fn blob<'a>(items: impl Iterator<Item = &'a str>) -> (Vec<u8>, Vec<u8>) {
    let mut offsets = vec![0u64];
    let mut blob = Vec::new();
    for item in items {
        blob.extend_from_slice(item.as_bytes());
        offsets.push(blob.len() as u64);
    }
    (u64_bytes(&offsets), blob)
}

/// The bytes of a format 2 file, built in memory: the reference [`write_v2`] must match byte for byte.
#[cfg(test)]
pub(crate) fn write_v2_reference<'a, T: Iterator<Item = &'a str> + Clone, I: Iterator<Item = &'a str> + Clone>(
    parts: &ReferenceParts<'a, T, I>,
) -> Vec<u8> {
    let (term_offsets, term_blob) = blob(parts.terms.clone());
    debug_assert_eq!(term_offsets.len(), 8 * (parts.term_count + 1));
    let (id_offsets, id_blob) = blob(parts.ids.clone());
    let mut sections: Vec<Vec<u8>> = vec![
        Vec::new(), // META, filled below (it carries the CRC of the others)
        term_offsets,
        term_blob,
        u32_bytes(parts.dfs),
        f32_bytes(parts.max_impacts),
        u64_bytes(parts.starts),
        u32_bytes(parts.docs),
        u32_bytes(parts.tfs),
        f32_bytes(parts.impacts),
        u32_bytes(parts.lens),
        id_offsets,
        id_blob,
        u32_bytes(parts.order),
    ];
    let meta_len = META_FIXED + parts.config.len();
    // offsets: sections back to back, each padded to 8 bytes
    let mut offsets = Vec::with_capacity(SECTIONS);
    let mut at = TABLE_END;
    for (s, section) in sections.iter().enumerate() {
        offsets.push(at);
        let len = if s == META { meta_len } else { section.len() };
        at = (at + len).next_multiple_of(8);
    }
    let file_len = at;
    let mut out = vec![0u8; file_len];
    for (s, section) in sections.iter().enumerate().skip(1) {
        out[offsets[s]..offsets[s] + section.len()].copy_from_slice(section);
    }
    let meta_end = offsets[META] + meta_len;
    let data_crc = crc32fast::hash(&out[meta_end..]);
    let mut meta = Vec::with_capacity(meta_len);
    for value in [parts.live, parts.total_len, parts.term_count as u64, parts.docs.len() as u64] {
        meta.extend_from_slice(&value.to_le_bytes());
    }
    meta.extend_from_slice(&data_crc.to_le_bytes());
    meta.extend_from_slice(&0u32.to_le_bytes());
    meta.extend_from_slice(parts.config);
    sections[META] = meta;
    out[offsets[META]..meta_end].copy_from_slice(&sections[META]);
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&(file_len as u64).to_le_bytes());
    out[24..28].copy_from_slice(&(SECTIONS as u32).to_le_bytes());
    for (s, section) in sections.iter().enumerate() {
        let entry = 32 + s * 16;
        let len = if s == META { meta_len } else { section.len() };
        out[entry..entry + 8].copy_from_slice(&(offsets[s] as u64).to_le_bytes());
        out[entry + 8..entry + 16].copy_from_slice(&(len as u64).to_le_bytes());
    }
    let crc = meta_crc(&out, meta_end);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

fn meta_crc(bytes: &[u8], meta_end: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..20]);
    hasher.update(&bytes[24..meta_end]);
    hasher.finalize()
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A format 2 file's header, section table and metadata, checked for structure (not the big arrays).
pub(crate) struct Layout {
    sections: [(usize, usize); SECTIONS],
    pub(crate) config: TokenizerConfig,
    pub(crate) params: Bm25Params,
    pub(crate) live: usize,
    pub(crate) total_len: u64,
    pub(crate) terms: usize,
    postings: usize,
    data_crc: u32,
}

fn format(shown: &str, what: impl std::fmt::Display) -> KernelError {
    KernelError::Format(format!("{shown} is corrupt ({what}); restore it or rebuild the index"))
}

impl Layout {
    /// Check the header, metadata CRC, section table and metadata of a format 2 file.
    pub(crate) fn parse(bytes: &[u8], shown: &str) -> Result<Self> {
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(KernelError::Format(format!("{shown} is not a dspyo3 BM25 index file")));
        }
        let version = read_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(KernelError::Format(format!(
                "{shown} is in BM25 index format {version}; only format {FORMAT_VERSION} opens memory-mapped: \
                 load it in full (`BM25.load(path)`) and save it again, or rebuild the index"
            )));
        }
        let file_len = read_u64(bytes, 12);
        if file_len != bytes.len() as u64 {
            return Err(KernelError::Format(format!(
                "{shown} is truncated or padded ({} bytes, header says {file_len}); restore it or rebuild",
                bytes.len()
            )));
        }
        if bytes.len() < TABLE_END {
            return Err(format(shown, "too short for its section table"));
        }
        if read_u32(bytes, 24) as usize != SECTIONS || read_u32(bytes, 28) != 0 {
            return Err(format(shown, "unexpected section count"));
        }
        let mut sections = [(0usize, 0usize); SECTIONS];
        let mut end = TABLE_END;
        for (s, section) in sections.iter_mut().enumerate() {
            let offset = read_u64(bytes, 32 + s * 16);
            let len = read_u64(bytes, 40 + s * 16);
            let stop = offset.checked_add(len).filter(|&stop| stop <= bytes.len() as u64);
            let Some(stop) = stop else { return Err(format(shown, format!("section {s} runs past the end"))) };
            if offset % 8 != 0 {
                return Err(format(shown, format!("section {s} is not 8-byte aligned")));
            }
            if (offset as usize) < end {
                return Err(format(shown, format!("section {s} overlaps the one before")));
            }
            *section = (offset as usize, len as usize);
            end = stop as usize;
        }
        let (meta_at, meta_len) = sections[META];
        if meta_at != TABLE_END || meta_len < META_FIXED {
            return Err(format(shown, "misplaced metadata section"));
        }
        if meta_crc(bytes, meta_at + meta_len) != read_u32(bytes, 20) {
            return Err(format(shown, "metadata checksum mismatch"));
        }
        let meta = &bytes[meta_at..meta_at + meta_len];
        let live = read_u64(meta, 0);
        let total_len = read_u64(meta, 8);
        let terms = read_u64(meta, 16);
        let postings = read_u64(meta, 24);
        let data_crc = read_u32(meta, 32);
        let mut reader = Reader { bytes: &meta[META_FIXED..], at: 0 };
        let (config, params) = decode_config(&mut reader).map_err(|err| format(shown, err))?;
        if reader.at != reader.bytes.len() {
            return Err(format(shown, "trailing bytes after the configuration"));
        }
        Tokenizer::new(config.clone()).map_err(|err| format(shown, err))?;
        if live > u32::MAX as u64 || terms > u32::MAX as u64 {
            return Err(format(shown, "too many documents or terms"));
        }
        let (live, terms) = (live as usize, terms as usize);
        let postings = usize::try_from(postings).map_err(|_| format(shown, "postings count out of range"))?;
        let expect = |s: usize, n: Option<usize>, width: usize| -> Result<()> {
            match n.and_then(|n| n.checked_mul(width)) {
                Some(len) if len == sections[s].1 => Ok(()),
                _ => Err(format(shown, format!("section {s} has the wrong length"))),
            }
        };
        expect(TERM_OFFSETS, terms.checked_add(1), 8)?;
        expect(TERM_DF, Some(terms), 4)?;
        expect(TERM_MAX, Some(terms), 4)?;
        expect(TERM_START, terms.checked_add(1), 8)?;
        expect(POST_DOCS, Some(postings), 4)?;
        expect(POST_TFS, Some(postings), 4)?;
        expect(POST_IMPACTS, Some(postings), 4)?;
        expect(DOC_LEN, Some(live), 4)?;
        expect(ID_OFFSETS, live.checked_add(1), 8)?;
        expect(ID_ORDER, Some(live), 4)?;
        let layout = Layout { sections, config, params, live, total_len, terms, postings, data_crc };
        // offsets monotone and in range; document frequencies match the postings ranges; slots in range
        let shown_err = |what: &str| format(shown, what);
        layout.check_offsets(bytes, TERM_OFFSETS, layout.section(TERM_BLOB).1 as u64)
            .map_err(|_| shown_err("term offsets out of order or range"))?;
        layout.check_offsets(bytes, TERM_START, layout.postings as u64)
            .map_err(|_| shown_err("postings offsets out of order or range"))?;
        layout.check_offsets(bytes, ID_OFFSETS, layout.section(ID_BLOB).1 as u64)
            .map_err(|_| shown_err("id offsets out of order or range"))?;
        let (df_at, _) = layout.section(TERM_DF);
        let (start_at, _) = layout.section(TERM_START);
        for t in 0..terms {
            let df = read_u32(bytes, df_at + 4 * t) as u64;
            if read_u64(bytes, start_at + 8 * t + 8) - read_u64(bytes, start_at + 8 * t) != df {
                return Err(shown_err("a document frequency disagrees with its postings"));
            }
            if t > 0 && layout.term(bytes, t - 1)? >= layout.term(bytes, t)? {
                return Err(shown_err("terms are not sorted"));
            }
        }
        let (order_at, _) = layout.section(ID_ORDER);
        for i in 0..live {
            if read_u32(bytes, order_at + 4 * i) as usize >= live {
                return Err(shown_err("id order lists a document out of range"));
            }
        }
        Ok(layout)
    }

    fn section(&self, s: usize) -> (usize, usize) {
        self.sections[s]
    }

    fn check_offsets(&self, bytes: &[u8], s: usize, last: u64) -> std::result::Result<(), ()> {
        let (at, len) = self.section(s);
        let count = len / 8;
        let mut previous = 0u64;
        for i in 0..count {
            let value = read_u64(bytes, at + 8 * i);
            if (i == 0 && value != 0) || value < previous {
                return Err(());
            }
            previous = value;
        }
        if previous != last {
            return Err(());
        }
        Ok(())
    }

    /// Check the CRC of the data sections (reads every byte after the metadata).
    pub(crate) fn check_data_crc(&self, bytes: &[u8], shown: &str) -> Result<()> {
        let (meta_at, meta_len) = self.section(META);
        if crc32fast::hash(&bytes[meta_at + meta_len..]) != self.data_crc {
            return Err(KernelError::Format(format!("{shown} is corrupt (checksum mismatch); restore it or rebuild")));
        }
        Ok(())
    }

    /// Bytes of term `t` (`t < terms`; offsets were checked at parse).
    pub(crate) fn term<'b>(&self, bytes: &'b [u8], t: usize) -> Result<&'b [u8]> {
        self.blob_item(bytes, TERM_OFFSETS, TERM_BLOB, t)
    }

    fn blob_item<'b>(&self, bytes: &'b [u8], offsets: usize, blob: usize, i: usize) -> Result<&'b [u8]> {
        let (offsets_at, offsets_len) = self.section(offsets);
        let (blob_at, blob_len) = self.section(blob);
        if 8 * i + 16 > offsets_len {
            return Err(KernelError::Format(format!("entry {i} out of range")));
        }
        let start = read_u64(bytes, offsets_at + 8 * i) as usize;
        let end = read_u64(bytes, offsets_at + 8 * i + 8) as usize;
        if start > end || end > blob_len {
            return Err(KernelError::Format(format!("entry {i} out of range")));
        }
        Ok(&bytes[blob_at + start..blob_at + end])
    }

    /// Id of document `slot`, checked as UTF-8.
    pub(crate) fn id<'b>(&self, bytes: &'b [u8], slot: u32) -> Result<&'b str> {
        let id = self.blob_item(bytes, ID_OFFSETS, ID_BLOB, slot as usize)?;
        std::str::from_utf8(id).map_err(|_| KernelError::Format(format!("document {slot}'s id is not UTF-8")))
    }

    /// Section `s` copied out as u32 values.
    pub(crate) fn u32_vec(&self, bytes: &[u8], s: usize) -> Vec<u32> {
        let (at, len) = self.section(s);
        bytes[at..at + len].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
    }

    /// Section `s` copied out as u64 values.
    pub(crate) fn u64_vec(&self, bytes: &[u8], s: usize) -> Vec<u64> {
        let (at, len) = self.section(s);
        bytes[at..at + len].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    }

    /// Section `s` viewed in place as `T` values (u32 / f32 / u64); sections are 8-byte aligned in the file
    /// and the map is page aligned.
    fn view<'b, T: Plain>(&self, bytes: &'b [u8], s: usize) -> Result<&'b [T]> {
        let (at, len) = self.section(s);
        let raw = &bytes[at..at + len];
        // SAFETY: `T` is a plain number type (every bit pattern valid), the view only narrows lifetime
        // and length; `align_to` puts any misaligned bytes in the prefix / suffix, rejected below.
        let (prefix, values, suffix) = unsafe { raw.align_to::<T>() };
        if !prefix.is_empty() || !suffix.is_empty() {
            return Err(KernelError::Format(format!("section {s} is misaligned in memory")));
        }
        Ok(values)
    }
}

/// Number types that may be viewed in place from little-endian bytes.
trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for f32 {}

/// A read-only BM25 index searched from a memory-mapped format 2 file (see the module documentation).
pub struct MappedBm25 {
    map: Mmap,
    layout: Layout,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for MappedBm25 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedBm25").field("params", &self.layout.params).field("documents", &self.layout.live).finish()
    }
}

impl MappedBm25 {
    /// Map the file at `path` and check its structure (header, metadata checksum, section bounds and
    /// alignment, offset arrays); postings are not read until searched. A format 1 file, or a foreign,
    /// truncated or corrupt one, is a [`KernelError::Format`] that says what to do.
    ///
    /// The file must not be modified while mapped ([`Bm25Index::save`](crate::bm25::Bm25Index::save)
    /// replaces files atomically, so an open map keeps the old contents).
    pub fn open(path: &Path) -> Result<Self> {
        if cfg!(target_endian = "big") {
            return Err(KernelError::Format(
                "memory-mapped BM25 indexes need a little-endian machine; load the index instead".into(),
            ));
        }
        let file = File::open(path)?;
        // SAFETY: the map is read-only; the file is replaced (renamed over) rather than written in place by
        // this crate's writers. Every access below is bounds-checked against the map's length.
        let map = unsafe { Mmap::map(&file)? };
        let shown = path.display().to_string();
        let layout = Layout::parse(&map, &shown)?;
        let tokenizer = Tokenizer::new(layout.config.clone())?;
        let mapped = MappedBm25 { map, layout, tokenizer };
        // the in-place views must be possible (alignment); checked once here
        for s in [TERM_DF, TERM_MAX, POST_DOCS, POST_IMPACTS, POST_TFS, ID_ORDER] {
            mapped.layout.view::<u32>(&mapped.map, s).map_err(|err| format(&shown, err))?;
        }
        mapped.layout.view::<u64>(&mapped.map, TERM_START).map_err(|err| format(&shown, err))?;
        Ok(mapped)
    }

    fn u32s(&self, s: usize) -> &[u32] {
        self.layout.view(&self.map, s).unwrap_or(&[])
    }

    fn f32s(&self, s: usize) -> &[f32] {
        self.layout.view(&self.map, s).unwrap_or(&[])
    }

    fn u64s(&self, s: usize) -> &[u64] {
        self.layout.view(&self.map, s).unwrap_or(&[])
    }

    /// Scoring parameters.
    pub fn params(&self) -> Bm25Params {
        self.layout.params
    }

    /// Write a copy of the mapped file to `path` atomically (it may be the file this index was opened from:
    /// the map keeps reading the old contents).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, &self.map)
    }

    /// The tokenizer queries go through.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens a query becomes (the tokenizer's output).
    pub fn tokenize_query(&self, query: &str) -> Vec<String> {
        self.tokenizer.tokenize(query)
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.layout.live
    }

    /// True when the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.layout.live == 0
    }

    /// Number of distinct terms.
    pub fn vocabulary_size(&self) -> usize {
        self.layout.terms
    }

    /// Number of document slots (equal to [`MappedBm25::len`]: a saved index is compacted).
    pub fn slots(&self) -> usize {
        self.layout.live
    }

    /// The id of document slot `doc` (as returned by the `*_docs` searches); an error for a slot out of range
    /// or an id that is not UTF-8 (a corrupt file).
    pub fn doc_id(&self, doc: u32) -> Result<&str> {
        if doc as usize >= self.layout.live {
            return Err(KernelError::InvalidArgument(format!("document slot {doc} out of range")));
        }
        self.layout.id(&self.map, doc)
    }

    /// Ids of all documents, in slot (insertion) order. Reads the whole id section.
    pub fn ids(&self) -> Result<Vec<String>> {
        (0..self.layout.live as u32).map(|d| self.doc_id(d).map(str::to_string)).collect()
    }

    /// The slot of document `id`, by binary search over the id-sorted permutation.
    fn slot_of(&self, id: &str) -> Option<u32> {
        let order = self.u32s(ID_ORDER);
        let mut low = 0;
        let mut high = order.len();
        while low < high {
            let mid = low + (high - low) / 2;
            let slot = order[mid];
            let found = self.layout.blob_item(&self.map, ID_OFFSETS, ID_BLOB, slot as usize).ok()?;
            match found.cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(slot),
            }
        }
        None
    }

    /// Whether a document with this id is in the index.
    pub fn contains(&self, id: &str) -> bool {
        self.slot_of(id).is_some()
    }

    /// Resolve an allow-list of ids (unknown ids are ignored).
    pub fn allow_list<S: AsRef<str>>(&self, ids: &[S]) -> AllowList {
        let mut allowed = vec![false; self.layout.live];
        for id in ids {
            if let Some(slot) = self.slot_of(id.as_ref()) {
                allowed[slot as usize] = true;
            }
        }
        AllowList { allowed }
    }

    /// The term id of `token`, by binary search over the sorted dictionary.
    fn term_of(&self, token: &[u8]) -> Option<usize> {
        let mut low = 0;
        let mut high = self.layout.terms;
        while low < high {
            let mid = low + (high - low) / 2;
            match self.layout.term(&self.map, mid).ok()?.cmp(token) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn query_postings<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<Option<TermPostings<'_>>> {
        let (starts, dfs, maxes) = (self.u64s(TERM_START), self.u32s(TERM_DF), self.f32s(TERM_MAX));
        let (docs, impacts) = (self.u32s(POST_DOCS), self.f32s(POST_IMPACTS));
        let n = self.layout.live as f64;
        tokens
            .iter()
            .map(|token| {
                let t = self.term_of(token.as_ref().as_bytes())?;
                let (start, end) = (*starts.get(t)? as usize, *starts.get(t + 1)? as usize);
                let df = *dfs.get(t)?;
                let idf = if df == 0 { 0.0 } else { self.layout.params.idf(df, n) };
                if idf.is_nan() || idf <= 0.0 {
                    return None;
                }
                Some(TermPostings {
                    docs: docs.get(start..end)?,
                    impacts: impacts.get(start..end)?,
                    idf,
                    bound: idf * maxes.get(t)?,
                })
            })
            .collect()
    }

    fn top_k<S: AsRef<str>>(&self, tokens: &[S], k: usize, allow: Option<&AllowList>, buf: &mut ScoreBuf) -> Vec<(u32, f32)> {
        let query = self.query_postings(tokens);
        let n = self.layout.live;
        let accept = |d: u32| (d as usize) < n && !allow.is_some_and(|a| !a.allows(d));
        pruned_top_k(&query, k, n, accept, buf)
    }

    fn with_ids(&self, hits: Vec<(u32, f32)>) -> Result<Vec<(String, f32)>> {
        hits.into_iter().map(|(d, score)| Ok((self.doc_id(d)?.to_string(), score))).collect()
    }

    /// Like [`MappedBm25::search`] but returning document slots (see [`MappedBm25::doc_id`]).
    pub fn search_docs(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        self.top_k(&self.tokenizer.tokenize(query), k, allow, &mut ScoreBuf::new())
    }

    /// Like [`MappedBm25::search_docs`] but scoring every posting of every query term (no pruning).
    pub fn search_docs_exhaustive(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        let query = self.query_postings(&self.tokenizer.tokenize(query));
        let n = self.layout.live;
        let mut buf = ScoreBuf::new();
        score_prepared(&query, n, |d| (d as usize) < n && !allow.is_some_and(|a| !a.allows(d)), &mut buf);
        top_docs(&mut buf, k)
    }

    /// Top `k` (id, score) for one query, best first (ties by slot); an error only for a corrupt id.
    pub fn search(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Result<Vec<(String, f32)>> {
        self.with_ids(self.search_docs(query, k, allow))
    }

    /// Like [`MappedBm25::search_tokens`] but returning document slots.
    pub fn search_tokens_docs(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        self.top_k(tokens, k, allow, &mut ScoreBuf::new())
    }

    /// Top `k` (id, score) for pre-tokenized query tokens.
    pub fn search_tokens(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Result<Vec<(String, f32)>> {
        self.with_ids(self.search_tokens_docs(tokens, k, allow))
    }

    /// Like [`MappedBm25::search_batch`] but returning document slots.
    pub fn search_batch_docs<S: AsRef<str> + Sync>(
        &self,
        queries: &[S],
        k: usize,
        allow: Option<&AllowList>,
    ) -> Vec<Vec<(u32, f32)>> {
        queries
            .par_iter()
            .map_init(ScoreBuf::new, |buf, query| self.top_k(&self.tokenizer.tokenize(query.as_ref()), k, allow, buf))
            .collect()
    }

    /// Top `k` for each query, queries scored in parallel; results follow input order.
    pub fn search_batch<S: AsRef<str> + Sync>(
        &self,
        queries: &[S],
        k: usize,
        allow: Option<&AllowList>,
    ) -> Result<Vec<Vec<(String, f32)>>> {
        self.search_batch_docs(queries, k, allow).into_iter().map(|hits| self.with_ids(hits)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bm25::{Bm25Index, Variant};
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn plain() -> TokenizerConfig {
        TokenizerConfig { stopwords: vec![], stemmer: None, ..TokenizerConfig::default() }
    }

    fn scratch(name: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("dspyo3-bm25-mmap-{}-{n}-{name}.bm25", std::process::id()))
    }

    fn small() -> Bm25Index {
        let mut index = Bm25Index::new(TokenizerConfig::default(), Bm25Params::default()).unwrap();
        let ids: Vec<String> = ["a", "b", "c", "d", "é"].iter().map(|s| s.to_string()).collect();
        let texts = ["the quick brown fox", "the lazy dog", "quick quick foxes jumping", "an unrelated text", "fox"];
        index.add(&ids, &texts).unwrap();
        index.delete(&["b".to_string()]);
        index
    }

    fn saved(index: &Bm25Index) -> (PathBuf, Vec<u8>) {
        let path = scratch("idx");
        index.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    /// Rewrite the metadata CRC after editing the header, table or metadata.
    fn reseal(bytes: &mut [u8]) {
        let meta_end = read_u64(bytes, 32) as usize + read_u64(bytes, 40) as usize;
        let crc = meta_crc(bytes, meta_end);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    fn open_bytes(bytes: &[u8]) -> (Result<MappedBm25>, Result<Bm25Index>) {
        let path = scratch("case");
        std::fs::write(&path, bytes).unwrap();
        let mapped = MappedBm25::open(&path);
        let loaded = Bm25Index::load(&path);
        let _ = std::fs::remove_file(&path);
        (mapped, loaded)
    }

    fn format_error<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(KernelError::Format(message)) => message,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn mapped_matches_owned() {
        let index = small();
        let (path, _) = saved(&index);
        let mapped = MappedBm25::open(&path).unwrap();
        assert_eq!(mapped.len(), 4);
        assert_eq!(mapped.vocabulary_size(), index.vocabulary_size());
        assert_eq!(mapped.ids().unwrap(), index.ids());
        assert!(mapped.contains("é") && mapped.contains("a") && !mapped.contains("b") && !mapped.contains("zz"));
        assert_eq!(mapped.params(), index.params());
        for query in ["quick fox", "jumps", "the dog text", "nothing here", ""] {
            assert_eq!(mapped.search(query, 10, None).unwrap(), index.search(query, 10, None), "{query}");
        }
        let allow = mapped.allow_list(&["c", "é", "missing"]);
        let owned_allow = index.allow_list(&["c", "é", "missing"]);
        assert_eq!(mapped.search("fox", 10, Some(&allow)).unwrap(), index.search("fox", 10, Some(&owned_allow)));
        let tokens = mapped.tokenize_query("Quick foxes");
        assert_eq!(mapped.search_tokens(&tokens, 3, None).unwrap(), index.search_tokens(&tokens, 3, None));
        assert_eq!(
            mapped.search_batch(&["fox", "unrelated"], 2, None).unwrap(),
            index.search_batch(&["fox", "unrelated"], 2, None)
        );
        assert!(mapped.doc_id(99).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn empty_index_round_trips() {
        let index = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        let (path, _) = saved(&index);
        let mapped = MappedBm25::open(&path).unwrap();
        assert!(mapped.is_empty());
        assert!(mapped.search("anything", 5, None).unwrap().is_empty());
        assert!(Bm25Index::load(&path).unwrap().is_empty());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn format_1_files_load_but_do_not_map() {
        let index = small();
        let payload = index.encode();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let (mapped, loaded) = open_bytes(&bytes);
        let message = format_error(mapped);
        assert!(message.contains("format 1") && message.contains("save it again"), "{message}");
        assert_eq!(loaded.unwrap().search("quick fox", 10, None), index.search("quick fox", 10, None));
    }

    #[test]
    fn damaged_files_are_format_errors() {
        let (path, good) = saved(&small());
        let _ = std::fs::remove_file(&path);
        // truncated
        let (mapped, loaded) = open_bytes(&good[..good.len() - 8]);
        assert!(format_error(mapped).contains("truncated"));
        assert!(format_error(loaded).contains("truncated"));
        // garbage
        let (mapped, loaded) = open_bytes(b"definitely not an index file, just text");
        assert!(format_error(mapped).contains("not a dspyo3 BM25 index"));
        assert!(format_error(loaded).contains("not a dspyo3 BM25 index"));
        // wrong version
        let mut future = good.clone();
        future[8..12].copy_from_slice(&7u32.to_le_bytes());
        let (mapped, loaded) = open_bytes(&future);
        assert!(format_error(mapped).contains("format 7"));
        assert!(format_error(loaded).contains("format 7"));
        // metadata flipped without resealing
        let mut flipped = good.clone();
        flipped[TABLE_END + 2] ^= 1;
        let (mapped, loaded) = open_bytes(&flipped);
        assert!(format_error(mapped).contains("metadata checksum"));
        assert!(format_error(loaded).contains("metadata checksum"));
        // a section moved off its 8-byte alignment (and resealed)
        let mut misaligned = good.clone();
        let entry = 32 + POST_DOCS * 16;
        let offset = read_u64(&misaligned, entry) + 4;
        misaligned[entry..entry + 8].copy_from_slice(&offset.to_le_bytes());
        reseal(&mut misaligned);
        let (mapped, loaded) = open_bytes(&misaligned);
        assert!(format_error(mapped).contains("aligned"));
        assert!(format_error(loaded).contains("aligned"));
        // a postings doc slot out of range: the map skips it, the full load rejects it (data checksum)
        let mut wild = good.clone();
        let docs_at = read_u64(&wild, entry) as usize;
        wild[docs_at..docs_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let (mapped, loaded) = open_bytes(&wild);
        let mapped = mapped.unwrap();
        for query in ["an quick fox", "the text", "jumping dog"] {
            let _ = mapped.search(query, 10, None);
            let _ = mapped.search_docs_exhaustive(query, 10, None);
        }
        assert!(format_error(loaded).contains("checksum mismatch"));
        // an id that is not UTF-8: searching reports it
        let mut bad_id = good.clone();
        let blob_at = read_u64(&bad_id, 32 + ID_BLOB * 16) as usize;
        bad_id[blob_at] = 0xff;
        let (mapped, _) = open_bytes(&bad_id);
        let mapped = mapped.unwrap();
        assert!(format_error(mapped.doc_id(0)).contains("not UTF-8"));
        assert!(mapped.ids().is_err());
    }

    fn check_same(index: &Bm25Index, mapped: &MappedBm25, queries: &[String], k: usize, allow_ids: &[&String]) {
        let allow = index.allow_list(allow_ids);
        let mapped_allow = mapped.allow_list(allow_ids);
        for query in queries {
            for (owned_filter, mapped_filter) in [(None, None), (Some(&allow), Some(&mapped_allow))] {
                let want = index.search(query, k, owned_filter);
                assert_eq!(mapped.search(query, k, mapped_filter).unwrap(), want, "{query:?}");
                let exhaustive = mapped.with_ids(mapped.search_docs_exhaustive(query, k, mapped_filter)).unwrap();
                assert_eq!(exhaustive, want, "{query:?} exhaustive");
            }
        }
        let owned_batch = index.search_batch(queries, k, None);
        assert_eq!(mapped.search_batch(queries, k, None).unwrap(), owned_batch);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]

        /// Saved then mapped (or loaded back in full): the same top k (ids, scores, order) as the owned index,
        /// for every variant, with deletions, updates, allow-lists and repeated query terms.
        #[test]
        fn mapped_and_loaded_search_like_the_owned_index(
            corpus in proptest::collection::vec(proptest::collection::vec(0usize..24, 0..30), 0..80),
            updates in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec(0usize..24, 0..10)), 0..5),
            queries in proptest::collection::vec(proptest::collection::vec(0usize..26, 0..8), 1..5),
            deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            allowed in proptest::collection::vec(any::<bool>(), 80),
            variant in proptest::sample::select(vec![Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus]),
            k in 0usize..15,
            k1 in 0.0f32..3.0,
            b in 0.0f32..=1.0,
            prepare in any::<bool>(),
        ) {
            let word = |w: usize| format!("w{}", w * w / 24);
            let text = |doc: &Vec<usize>| doc.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ");
            let mut index = Bm25Index::new(plain(), Bm25Params { variant, k1, b, delta: 0.5 }).unwrap();
            let names: Vec<String> = (0..corpus.len()).map(|i| format!("d{}", (i * 7919) % 1000)).collect();
            let texts: Vec<String> = corpus.iter().map(text).collect();
            index.add(&names, &texts).unwrap();
            if !names.is_empty() {
                for (at, doc) in &updates {
                    index.add(&[names[at.index(names.len())].clone()], &[text(doc)]).unwrap();
                }
                let gone: Vec<String> = deleted.iter().map(|i| names[i.index(names.len())].clone()).collect();
                index.delete(&gone);
            }
            if prepare {
                index.prepare();
            }
            let path = scratch("prop");
            index.save(&path).unwrap();
            let mapped = MappedBm25::open(&path).unwrap();
            let loaded = Bm25Index::load(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            prop_assert_eq!(mapped.len(), index.len());
            prop_assert_eq!(mapped.ids().unwrap(), index.ids());
            prop_assert_eq!(mapped.vocabulary_size(), index.vocabulary_size());
            prop_assert_eq!(loaded.ids(), index.ids());
            prop_assert_eq!(loaded.vocabulary_size(), index.vocabulary_size());
            for name in &names {
                prop_assert_eq!(mapped.contains(name), index.contains(name));
            }
            let queries: Vec<String> = queries.iter().map(text).collect();
            let allow_ids: Vec<&String> = names.iter().zip(&allowed).filter(|(_, &a)| a).map(|(n, _)| n).collect();
            index.prepare();
            check_same(&index, &mapped, &queries, k, &allow_ids);
            for query in &queries {
                prop_assert_eq!(loaded.search(query, k, None), index.search(query, k, None));
            }
        }

        /// A real file with bytes overwritten or cut opens (and searches) or fails cleanly, mapped or loaded.
        #[test]
        fn damaged_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
            seal in any::<bool>(),
        ) {
            let (path, mut bytes) = saved(&small());
            let _ = std::fs::remove_file(&path);
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if seal && bytes.len() >= TABLE_END {
                let meta_end = (read_u64(&bytes, 32) as usize).saturating_add(read_u64(&bytes, 40) as usize);
                if meta_end <= bytes.len() && meta_end >= 24 {
                    reseal(&mut bytes);
                }
            }
            let (mapped, _) = open_bytes(&bytes);
            if let Ok(mapped) = mapped {
                for query in ["quick fox", "the text jumping", "dog"] {
                    let _ = mapped.search(query, 10, None);
                    let _ = mapped.search_docs_exhaustive(query, 3, None);
                }
                let allow = mapped.allow_list(&["a", "c"]);
                let _ = mapped.search("fox", 5, Some(&allow));
                let _ = mapped.ids();
            }
        }
    }
}
