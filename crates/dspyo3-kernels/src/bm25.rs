//! A BM25 inverted index with in-place add / update / delete by id, filtered top-k search for one query or a
//! batch (parallel), and a versioned, checksummed on-disk format written atomically.
//!
//! Scoring follows Kamphuis et al., "Which BM25 Do You Mean?" (ECIR 2020), with `N` live documents, `df`
//! live documents containing the term, `L = 1 - b + b * len / avgdl`:
//!
//! | variant | idf | term score for `tf > 0` |
//! |---|---|---|
//! | `lucene` | `ln(1 + (N - df + 0.5) / (df + 0.5))` | `tf / (tf + k1 L)` |
//! | `robertson` | `ln(max(1, (N - df + 0.5) / (df + 0.5)))` | `tf / (tf + k1 L)` |
//! | `atire` | `ln(N / df)` | `tf (k1 + 1) / (tf + k1 L)` |
//! | `bm25l` | `ln((N + 1) / (df + 0.5))` | `(k1 + 1)(c + δ) / (k1 + c + δ)`, `c = tf / L` |
//! | `bm25+` | `ln((N + 1) / df)` | `(k1 + 1) tf / (k1 L + tf) + δ` |
//!
//! A document's score is the sum over query tokens (repeated tokens count again) of `idf * term score`;
//! only documents with a positive score are returned (a term whose IDF is not positive adds nothing).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs;
use std::path::Path;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::error::{invalid, KernelError, Result};
use crate::tokenizer::{words, Tokenizer, TokenizerConfig, DROPPED};

/// BM25 flavour; see the module documentation for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Lucene's BM25 (the default).
    Lucene,
    /// Robertson et al.'s original, with the IDF floored at zero.
    Robertson,
    /// ATIRE's BM25.
    Atire,
    /// BM25L (Lv & Zhai), for long documents.
    Bm25L,
    /// BM25+ (Lv & Zhai), lower-bounding the term score by `delta`.
    Bm25Plus,
}

impl Variant {
    /// Parse `lucene`, `robertson`, `atire`, `bm25l` or `bm25+` (also `bm25plus`).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_lowercase().as_str() {
            "lucene" => Variant::Lucene,
            "robertson" => Variant::Robertson,
            "atire" => Variant::Atire,
            "bm25l" => Variant::Bm25L,
            "bm25+" | "bm25plus" => Variant::Bm25Plus,
            _ => {
                return Err(invalid(format!(
                    "unknown BM25 variant {name:?}; use one of: lucene, robertson, atire, bm25l, bm25+"
                )))
            }
        })
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Lucene => "lucene",
            Variant::Robertson => "robertson",
            Variant::Atire => "atire",
            Variant::Bm25L => "bm25l",
            Variant::Bm25Plus => "bm25+",
        }
    }

    fn code(self) -> u8 {
        match self {
            Variant::Lucene => 0,
            Variant::Robertson => 1,
            Variant::Atire => 2,
            Variant::Bm25L => 3,
            Variant::Bm25Plus => 4,
        }
    }

    fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            0 => Variant::Lucene,
            1 => Variant::Robertson,
            2 => Variant::Atire,
            3 => Variant::Bm25L,
            4 => Variant::Bm25Plus,
            _ => return Err(KernelError::Format(format!("unknown BM25 variant code {code} in index file"))),
        })
    }
}

/// Scoring parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25Params {
    /// Formula family.
    pub variant: Variant,
    /// Term-frequency saturation (`k1 >= 0`).
    pub k1: f32,
    /// Length normalisation (`0 <= b <= 1`).
    pub b: f32,
    /// Lower bound added by BM25L / BM25+ (`delta >= 0`); ignored by the others.
    pub delta: f32,
}

impl Default for Bm25Params {
    /// Lucene, `k1 = 1.2`, `b = 0.75`, `delta = 0.5`.
    fn default() -> Self {
        Bm25Params { variant: Variant::Lucene, k1: 1.2, b: 0.75, delta: 0.5 }
    }
}

impl Bm25Params {
    fn validate(&self) -> Result<()> {
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(invalid(format!("k1 must be a finite number >= 0 (got {})", self.k1)));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(invalid(format!("b must be between 0 and 1 (got {})", self.b)));
        }
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            return Err(invalid(format!("delta must be a finite number >= 0 (got {})", self.delta)));
        }
        Ok(())
    }

    pub(crate) fn idf(&self, df: u32, n: f64) -> f32 {
        let df = df as f64;
        let value = match self.variant {
            Variant::Lucene => (1.0 + (n - df + 0.5) / (df + 0.5)).ln(),
            Variant::Robertson => ((n - df + 0.5) / (df + 0.5)).max(1.0).ln(),
            Variant::Atire => (n / df).ln(),
            Variant::Bm25L => ((n + 1.0) / (df + 0.5)).ln(),
            Variant::Bm25Plus => ((n + 1.0) / df).ln(),
        };
        value as f32
    }

    /// Term score for `tf > 0` given the document's length factor `l = 1 - b + b * len / avgdl`.
    fn tfc(&self, tf: u32, l: f32) -> f32 {
        let tf = tf as f32;
        let k1 = self.k1;
        match self.variant {
            Variant::Lucene | Variant::Robertson => tf / (tf + k1 * l),
            Variant::Atire => tf * (k1 + 1.0) / (tf + k1 * l),
            Variant::Bm25L => {
                let c = tf / l;
                (k1 + 1.0) * (c + self.delta) / (k1 + c + self.delta)
            }
            Variant::Bm25Plus => (k1 + 1.0) * tf / (k1 * l + tf) + self.delta,
        }
    }
}

/// A document slot. Its terms live only in the postings (no forward index): deleting marks the slot dead
/// and document frequencies are recounted from the postings once per mutating call.
#[derive(Clone, Debug)]
struct Doc {
    id: String,
    len: u32,
}

/// Live documents and used terms of an index, renumbered for a format-2 file (see `Bm25Index::live_layout`).
struct LiveLayout<'a> {
    new_slot: Vec<u32>,
    live_docs: Vec<&'a Doc>,
    length_factor: Vec<f32>,
    terms: Vec<(&'a str, usize)>,
    /// Live slots in bytewise id order (the file's by-id lookup).
    order: Vec<u32>,
}

/// The documents containing one term, with their term frequencies and precomputed term scores.
#[derive(Clone, Debug, Default)]
struct Postings {
    docs: Vec<u32>,
    tfs: Vec<u32>,
    /// `tfc(tf, length factor)` per posting; valid while the index is not dirty.
    impacts: Vec<f32>,
    /// The largest of `impacts` (an upper bound for top-k pruning); valid while the index is not dirty.
    max_impact: f32,
}

/// The postings of a format 2 save, read from the index one array at a time: live documents only, renumbered
/// through `new_slot`, impacts recomputed for the live documents' length factors.
struct V2Postings<'a> {
    index: &'a Bm25Index,
    /// `(term, term number)` in file order.
    terms: &'a [(&'a str, usize)],
    new_slot: &'a [u32],
    length_factor: &'a [f32],
}

impl V2Postings<'_> {
    /// Call `f(impact)` for each live posting of term number `t`, in postings order.
    fn for_each_live(&self, t: usize, mut f: impl FnMut(f32)) {
        let postings = &self.index.postings[t];
        for (&doc, &tf) in postings.docs.iter().zip(&postings.tfs) {
            let slot = self.new_slot[doc as usize];
            if slot != u32::MAX {
                f(self.index.params.tfc(tf, self.length_factor[slot as usize]));
            }
        }
    }
}

impl crate::bm25_mmap::PostingsSource for V2Postings<'_> {
    fn write_section(&self, section: usize, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use crate::bm25_mmap::{POST_DOCS, POST_TFS};
        for &(_, t) in self.terms {
            let postings = &self.index.postings[t];
            for (&doc, &tf) in postings.docs.iter().zip(&postings.tfs) {
                let slot = self.new_slot[doc as usize];
                if slot == u32::MAX {
                    continue;
                }
                let value = match section {
                    POST_DOCS => slot,
                    POST_TFS => tf,
                    _ => self.index.params.tfc(tf, self.length_factor[slot as usize]).to_bits(),
                };
                out.write_all(&value.to_le_bytes())?;
            }
        }
        Ok(())
    }
}

/// Per-thread scratch space for scoring one query. Every contribution is positive (terms whose IDF is not
/// are skipped), so a zero score means "not touched yet" and only touched entries are reset afterwards.
pub(crate) struct ScoreBuf {
    scores: Vec<f32>,
    touched: Vec<u32>,
    heap: BinaryHeap<Worst>,
}

impl ScoreBuf {
    pub(crate) fn new() -> Self {
        ScoreBuf { scores: Vec::new(), touched: Vec::new(), heap: BinaryHeap::new() }
    }

    fn reset(&mut self, n: usize) {
        for &d in &self.touched {
            self.scores[d as usize] = 0.0;
        }
        self.touched.clear();
        if self.scores.len() < n {
            self.scores.resize(n, 0.0);
        }
    }

    #[inline]
    fn add(&mut self, doc: u32, score: f32) {
        let slot = &mut self.scores[doc as usize];
        if *slot == 0.0 {
            self.touched.push(doc);
        }
        *slot += score;
    }
}

/// A hit ordered so that the heap's top is the worst kept hit (lowest score, then highest doc index).
#[derive(Clone, Copy, PartialEq)]
struct Worst(f32, u32);

impl Eq for Worst {}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// Ids allowed in a filtered search, resolved against one index.
pub struct AllowList {
    pub(crate) allowed: Vec<bool>,
}

impl AllowList {
    /// Whether slot `doc` is allowed (slots beyond the list are not).
    #[inline]
    pub(crate) fn allows(&self, doc: u32) -> bool {
        self.allowed.get(doc as usize).copied().unwrap_or(false)
    }
}

/// One query term's postings as slices (doc slots ascending, precomputed impacts), with its IDF and score
/// upper bound: what the scoring code shared by [`Bm25Index`] and the mapped index needs.
#[derive(Clone, Copy)]
pub(crate) struct TermPostings<'a> {
    pub(crate) docs: &'a [u32],
    pub(crate) impacts: &'a [f32],
    pub(crate) idf: f32,
    pub(crate) bound: f32,
}

/// The index. Not internally synchronised: share it behind a lock (reads may run concurrently).
pub struct Bm25Index {
    tokenizer: Tokenizer,
    params: Bm25Params,
    vocab: FxHashMap<String, u32>,
    terms: Vec<String>,
    postings: Vec<Postings>,
    df: Vec<u32>,
    docs: Vec<Doc>,
    alive: Vec<bool>,
    by_id: FxHashMap<String, u32>,
    live: usize,
    total_len: u64,
    length_factor: Vec<f32>,
    /// Impacts and length factors are stale (documents changed since the last [`Bm25Index::prepare`]).
    dirty: bool,
    /// `df` counts documents deleted since the last recount (see [`Bm25Index::after_mutation`]).
    df_stale: bool,
    /// Bumped whenever document slots are renumbered (compaction), so callers caching per-slot data can tell.
    layout: u64,
    /// Normalised word -> term id (or `DROPPED`) learnt while indexing: query words seen in documents skip
    /// stemming and vocabulary lookups.
    words: FxHashMap<String, u32>,
}

impl std::fmt::Debug for Bm25Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Index").field("params", &self.params).field("documents", &self.live).finish()
    }
}

pub(crate) const MAGIC: &[u8; 8] = b"DSPYO3BM";
/// On-disk format version written by this build. [`Bm25Index::load`] also reads format 1; the memory-mapped
/// reader ([`crate::bm25_mmap::MappedBm25`]) reads only this one.
pub const FORMAT_VERSION: u32 = 2;

impl Bm25Index {
    /// An empty index.
    pub fn new(tokenizer: TokenizerConfig, params: Bm25Params) -> Result<Self> {
        params.validate()?;
        Ok(Bm25Index {
            tokenizer: Tokenizer::new(tokenizer)?,
            params,
            vocab: FxHashMap::default(),
            terms: Vec::new(),
            postings: Vec::new(),
            df: Vec::new(),
            docs: Vec::new(),
            alive: Vec::new(),
            by_id: FxHashMap::default(),
            live: 0,
            total_len: 0,
            length_factor: Vec::new(),
            dirty: false,
            df_stale: false,
            layout: 0,
            words: FxHashMap::default(),
        })
    }

    /// Scoring parameters.
    pub fn params(&self) -> Bm25Params {
        self.params
    }

    /// The tokenizer documents and queries go through.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Number of live documents.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when the index holds no live document.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of distinct terms in live documents.
    pub fn vocabulary_size(&self) -> usize {
        self.df.iter().filter(|&&df| df > 0).count()
    }

    /// Whether a document with this id is in the index.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Ids of live documents, in insertion order.
    pub fn ids(&self) -> Vec<String> {
        self.docs.iter().zip(&self.alive).filter(|(_, &a)| a).map(|(d, _)| d.id.clone()).collect()
    }

    /// Add documents (tokenized in parallel). An id already present is updated (replaced).
    pub fn add<S: AsRef<str> + Sync>(&mut self, ids: &[String], texts: &[S]) -> Result<()> {
        if ids.len() != texts.len() {
            return Err(invalid(format!("got {} ids but {} texts; pass one id per text", ids.len(), texts.len())));
        }
        check_unique(ids)?;
        // tokenized a batch at a time: the token lists of the whole input never exist at once
        for (ids, texts) in ids.chunks(ADD_BATCH).zip(texts.chunks(ADD_BATCH)) {
            self.add_batch(ids, texts);
        }
        self.after_mutation();
        Ok(())
    }

    fn add_batch<S: AsRef<str> + Sync>(&mut self, ids: &[String], texts: &[S]) {
        let chunks = self.tokenizer.tokenize_chunks(texts);
        let mut ids = ids.iter();
        let mut terms = Vec::new();
        for chunk in chunks {
            // chunk-local token id -> term id, interned once per distinct token of the chunk
            let global: Vec<u32> = chunk.tokens.iter().map(|token| self.intern(token)).collect();
            if self.words.len() < MAX_QUERY_WORDS {
                for (word, local) in chunk.words {
                    let term = if local == DROPPED { DROPPED } else { global[local as usize] };
                    self.words.entry(word).or_insert(term);
                }
            }
            for doc in chunk.docs {
                terms.clear();
                terms.extend(doc.iter().map(|&local| global[local as usize]));
                let Some(id) = ids.next() else { return };
                self.upsert(id, &mut terms);
            }
        }
    }

    /// Add pre-tokenized documents. An id already present is updated (replaced).
    pub fn add_tokens(&mut self, ids: &[String], tokens: &[Vec<String>]) -> Result<()> {
        if ids.len() != tokens.len() {
            return Err(invalid(format!("got {} ids but {} token lists", ids.len(), tokens.len())));
        }
        check_unique(ids)?;
        let mut terms = Vec::new();
        for (id, doc_tokens) in ids.iter().zip(tokens) {
            terms.clear();
            for token in doc_tokens {
                let term = self.intern(token);
                terms.push(term);
            }
            self.upsert(id, &mut terms);
        }
        self.after_mutation();
        Ok(())
    }

    fn upsert(&mut self, id: &str, terms: &mut [u32]) {
        if let Some(&old) = self.by_id.get(id) {
            self.remove_doc(old);
        }
        self.insert_doc(id.to_string(), terms);
    }

    fn intern(&mut self, token: &str) -> u32 {
        if let Some(&term) = self.vocab.get(token) {
            return term;
        }
        let term = self.terms.len() as u32;
        self.vocab.insert(token.to_string(), term);
        self.terms.push(token.to_string());
        self.postings.push(Postings::default());
        self.df.push(0);
        term
    }

    /// Delete documents by id; unknown ids are ignored. Returns how many were deleted.
    pub fn delete(&mut self, ids: &[String]) -> usize {
        let mut deleted = 0;
        for id in ids {
            if let Some(&doc) = self.by_id.get(id.as_str()) {
                self.remove_doc(doc);
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.after_mutation();
        }
        deleted
    }

    /// Insert a new document given its term ids (sorted in place to count term frequencies).
    fn insert_doc(&mut self, id: String, terms: &mut [u32]) {
        let doc = self.docs.len() as u32;
        let len = terms.len() as u32;
        terms.sort_unstable();
        let mut at = 0;
        while at < terms.len() {
            let term = terms[at];
            let run = terms[at..].iter().take_while(|&&t| t == term).count();
            at += run;
            let postings = &mut self.postings[term as usize];
            postings.docs.push(doc);
            postings.tfs.push(run as u32);
            postings.impacts.push(0.0);
            self.df[term as usize] += 1;
        }
        self.total_len += len as u64;
        self.live += 1;
        self.by_id.insert(id.clone(), doc);
        self.docs.push(Doc { id, len });
        self.alive.push(true);
    }

    fn remove_doc(&mut self, doc: u32) {
        let d = doc as usize;
        if !self.alive[d] {
            return;
        }
        self.alive[d] = false;
        self.df_stale = true;
        self.total_len -= self.docs[d].len as u64;
        self.live -= 1;
        self.by_id.remove(&self.docs[d].id);
    }

    /// After adds / updates / deletes: compact when a quarter of the slots is dead, otherwise recount document
    /// frequencies if documents were deleted (one pass over the postings per mutating call).
    fn after_mutation(&mut self) {
        let dead = self.docs.len() - self.live;
        if dead >= 64 && dead * 4 > self.docs.len() {
            self.compact();
        } else if self.df_stale {
            let alive = &self.alive;
            self.df = self
                .postings
                .par_iter()
                .map(|p| p.docs.iter().filter(|&&d| alive[d as usize]).count() as u32)
                .collect();
        }
        self.df_stale = false;
        self.dirty = true;
    }

    /// True when documents changed since the last [`Bm25Index::prepare`]: searches still work (scoring term
    /// by term), `prepare` makes them faster again.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Recompute the length factors and per-posting term scores after documents changed: O(postings), done
    /// once per batch of changes rather than on every add.
    pub fn prepare(&mut self) {
        if !self.dirty && self.length_factor.len() == self.docs.len() {
            return;
        }
        let avgdl = self.avgdl();
        self.length_factor = self.docs.iter().map(|d| self.length_factor_of(d, avgdl)).collect();
        let params = self.params;
        let length_factor = &self.length_factor;
        self.postings.par_iter_mut().for_each(|p| {
            // postings grew by doubling while documents were added: give the spare capacity back
            if p.docs.capacity() > p.docs.len() + p.docs.len() / 8 + 4 {
                p.docs.shrink_to_fit();
                p.tfs.shrink_to_fit();
                p.impacts.shrink_to_fit();
            }
            let mut max_impact = 0.0f32;
            for ((impact, &doc), &tf) in p.impacts.iter_mut().zip(&p.docs).zip(&p.tfs) {
                *impact = params.tfc(tf, length_factor[doc as usize]);
                max_impact = max_impact.max(*impact);
            }
            p.max_impact = max_impact;
        });
        self.dirty = false;
    }

    /// Average live document length (1.0 for an empty index).
    fn avgdl(&self) -> f64 {
        if self.live == 0 { 1.0 } else { (self.total_len as f64 / self.live as f64).max(1e-9) }
    }

    /// `1 - b + b * len / avgdl` for one document.
    fn length_factor_of(&self, doc: &Doc, avgdl: f64) -> f32 {
        let b = self.params.b as f64;
        (1.0 - b + b * doc.len as f64 / avgdl) as f32
    }

    /// Drop deleted documents and unused terms from memory (done automatically when a quarter is dead).
    pub fn compact(&mut self) {
        let mut new_slot = vec![u32::MAX; self.docs.len()];
        let mut next = 0u32;
        for (slot, &alive) in new_slot.iter_mut().zip(&self.alive) {
            if alive {
                *slot = next;
                next += 1;
            }
        }
        let docs = std::mem::take(&mut self.docs);
        let alive = std::mem::take(&mut self.alive);
        self.docs = docs.into_iter().zip(alive).filter(|(_, a)| *a).map(|(d, _)| d).collect();
        self.alive = vec![true; self.docs.len()];
        for slot in self.by_id.values_mut() {
            *slot = new_slot[*slot as usize];
        }
        let old_terms = std::mem::take(&mut self.terms);
        let old_postings = std::mem::take(&mut self.postings);
        self.vocab.clear();
        self.df.clear();
        let mut remap: Vec<Option<u32>> = vec![None; old_terms.len()];
        for ((term, old), new_term) in old_terms.into_iter().zip(old_postings).zip(remap.iter_mut()) {
            let mut postings = Postings::default();
            for (&doc, &tf) in old.docs.iter().zip(&old.tfs) {
                let slot = new_slot[doc as usize];
                if slot != u32::MAX {
                    postings.docs.push(slot);
                    postings.tfs.push(tf);
                }
            }
            if postings.docs.is_empty() {
                continue;
            }
            postings.impacts = vec![0.0; postings.docs.len()];
            let t = self.terms.len() as u32;
            *new_term = Some(t);
            self.vocab.insert(term.clone(), t);
            self.terms.push(term);
            self.df.push(postings.docs.len() as u32);
            self.postings.push(postings);
        }
        self.live = self.docs.len();
        self.total_len = self.docs.iter().map(|d| d.len as u64).sum();
        self.df_stale = false;
        self.layout += 1;
        self.words.retain(|_, term| {
            if *term == DROPPED {
                return true;
            }
            match remap[*term as usize] {
                Some(new_term) => {
                    *term = new_term;
                    true
                }
                None => false,
            }
        });
        self.dirty = true;
    }

    /// Resolve an allow-list of ids (unknown ids are ignored).
    pub fn allow_list<S: AsRef<str>>(&self, ids: &[S]) -> AllowList {
        let mut allowed = vec![false; self.docs.len()];
        for id in ids {
            if let Some(&doc) = self.by_id.get(id.as_ref()) {
                allowed[doc as usize] = true;
            }
        }
        AllowList { allowed }
    }

    /// The postings, IDF and bound of each query term that contributes (`None` for one that does not: absent,
    /// or an IDF that is not positive, as Robertson's floor or ATIRE at `df = N`). Impacts are valid only on a
    /// prepared index.
    fn term_postings(&self, terms: &[u32]) -> Vec<Option<TermPostings<'_>>> {
        let n = self.live as f64;
        terms
            .iter()
            .map(|&term| {
                let df = self.df[term as usize];
                let idf = if df == 0 { 0.0 } else { self.params.idf(df, n) };
                if idf.is_nan() || idf <= 0.0 {
                    return None;
                }
                let postings = &self.postings[term as usize];
                Some(TermPostings {
                    docs: &postings.docs,
                    impacts: &postings.impacts,
                    idf,
                    bound: idf * postings.max_impact,
                })
            })
            .collect()
    }

    fn score_into(&self, terms: &[u32], allow: Option<&AllowList>, buf: &mut ScoreBuf) {
        let all_alive = self.live == self.docs.len();
        if !self.dirty {
            let query = self.term_postings(terms);
            let accept = |d: u32| (all_alive || self.alive[d as usize]) && !allow.is_some_and(|a| !a.allows(d));
            score_prepared(&query, self.docs.len(), accept, buf);
            return;
        }
        buf.reset(self.docs.len());
        let n = self.live as f64;
        let avgdl = self.avgdl();
        for &term in terms {
            let df = self.df[term as usize];
            if df == 0 {
                continue;
            }
            let idf = self.params.idf(df, n);
            if idf.is_nan() || idf <= 0.0 {
                continue; // contributes nothing (Robertson's floor, ATIRE at df = N)
            }
            let postings = &self.postings[term as usize];
            for (i, &doc) in postings.docs.iter().enumerate() {
                let d = doc as usize;
                if !self.alive[d] || allow.is_some_and(|a| !a.allows(doc)) {
                    continue;
                }
                let impact = self.params.tfc(postings.tfs[i], self.length_factor_of(&self.docs[d], avgdl));
                buf.add(doc, idf * impact);
            }
        }
    }

    /// Best `k` documents for query term ids: pruned when the index is prepared, exhaustive otherwise.
    fn top_k(&self, terms: &[u32], k: usize, allow: Option<&AllowList>, buf: &mut ScoreBuf) -> Vec<(u32, f32)> {
        if self.dirty {
            return self.top_k_exhaustive(terms, k, allow, buf);
        }
        self.top_k_pruned(terms, k, allow, buf)
    }

    /// Best `k` by scoring every posting of every query term (term at a time).
    fn top_k_exhaustive(
        &self,
        terms: &[u32],
        k: usize,
        allow: Option<&AllowList>,
        buf: &mut ScoreBuf,
    ) -> Vec<(u32, f32)> {
        self.score_into(terms, allow, buf);
        top_docs(buf, k)
    }

    /// Best `k` by MaxScore-style dynamic pruning (see [`pruned_top_k`]), on a prepared index.
    fn top_k_pruned(&self, terms: &[u32], k: usize, allow: Option<&AllowList>, buf: &mut ScoreBuf) -> Vec<(u32, f32)> {
        let query = self.term_postings(terms);
        let all_alive = self.live == self.docs.len();
        let accept = |d: u32| (all_alive || self.alive[d as usize]) && !allow.is_some_and(|a| !a.allows(d));
        pruned_top_k(&query, k, self.docs.len(), accept, buf)
    }

    fn with_ids(&self, docs: Vec<(u32, f32)>) -> Vec<(String, f32)> {
        docs.into_iter().map(|(d, score)| (self.docs[d as usize].id.clone(), score)).collect()
    }

    /// The id of document slot `doc` (as returned by the `*_docs` searches).
    pub fn doc_id(&self, doc: u32) -> &str {
        &self.docs[doc as usize].id
    }

    /// Changes whenever slots are renumbered; per-slot caches built at one value stay valid while it holds.
    pub fn layout_generation(&self) -> u64 {
        self.layout
    }

    /// Number of document slots (live and deleted-but-not-compacted); doc indices are below this.
    pub fn slots(&self) -> usize {
        self.docs.len()
    }

    /// Term ids of a query's tokens (tokens not in the vocabulary are left out).
    fn query_terms(&self, query: &str) -> Vec<u32> {
        let mut buf = String::new();
        let mut out = Vec::new();
        for word in words(query) {
            buf.clear();
            crate::tokenizer::normalise_into(
                word,
                self.tokenizer.config().lowercase,
                self.tokenizer.config().ascii_fold,
                &mut buf,
            );
            match self.words.get(buf.as_str()) {
                Some(&DROPPED) => {}
                Some(&term) => out.push(term),
                None => {
                    if let Some(term) = self.tokenizer.token(word, &mut buf).and_then(|t| self.vocab.get(&t).copied()) {
                        out.push(term);
                    }
                }
            }
        }
        out
    }

    fn token_terms(&self, tokens: &[String]) -> Vec<u32> {
        tokens.iter().filter_map(|t| self.vocab.get(t.as_str()).copied()).collect()
    }

    /// Tokens a query becomes (the tokenizer's output).
    pub fn tokenize_query(&self, query: &str) -> Vec<String> {
        self.tokenizer.tokenize(query)
    }

    /// Like [`Bm25Index::search_batch`] but returning document slots (see [`Bm25Index::doc_id`]).
    pub fn search_batch_docs<S: AsRef<str> + Sync>(
        &self,
        queries: &[S],
        k: usize,
        allow: Option<&AllowList>,
    ) -> Vec<Vec<(u32, f32)>> {
        queries
            .par_iter()
            .map_init(ScoreBuf::new, |buf, query| {
                let terms = self.query_terms(query.as_ref());
                self.top_k(&terms, k, allow, buf)
            })
            .collect()
    }

    /// Like [`Bm25Index::search_tokens`] but returning document slots.
    pub fn search_tokens_docs(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        self.top_k(&self.token_terms(tokens), k, allow, &mut ScoreBuf::new())
    }

    /// Like [`Bm25Index::search_docs`] but always scoring every posting of every query term (no pruning): the
    /// reference the pruned search is checked against. Same hits, scores and order.
    pub fn search_docs_exhaustive(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        self.top_k_exhaustive(&self.query_terms(query), k, allow, &mut ScoreBuf::new())
    }

    /// Like [`Bm25Index::search`] but returning document slots.
    pub fn search_docs(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Vec<(u32, f32)> {
        self.top_k(&self.query_terms(query), k, allow, &mut ScoreBuf::new())
    }

    /// Top `k` (id, score) for pre-tokenized query tokens, best first (ties by insertion order).
    pub fn search_tokens(&self, tokens: &[String], k: usize, allow: Option<&AllowList>) -> Vec<(String, f32)> {
        self.with_ids(self.search_tokens_docs(tokens, k, allow))
    }

    /// Top `k` (id, score) for one query.
    pub fn search(&self, query: &str, k: usize, allow: Option<&AllowList>) -> Vec<(String, f32)> {
        self.with_ids(self.search_docs(query, k, allow))
    }

    /// Top `k` for each query, queries scored in parallel; results follow input order.
    pub fn search_batch<S: AsRef<str> + Sync>(
        &self,
        queries: &[S],
        k: usize,
        allow: Option<&AllowList>,
    ) -> Vec<Vec<(String, f32)>> {
        self.search_batch_docs(queries, k, allow).into_iter().map(|docs| self.with_ids(docs)).collect()
    }

    // -- persistence ---------------------------------------------------------------------------------------

    /// What a format-2 file is made of: live documents renumbered densely (`new_slot` maps old slots, `u32::MAX`
    /// for dead ones), their length factors for the live average length, the terms used by a live document,
    /// sorted bytewise, with their ids, and the live slots in id order.
    fn live_layout(&self) -> LiveLayout<'_> {
        let mut new_slot = vec![u32::MAX; self.docs.len()];
        let mut live_docs: Vec<&Doc> = Vec::with_capacity(self.live);
        for (d, doc) in self.docs.iter().enumerate() {
            if self.alive[d] {
                new_slot[d] = live_docs.len() as u32;
                live_docs.push(doc);
            }
        }
        let avgdl = self.avgdl();
        let length_factor: Vec<f32> = live_docs.iter().map(|d| self.length_factor_of(d, avgdl)).collect();
        let mut terms: Vec<(&str, usize)> = Vec::new();
        for (t, postings) in self.postings.iter().enumerate() {
            if postings.docs.iter().any(|&d| self.alive[d as usize]) {
                terms.push((&self.terms[t], t));
            }
        }
        terms.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut order: Vec<u32> = (0..live_docs.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| live_docs[a as usize].id.as_bytes().cmp(live_docs[b as usize].id.as_bytes()));
        LiveLayout { new_slot, live_docs, length_factor, terms, order }
    }

    /// Write the index to `path` atomically (format [`FORMAT_VERSION`]): a crash mid-save leaves any previous
    /// file intact. The file holds the prepared, compacted index (live documents only, postings ordered by
    /// term), so [`crate::bm25_mmap::MappedBm25::open`] can search it straight from a memory map.
    ///
    /// The file is streamed to disk: besides the index, saving holds only O(terms + documents) (the per-term
    /// and per-document arrays), never a copy of the postings or of the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let LiveLayout { new_slot, live_docs, length_factor, terms, order } = self.live_layout();
        let source = V2Postings { index: self, terms: &terms, new_slot: &new_slot, length_factor: &length_factor };
        let mut starts = Vec::with_capacity(terms.len() + 1);
        starts.push(0u64);
        let mut dfs = Vec::with_capacity(terms.len());
        let mut max_impacts = Vec::with_capacity(terms.len());
        for &(_, t) in &terms {
            let mut df = 0u32;
            let mut max_impact = 0.0f32;
            source.for_each_live(t, |impact| {
                df += 1;
                max_impact = max_impact.max(impact);
            });
            dfs.push(df);
            max_impacts.push(max_impact);
            starts.push(starts[starts.len() - 1] + u64::from(df));
        }
        let lens: Vec<u32> = live_docs.iter().map(|d| d.len).collect();
        let mut config = Vec::new();
        self.encode_config(&mut config);
        let parts = crate::bm25_mmap::Parts {
            config: &config,
            live: live_docs.len() as u64,
            total_len: self.total_len,
            terms: terms.iter().map(|t| t.0),
            term_count: terms.len(),
            dfs: &dfs,
            max_impacts: &max_impacts,
            starts: &starts,
            postings: source,
            lens: &lens,
            ids: live_docs.iter().map(|d| d.id.as_str()),
            order: &order,
        };
        crate::atomic::write_atomic_with(path, |file| Ok(crate::bm25_mmap::write_v2(&parts, file)?))
    }

    /// Read an index written by [`Bm25Index::save`] (format 2, or format 1 from older builds). A foreign,
    /// newer, truncated or corrupt file is an error that says which.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path)?;
        let shown = path.display();
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(KernelError::Format(format!("{shown} is not a dspyo3 BM25 index file")));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        match version {
            1 => Self::load_v1(&bytes, &shown.to_string()),
            FORMAT_VERSION => {
                let layout = crate::bm25_mmap::Layout::parse(&bytes, &shown.to_string())?;
                layout.check_data_crc(&bytes, &shown.to_string())?;
                Self::from_layout(&layout, &bytes).map_err(|err| KernelError::Format(format!("{shown}: {err}")))
            }
            _ => Err(KernelError::Format(format!(
                "{shown} was written in BM25 index format {version}; this build reads formats 1 and \
                 {FORMAT_VERSION}: rebuild the index from its documents"
            ))),
        }
    }

    fn load_v1(bytes: &[u8], shown: &str) -> Result<Self> {
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let payload = &bytes[24..];
        if payload.len() != len {
            return Err(KernelError::Format(format!(
                "{shown} is truncated or padded ({} payload bytes, header says {len}); restore it or rebuild",
                payload.len()
            )));
        }
        if crc32fast::hash(payload) != crc {
            return Err(KernelError::Format(format!("{shown} is corrupt (checksum mismatch); restore it or rebuild")));
        }
        Self::decode(payload).map_err(|err| KernelError::Format(format!("{shown}: {err}")))
    }

    /// Format 2 bytes built in memory (the reference [`Bm25Index::save`] must match byte for byte): the live
    /// documents renumbered densely, terms sorted bytewise, impacts for this `N` and average length (see
    /// [`crate::bm25_mmap`] for the layout).
    #[cfg(test)]
    pub(crate) fn encode_v2(&self) -> Vec<u8> {
        let LiveLayout { new_slot, live_docs, length_factor, terms, order } = self.live_layout();
        let mut docs = Vec::new();
        let mut tfs = Vec::new();
        let mut impacts = Vec::new();
        let mut starts = vec![0u64];
        let mut dfs = Vec::with_capacity(terms.len());
        let mut max_impacts = Vec::with_capacity(terms.len());
        for &(_, t) in &terms {
            let postings = &self.postings[t];
            let mut max_impact = 0.0f32;
            let before = docs.len();
            for (&doc, &tf) in postings.docs.iter().zip(&postings.tfs) {
                let slot = new_slot[doc as usize];
                if slot != u32::MAX {
                    let impact = self.params.tfc(tf, length_factor[slot as usize]);
                    max_impact = max_impact.max(impact);
                    docs.push(slot);
                    tfs.push(tf);
                    impacts.push(impact);
                }
            }
            dfs.push((docs.len() - before) as u32);
            max_impacts.push(max_impact);
            starts.push(docs.len() as u64);
        }
        let mut config = Vec::new();
        self.encode_config(&mut config);
        crate::bm25_mmap::write_v2_reference(&crate::bm25_mmap::ReferenceParts {
            config: &config,
            live: live_docs.len() as u64,
            total_len: self.total_len,
            terms: terms.iter().map(|t| t.0),
            term_count: terms.len(),
            dfs: &dfs,
            max_impacts: &max_impacts,
            starts: &starts,
            docs: &docs,
            tfs: &tfs,
            impacts: &impacts,
            lens: &live_docs.iter().map(|d| d.len).collect::<Vec<_>>(),
            ids: live_docs.iter().map(|d| d.id.as_str()),
            order: &order,
        })
    }

    /// The owned index from a parsed format 2 file: every posting checked (doc in range, ascending, tf > 0),
    /// ids and terms checked as UTF-8 and unique, then prepared.
    fn from_layout(layout: &crate::bm25_mmap::Layout, bytes: &[u8]) -> Result<Self> {
        let mut index = Bm25Index::new(layout.config.clone(), layout.params)?;
        let n = layout.live;
        let lens = layout.u32_vec(bytes, crate::bm25_mmap::DOC_LEN);
        let docs = layout.u32_vec(bytes, crate::bm25_mmap::POST_DOCS);
        let tfs = layout.u32_vec(bytes, crate::bm25_mmap::POST_TFS);
        let starts = layout.u64_vec(bytes, crate::bm25_mmap::TERM_START);
        let mut total_len = 0u64;
        for (slot, &len) in lens.iter().enumerate().take(n) {
            let id = layout.id(bytes, slot as u32)?.to_string();
            if index.by_id.insert(id.clone(), slot as u32).is_some() {
                return Err(KernelError::Format(format!("document id {id:?} appears twice")));
            }
            total_len += len as u64;
            index.docs.push(Doc { id, len });
            index.alive.push(true);
        }
        if total_len != layout.total_len {
            return Err(KernelError::Format(format!(
                "document lengths add up to {total_len} but the file says {}",
                layout.total_len
            )));
        }
        for t in 0..layout.terms {
            let term = layout.term(bytes, t)?;
            let term = std::str::from_utf8(term)
                .map_err(|_| KernelError::Format(format!("term {t} is not UTF-8")))?
                .to_string();
            let range = starts[t] as usize..starts[t + 1] as usize;
            let mut postings = Postings {
                docs: docs[range.clone()].to_vec(),
                tfs: tfs[range].to_vec(),
                ..Postings::default()
            };
            for (i, (&doc, &tf)) in postings.docs.iter().zip(&postings.tfs).enumerate() {
                if doc as usize >= n {
                    return Err(KernelError::Format(format!("term {term:?} lists document {doc} of {n}")));
                }
                if tf == 0 {
                    return Err(KernelError::Format(format!("term {term:?} has frequency 0 in document {doc}")));
                }
                if i > 0 && postings.docs[i - 1] >= doc {
                    return Err(KernelError::Format(format!("postings of term {term:?} are not in document order")));
                }
            }
            postings.impacts = vec![0.0; postings.docs.len()];
            index.df.push(postings.docs.len() as u32);
            if index.vocab.insert(term.clone(), t as u32).is_some() {
                return Err(KernelError::Format(format!("term {term:?} appears twice")));
            }
            index.terms.push(term);
            index.postings.push(postings);
        }
        index.live = n;
        index.total_len = total_len;
        index.dirty = true;
        index.prepare();
        Ok(index)
    }

    fn encode_config(&self, w: &mut Vec<u8>) {
        let config = self.tokenizer.config();
        w.push(config.lowercase as u8);
        w.push(config.ascii_fold as u8);
        put_u32(w, config.min_token_len as u32);
        put_u32(w, config.max_token_len as u32);
        put_str(w, config.stemmer.as_deref().unwrap_or(""));
        put_u32(w, config.stopwords.len() as u32);
        for word in &config.stopwords {
            put_str(w, word);
        }
        w.push(self.params.variant.code());
        w.extend_from_slice(&self.params.k1.to_le_bytes());
        w.extend_from_slice(&self.params.b.to_le_bytes());
        w.extend_from_slice(&self.params.delta.to_le_bytes());
    }

    /// Format 1 payload (tests write old files with it).
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        self.encode_config(&mut w);
        // each live document's (term, tf) list, by term id, inverted from the postings
        let mut offsets = vec![0usize; self.docs.len() + 1];
        for postings in &self.postings {
            for &doc in &postings.docs {
                if self.alive[doc as usize] {
                    offsets[doc as usize + 1] += 1;
                }
            }
        }
        for d in 0..self.docs.len() {
            offsets[d + 1] += offsets[d];
        }
        let mut fill = offsets.clone();
        let mut forward = vec![(0u32, 0u32); offsets[self.docs.len()]];
        for (term, postings) in self.postings.iter().enumerate() {
            for (&doc, &tf) in postings.docs.iter().zip(&postings.tfs) {
                if self.alive[doc as usize] {
                    forward[fill[doc as usize]] = (term as u32, tf);
                    fill[doc as usize] += 1;
                }
            }
        }
        drop(fill);
        let doc_terms = |d: usize| &forward[offsets[d]..offsets[d + 1]];
        // only terms used by live documents, renumbered densely
        let mut remap: Vec<Option<u32>> = vec![None; self.terms.len()];
        let mut used: Vec<u32> = Vec::new();
        for (d, _) in self.alive.iter().enumerate().filter(|(_, &a)| a) {
            for &(term, _) in doc_terms(d) {
                if remap[term as usize].is_none() {
                    remap[term as usize] = Some(used.len() as u32);
                    used.push(term);
                }
            }
        }
        put_u32(&mut w, used.len() as u32);
        for &term in &used {
            put_str(&mut w, &self.terms[term as usize]);
        }
        put_u32(&mut w, self.live as u32);
        for (d, (doc, _)) in self.docs.iter().zip(&self.alive).enumerate().filter(|(_, (_, &a))| a) {
            put_str(&mut w, &doc.id);
            put_u32(&mut w, doc.len);
            put_u32(&mut w, doc_terms(d).len() as u32);
            for &(term, tf) in doc_terms(d) {
                put_u32(&mut w, remap[term as usize].expect("live term"));
                put_u32(&mut w, tf);
            }
        }
        w
    }

    fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes: payload, at: 0 };
        let (config, params) = decode_config(&mut r)?;
        let mut index = Bm25Index::new(config, params)?;
        let term_count = r.u32()? as usize;
        for t in 0..term_count {
            let term = r.string()?;
            index.vocab.insert(term.clone(), t as u32);
            index.terms.push(term);
        }
        index.postings = vec![Postings::default(); term_count];
        index.df = vec![0; term_count];
        let doc_count = r.u32()? as usize;
        for d in 0..doc_count {
            let id = r.string()?;
            let len = r.u32()?;
            let n = r.u32()? as usize;
            for _ in 0..n {
                let term = r.u32()?;
                let tf = r.u32()?;
                if term as usize >= term_count {
                    return Err(KernelError::Format(format!("term {term} out of range in document {id:?}")));
                }
                if tf == 0 {
                    return Err(KernelError::Format(format!("term {term} has frequency 0 in document {id:?}")));
                }
                let postings = &mut index.postings[term as usize];
                if postings.docs.last() == Some(&(d as u32)) {
                    return Err(KernelError::Format(format!("term {term} listed twice in document {id:?}")));
                }
                postings.docs.push(d as u32);
                postings.tfs.push(tf);
                postings.impacts.push(0.0);
                index.df[term as usize] += 1;
            }
            if index.by_id.insert(id.clone(), d as u32).is_some() {
                return Err(KernelError::Format(format!("document id {id:?} appears twice")));
            }
            index.total_len += len as u64;
            index.docs.push(Doc { id, len });
            index.alive.push(true);
        }
        index.live = doc_count;
        if r.at != payload.len() {
            return Err(KernelError::Format("trailing bytes after the last document".into()));
        }
        index.dirty = true;
        index.prepare();
        Ok(index)
    }
}

/// Score every posting of every query term into `buf` (term at a time, in query order), skipping documents
/// `accept` rejects. `accept` must reject every doc `>= slots`.
pub(crate) fn score_prepared(
    query: &[Option<TermPostings<'_>>],
    slots: usize,
    accept: impl Fn(u32) -> bool,
    buf: &mut ScoreBuf,
) {
    buf.reset(slots);
    for term in query.iter().flatten() {
        for (&doc, &impact) in term.docs.iter().zip(term.impacts) {
            if accept(doc) {
                buf.add(doc, term.idf * impact);
            }
        }
    }
}

/// Best `k` documents of the last scored query as (doc index, score), best first, ties by doc index.
pub(crate) fn top_docs(buf: &mut ScoreBuf, k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let ScoreBuf { scores, touched, heap } = buf;
    heap.clear();
    for &d in touched.iter() {
        let hit = Worst(scores[d as usize], d);
        if heap.len() < k {
            heap.push(hit);
        } else if let Some(mut worst) = heap.peek_mut() {
            if hit < *worst {
                *worst = hit; // better than the worst kept hit
            }
        }
    }
    let mut out: Vec<(u32, f32)> = heap.drain().map(|Worst(score, d)| (d, score)).collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Best `k` by MaxScore-style dynamic pruning (term at a time) over prepared postings; documents `accept`
/// rejects are skipped, and `accept` must reject every doc `>= slots`.
///
/// Query terms are taken by decreasing score upper bound (`idf * max impact`, rare terms first) and scored
/// into the accumulator. As soon as the bounds of the terms not yet scored add up to less than the k-th
/// best partial score, no untouched document can reach the top k: the remaining (common, long) postings
/// are only probed for the surviving candidates, which are dropped once their partial score plus the
/// remaining bounds falls below the k-th best. The few survivors are then scored exactly, summing
/// contributions in query order as the exhaustive path does, so scores and order (ties by doc index) are
/// the same. Bounds carry a relative slack covering float rounding of sums taken in another order.
pub(crate) fn pruned_top_k(
    query: &[Option<TermPostings<'_>>],
    k: usize,
    slots: usize,
    accept: impl Fn(u32) -> bool,
    buf: &mut ScoreBuf,
) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..query.len()).filter(|&q| query[q].is_some()).collect();
    order.sort_by(|&a, &b| {
        let bound = |q: usize| query[q].map_or(0.0, |t| t.bound);
        bound(b).total_cmp(&bound(a))
    });
    let slack = 1.0 + 1e-6 * (order.len() as f64 + 2.0);
    let mut rest: f64 = order.iter().filter_map(|&q| query[q].map(|t| t.bound as f64)).sum();
    buf.reset(slots);
    let mut theta = f64::NEG_INFINITY; // a lower bound of the k-th best exact score
    let mut partial: Vec<f32> = Vec::new();
    let mut next = 0;
    let mut done = 0.0f64; // bounds of the terms scored so far: no partial score exceeds it
    while next < order.len() {
        // the first documents touched are those of the rarest terms: the k-th best among them is a cheap
        // lower bound of the k-th best overall
        let early = &buf.touched[..buf.touched.len().min(EARLY_CANDIDATES.max(k))];
        if early.len() >= k && done > rest {
            theta = theta.max(kth_largest(&buf.scores, early, k, &mut partial) / slack);
            if rest * slack < theta {
                break;
            }
        }
        let Some(term) = query[order[next]] else { break };
        for (&doc, &impact) in term.docs.iter().zip(term.impacts) {
            if accept(doc) {
                buf.add(doc, term.idf * impact);
            }
        }
        rest -= term.bound as f64;
        done += term.bound as f64;
        next += 1;
    }
    if next == order.len() && buf.touched.len() >= k {
        theta = kth_largest(&buf.scores, &buf.touched, k, &mut partial) / slack;
        rest = 0.0;
    }
    let remaining: usize = order[next..].iter().filter_map(|&q| query[q].map(|t| t.docs.len())).sum();
    let survivors = buf.touched.iter().filter(|&&d| (buf.scores[d as usize] as f64 + rest) * slack >= theta).count();
    if survivors.saturating_mul(DENSE_PROBE_FACTOR) > remaining {
        // many survivors against the postings left: one sequential pass over each remaining term's postings,
        // adding only to documents already touched (an untouched one cannot reach the top k), is cheaper than
        // sorting the survivors and probing the postings for each
        for &q in &order[next..] {
            let Some(term) = query[q] else { continue };
            for (&doc, &impact) in term.docs.iter().zip(term.impacts) {
                if let Some(slot) = buf.scores.get_mut(doc as usize) {
                    if *slot != 0.0 && accept(doc) {
                        *slot += term.idf * impact;
                    }
                }
            }
        }
        next = order.len();
        rest = 0.0;
        if buf.touched.len() >= k {
            theta = theta.max(kth_largest(&buf.scores, &buf.touched, k, &mut partial) / slack);
        }
    }
    let mut candidates: Vec<(u32, f32)> = buf
        .touched
        .iter()
        .map(|&d| (d, buf.scores[d as usize]))
        .filter(|&(_, score)| (score as f64 + rest) * slack >= theta)
        .collect();
    candidates.sort_unstable_by_key(|&(d, _)| d);
    candidates.dedup_by_key(|&mut (d, _)| d);
    for &q in &order[next..] {
        let Some(term) = query[q] else { continue };
        let mut at = 0;
        for (doc, score) in candidates.iter_mut() {
            at = gallop(term.docs, at, *doc);
            if term.docs.get(at) == Some(doc) {
                *score += term.idf * term.impacts.get(at).copied().unwrap_or(0.0);
            }
        }
        rest -= term.bound as f64;
        candidates.retain(|&(_, score)| (score as f64 + rest) * slack >= theta);
    }
    // exact scores, summed in query order
    let mut hits: Vec<(u32, f32)> = candidates
        .into_iter()
        .map(|(doc, _)| {
            let mut score = 0.0f32;
            for term in query.iter().flatten() {
                if let Ok(at) = term.docs.binary_search(&doc) {
                    score += term.idf * term.impacts.get(at).copied().unwrap_or(0.0);
                }
            }
            (doc, score)
        })
        .collect();
    hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.truncate(k);
    hits
}

/// The first position at or after `from` whose doc is `>= doc` (exponential then binary search: cheap when
/// successive probes are close).
fn gallop(docs: &[u32], from: usize, doc: u32) -> usize {
    let mut step = 1;
    let mut low = from;
    let mut high = from;
    while high < docs.len() && docs[high] < doc {
        low = high + 1;
        high += step;
        step *= 2;
    }
    let high = high.min(docs.len());
    low + docs[low..high].partition_point(|&x| x < doc)
}

/// The `k`-th largest of the scores of `touched` (`k <= touched.len()`), as f64; `scratch` is reused.
fn kth_largest(scores: &[f32], touched: &[u32], k: usize, scratch: &mut Vec<f32>) -> f64 {
    scratch.clear();
    scratch.extend(touched.iter().map(|&d| scores[d as usize]));
    let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth as f64
}

/// Documents tokenized together by [`Bm25Index::add`] (bounds the memory held by token lists).
const ADD_BATCH: usize = 65_536;

/// Survivors of pruning times this above the postings still to score: the rest are scored by one pass over
/// those postings instead of a sorted probe per survivor.
const DENSE_PROBE_FACTOR: usize = 8;

/// How many of the first-touched documents bound the k-th best score while pruning.
const EARLY_CANDIDATES: usize = 4096;

/// Query words remembered from indexing stop growing at this many.
const MAX_QUERY_WORDS: usize = 1 << 22;

/// Tokenizer configuration and scoring parameters, as [`Bm25Index::encode_config`] writes them.
pub(crate) fn decode_config(r: &mut Reader<'_>) -> Result<(TokenizerConfig, Bm25Params)> {
    let lowercase = r.u8()? != 0;
    let ascii_fold = r.u8()? != 0;
    let min_token_len = r.u32()? as usize;
    let max_token_len = r.u32()? as usize;
    let stemmer = r.string()?;
    let count = r.u32()? as usize;
    if count > r.bytes.len() {
        return Err(KernelError::Format("stopword count larger than the file".into()));
    }
    let stopwords = (0..count).map(|_| r.string()).collect::<Result<Vec<_>>>()?;
    let config = TokenizerConfig {
        lowercase,
        ascii_fold,
        stopwords,
        stemmer: if stemmer.is_empty() { None } else { Some(stemmer) },
        min_token_len,
        max_token_len,
    };
    let variant = Variant::from_code(r.u8()?)?;
    let params = Bm25Params { variant, k1: r.f32()?, b: r.f32()?, delta: r.f32()? };
    params.validate().map_err(|err| KernelError::Format(format!("bad scoring parameters: {err}")))?;
    Ok((config, params))
}

fn check_unique(ids: &[String]) -> Result<()> {
    let mut seen = FxHashMap::default();
    for id in ids {
        if seen.insert(id.as_str(), ()).is_some() {
            return Err(invalid(format!("id {id:?} appears twice in one batch; give each document its own id")));
        }
    }
    Ok(())
}

fn put_u32(w: &mut Vec<u8>, value: u32) {
    w.extend_from_slice(&value.to_le_bytes());
}

fn put_str(w: &mut Vec<u8>, value: &str) {
    put_u32(w, value.len() as u32);
    w.extend_from_slice(value.as_bytes());
}

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| KernelError::Format("unexpected end of data".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| KernelError::Format("a string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> TokenizerConfig {
        TokenizerConfig { stopwords: vec![], stemmer: None, ..TokenizerConfig::default() }
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn index(variant: Variant) -> Bm25Index {
        let mut index = Bm25Index::new(plain(), Bm25Params { variant, ..Bm25Params::default() }).unwrap();
        let texts = ["the quick brown fox", "the lazy dog", "quick quick fox jumps", "an unrelated text"];
        index.add(&ids(&["a", "b", "c", "d"]), &texts).unwrap();
        index
    }

    #[test]
    fn ranks_by_bm25() {
        let index = index(Variant::Lucene);
        let hits = index.search("quick fox", 10, None);
        let order: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, vec!["c", "a"]);
        assert!(hits[0].1 > hits[1].1);
        // hand-computed Lucene score of "fox" in doc "a": N=4, df=2, len=4, avgdl=14/4
        let l = 1.0 - 0.75 + 0.75 * 4.0 / 3.5;
        let idf = (1.0f64 + (4.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
        let expected_fox = idf * 1.0 / (1.0 + 1.2 * l);
        let fox = index.search("fox", 10, None);
        let a = fox.iter().find(|(id, _)| id == "a").unwrap().1 as f64;
        assert!((a - expected_fox).abs() < 1e-5, "{a} vs {expected_fox}");
    }

    #[test]
    fn every_variant_scores_and_ranks() {
        for variant in [Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus] {
            // "jumps" is in one document of four, so even Robertson's floored IDF is positive for it
            let hits = index(variant).search("quick fox jumps", 10, None);
            assert_eq!(hits[0].0, "c", "{variant:?}");
        }
    }

    #[test]
    fn update_and_delete_by_id() {
        let mut index = index(Variant::Lucene);
        index.add(&ids(&["d"]), &["a fox at last"]).unwrap();
        assert_eq!(index.len(), 4);
        assert!(index.search("fox", 10, None).iter().any(|(id, _)| id == "d"));
        assert_eq!(index.delete(&ids(&["c", "nope"])), 1);
        assert_eq!(index.len(), 3);
        assert!(!index.contains("c"));
        assert!(index.search("jumps", 10, None).is_empty());
    }

    #[test]
    fn filtered_and_batch_search() {
        let index = index(Variant::Lucene);
        let allow = index.allow_list(&["a", "b", "missing"]);
        let hits = index.search("quick fox dog", 10, Some(&allow));
        let mut got: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        let batch = index.search_batch(&["fox", "dog", "zebra"], 1, None);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[1][0].0, "b");
        assert!(batch[2].is_empty());
    }

    #[test]
    fn prepared_and_dirty_scoring_agree() {
        for variant in [Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus] {
            let mut index = index(variant);
            index.delete(&ids(&["b"]));
            assert!(index.is_dirty());
            let dirty = index.search_batch(&["quick fox", "lazy dog jumps"], 10, None);
            index.prepare();
            assert!(!index.is_dirty());
            assert_eq!(index.search_batch(&["quick fox", "lazy dog jumps"], 10, None), dirty, "{variant:?}");
            index.add(&ids(&["e"]), &["another quick fox"]).unwrap();
            let dirty = index.search("quick fox", 10, None);
            index.prepare();
            assert_eq!(index.search("quick fox", 10, None), dirty, "{variant:?}");
        }
    }

    #[test]
    fn duplicate_ids_in_a_batch_are_rejected() {
        let mut index = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        let err = index.add(&ids(&["x", "x"]), &["a", "b"]).unwrap_err();
        assert!(err.to_string().contains("appears twice"));
    }

    #[test]
    fn compaction_keeps_results() {
        let mut index = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        let names: Vec<String> = (0..400).map(|i| format!("doc{i}")).collect();
        let texts: Vec<String> = (0..400).map(|i| format!("common word{} other{}", i % 7, i % 13)).collect();
        index.add(&names, &texts).unwrap();
        let before = index.search("word3 other5", 5, None);
        let dead: Vec<String> = (0..400).filter(|i| i % 7 == 1).map(|i| format!("doc{i}")).collect();
        index.delete(&dead);
        let mut reference = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        let keep: Vec<usize> = (0..400).filter(|i| i % 7 != 1).collect();
        reference.add(
            &keep.iter().map(|&i| names[i].clone()).collect::<Vec<_>>(),
            &keep.iter().map(|&i| texts[i].clone()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(index.search("word3 other5", 5, None), reference.search("word3 other5", 5, None));
        assert!(!before.is_empty());
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("dspyo3-bm25-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("index.bm25");
        let mut index = index(Variant::Bm25Plus);
        index.delete(&ids(&["b"]));
        index.save(&path).unwrap();
        let loaded = Bm25Index::load(&path).unwrap();
        assert_eq!(loaded.params(), index.params());
        assert_eq!(loaded.search("quick fox", 10, None), index.search("quick fox", 10, None));
        assert_eq!(loaded.len(), 3);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Bm25Index::load(&path).unwrap_err().to_string().contains("checksum mismatch"));
        std::fs::write(&path, b"hello world, not an index at all").unwrap();
        assert!(Bm25Index::load(&path).unwrap_err().to_string().contains("not a dspyo3 BM25 index"));
        let mut future = std::fs::read(dir.join("index.bm25")).unwrap();
        future.splice(0..future.len(), MAGIC.iter().copied().chain(9u32.to_le_bytes()).chain([0u8; 12]));
        std::fs::write(&path, &future).unwrap();
        assert!(Bm25Index::load(&path).unwrap_err().to_string().contains("format 9"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decoder_rejects_zero_and_repeated_term_frequencies() {
        let mut index = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        index.add(&ids(&["a"]), &["cat dog"]).unwrap();
        let good = index.encode();
        // the payload ends with document "a": len, term count 2, then (term, tf) pairs
        let pairs = good.len() - 16;
        let mut zero = good.clone();
        zero[pairs + 4..pairs + 8].copy_from_slice(&0u32.to_le_bytes());
        assert!(Bm25Index::decode(&zero).unwrap_err().to_string().contains("frequency 0"));
        let mut twice = good.clone();
        let first_term = twice[pairs..pairs + 4].to_vec();
        twice[pairs + 8..pairs + 12].copy_from_slice(&first_term);
        assert!(Bm25Index::decode(&twice).unwrap_err().to_string().contains("listed twice"));
        assert_eq!(Bm25Index::decode(&good).unwrap().len(), 1);
    }

    #[test]
    fn deletes_keep_document_frequencies_exact() {
        // no forward index: document frequencies are recounted from the postings after a delete
        let mut index = index(Variant::Lucene);
        index.delete(&ids(&["a", "c"]));
        let mut fresh = Bm25Index::new(plain(), Bm25Params::default()).unwrap();
        fresh.add(&ids(&["b", "d"]), &["the lazy dog", "an unrelated text"]).unwrap();
        assert_eq!(index.vocabulary_size(), fresh.vocabulary_size());
        for query in ["the dog", "lazy text", "fox"] {
            assert_eq!(index.search(query, 10, None), fresh.search(query, 10, None), "{query}");
        }
    }

    #[test]
    fn a_failed_save_keeps_the_old_file_and_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("dspyo3-bm25-failed-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("index.bm25");
        index(Variant::Lucene).save(&path).unwrap();
        let old = std::fs::read(&path).unwrap();
        let mut bigger = index(Variant::Lucene);
        bigger.add(&ids(&["z"]), &["another fox"]).unwrap();
        // the target is a non-empty directory: the file is written, then the rename fails
        let blocked = dir.join("sub");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(bigger.save(&blocked).is_err());
        // the target's directory does not exist: the temporary file cannot be created
        assert!(bigger.save(&dir.join("missing").join("index.bm25")).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), old);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["index.bm25", "sub"]);
        assert_eq!(std::fs::read_dir(&blocked).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const WORDS: &[&str] = &["cat", "dog", "fox", "quick", "lazy", "brown", "jumps", "über", "naïve", "x"];

        fn seed_payload() -> Vec<u8> {
            let mut index = index(Variant::Bm25Plus);
            index.delete(&ids(&["b"]));
            index.encode()
        }

        fn docs() -> impl Strategy<Value = Vec<(String, String)>> {
            proptest::collection::vec(
                (0u16..500, proptest::collection::vec(proptest::sample::select(WORDS), 0..12)),
                0..40,
            )
            .prop_map(|docs| {
                let mut seen = std::collections::HashSet::new();
                docs.into_iter()
                    .filter(|(id, _)| seen.insert(*id))
                    .map(|(id, words)| (format!("doc-{id}"), words.join(" ")))
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Arbitrary bytes decode to an index or a format error, never a panic.
            #[test]
            fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
                let _ = Bm25Index::decode(&bytes);
            }

            /// A real payload with bytes overwritten, inserted or cut decodes or fails cleanly.
            #[test]
            fn damaged_payloads_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut bytes = seed_payload();
                for (at, byte, kind) in edits {
                    let i = at.index(bytes.len());
                    match kind {
                        0 => bytes[i] = byte,
                        1 => bytes.insert(i, byte),
                        _ => bytes[i] ^= 1 << (byte % 8),
                    }
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                let _ = Bm25Index::decode(&bytes);
            }

            /// MaxScore pruning returns exactly the exhaustive top k (same documents, scores and order), for
            /// every variant, with deletions, with and without an allow-list, and with repeated query terms.
            #[test]
            fn pruned_top_k_equals_exhaustive(
                corpus in proptest::collection::vec(proptest::collection::vec(0usize..24, 0..30), 0..120),
                queries in proptest::collection::vec(proptest::collection::vec(0usize..26, 0..8), 1..6),
                deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
                allowed in proptest::collection::vec(any::<bool>(), 120),
                variant in proptest::sample::select(vec![Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus]),
                k in 0usize..15,
                k1 in 0.0f32..3.0,
                b in 0.0f32..=1.0,
                delta in 0.0f32..2.0,
            ) {
                // a skewed vocabulary: low word numbers are common, so postings lengths differ a lot
                let word = |w: usize| format!("w{}", w * w / 24);
                let params = Bm25Params { variant, k1, b, delta };
                let mut index = Bm25Index::new(plain(), params).unwrap();
                let names: Vec<String> = (0..corpus.len()).map(|i| format!("d{i}")).collect();
                let texts: Vec<String> =
                    corpus.iter().map(|doc| doc.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ")).collect();
                index.add(&names, &texts).unwrap();
                if !names.is_empty() {
                    let gone: Vec<String> = deleted.iter().map(|i| names[i.index(names.len())].clone()).collect();
                    index.delete(&gone);
                }
                index.prepare();
                let allow_ids: Vec<&String> = names.iter().zip(&allowed).filter(|(_, &a)| a).map(|(n, _)| n).collect();
                let allow = index.allow_list(&allow_ids);
                for query in &queries {
                    let text = query.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ");
                    let terms = index.query_terms(&text);
                    for filter in [None, Some(&allow)] {
                        let exhaustive = index.top_k_exhaustive(&terms, k, filter, &mut ScoreBuf::new());
                        let pruned = index.top_k_pruned(&terms, k, filter, &mut ScoreBuf::new());
                        prop_assert_eq!(&pruned, &exhaustive, "query {:?} filter {}", text, filter.is_some());
                        prop_assert_eq!(index.search_docs(&text, k, filter), exhaustive);
                    }
                }
            }

            /// The streamed save writes exactly the bytes of the in-memory reference encoding, with deletions
            /// (renumbered slots, terms left without live postings) and before or after `prepare`.
            #[test]
            fn streamed_save_equals_reference_encoding(
                docs in docs(),
                deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
                variant in proptest::sample::select(vec![Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus]),
                k1 in 0.0f32..3.0,
                b in 0.0f32..=1.0,
                prepare in any::<bool>(),
            ) {
                let params = Bm25Params { variant, k1, b, ..Bm25Params::default() };
                let mut index = Bm25Index::new(plain(), params).unwrap();
                let (names, texts): (Vec<String>, Vec<String>) = docs.into_iter().unzip();
                index.add(&names, &texts).unwrap();
                if !names.is_empty() {
                    let gone: Vec<String> = deleted.iter().map(|i| names[i.index(names.len())].clone()).collect();
                    index.delete(&gone);
                }
                if prepare {
                    index.prepare();
                }
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("dspyo3-bm25-stream-{}-{n}.bm25", std::process::id()));
                index.save(&path).unwrap();
                let streamed = std::fs::read(&path).unwrap();
                std::fs::remove_file(&path).unwrap();
                prop_assert!(streamed == index.encode_v2(), "streamed save differs from the reference encoding");
            }

            /// Whatever the documents, parameters and deletions, a saved index loads back with the same
            /// documents, vocabulary and scores.
            #[test]
            fn saved_indexes_round_trip(
                docs in docs(),
                deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
                variant in proptest::sample::select(vec![Variant::Lucene, Variant::Robertson, Variant::Atire, Variant::Bm25L, Variant::Bm25Plus]),
                k1 in 0.0f32..3.0,
                b in 0.0f32..=1.0,
            ) {
                let params = Bm25Params { variant, k1, b, ..Bm25Params::default() };
                let mut index = Bm25Index::new(plain(), params).unwrap();
                let (names, texts): (Vec<String>, Vec<String>) = docs.into_iter().unzip();
                index.add(&names, &texts).unwrap();
                if !names.is_empty() {
                    let gone: Vec<String> = deleted.iter().map(|i| names[i.index(names.len())].clone()).collect();
                    index.delete(&gone);
                }
                index.prepare();
                let loaded = Bm25Index::decode(&index.encode()).unwrap();
                prop_assert_eq!(loaded.ids(), index.ids());
                prop_assert_eq!(loaded.len(), index.len());
                prop_assert_eq!(loaded.vocabulary_size(), index.vocabulary_size());
                prop_assert_eq!(loaded.params(), index.params());
                for query in ["cat", "quick brown fox", "über naïve x", "absent"] {
                    prop_assert_eq!(loaded.search(query, 50, None), index.search(query, 50, None));
                }
            }
        }
    }
}
