//! Text -> tokens: Unicode word segmentation (UAX #29), lowercasing, ASCII folding, stopwords and Snowball
//! stemming, each configurable. Batch tokenization runs on all cores.

use std::collections::HashSet;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use crate::error::{invalid, Result};

/// Lucene's classic English stopword set (`EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`).
pub const ENGLISH_STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will",
    "with",
];

/// Snowball stemmer languages accepted by [`TokenizerConfig::stemmer`].
pub const STEMMER_LANGUAGES: &[&str] = &[
    "arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek", "hungarian", "italian",
    "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "tamil", "turkish",
];

fn algorithm(language: &str) -> Option<Algorithm> {
    Some(match language {
        "arabic" => Algorithm::Arabic,
        "danish" => Algorithm::Danish,
        "dutch" => Algorithm::Dutch,
        "english" => Algorithm::English,
        "finnish" => Algorithm::Finnish,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "greek" => Algorithm::Greek,
        "hungarian" => Algorithm::Hungarian,
        "italian" => Algorithm::Italian,
        "norwegian" => Algorithm::Norwegian,
        "portuguese" => Algorithm::Portuguese,
        "romanian" => Algorithm::Romanian,
        "russian" => Algorithm::Russian,
        "spanish" => Algorithm::Spanish,
        "swedish" => Algorithm::Swedish,
        "tamil" => Algorithm::Tamil,
        "turkish" => Algorithm::Turkish,
        _ => return None,
    })
}

/// How text is turned into tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerConfig {
    /// Lowercase every token.
    pub lowercase: bool,
    /// Fold accented Latin letters to ASCII (`café` -> `cafe`, `straße` -> `strasse`).
    pub ascii_fold: bool,
    /// Tokens dropped before stemming (compared after lowercasing and folding).
    pub stopwords: Vec<String>,
    /// Snowball stemmer language (one of [`STEMMER_LANGUAGES`]), or `None` for no stemming.
    pub stemmer: Option<String>,
    /// Tokens shorter than this many characters are dropped (before stemming).
    pub min_token_len: usize,
    /// Tokens longer than this many characters are dropped.
    pub max_token_len: usize,
}

impl Default for TokenizerConfig {
    /// Lowercase, ASCII folding, Lucene's English stopwords, English Snowball stemming, tokens of 1-64 chars.
    fn default() -> Self {
        TokenizerConfig {
            lowercase: true,
            ascii_fold: true,
            stopwords: ENGLISH_STOPWORDS.iter().map(|s| s.to_string()).collect(),
            stemmer: Some("english".to_string()),
            min_token_len: 1,
            max_token_len: 64,
        }
    }
}

/// A configured tokenizer. Cheap to share between threads (`Sync`).
pub struct Tokenizer {
    config: TokenizerConfig,
    stopwords: HashSet<String>,
    stemmer: Option<Stemmer>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("config", &self.config).finish()
    }
}

impl Tokenizer {
    /// Build a tokenizer; an unknown stemmer language or an empty length range is an error.
    pub fn new(config: TokenizerConfig) -> Result<Self> {
        let stemmer = match config.stemmer.as_deref() {
            None => None,
            Some(language) => {
                let algo = algorithm(&language.to_lowercase()).ok_or_else(|| {
                    invalid(format!(
                        "unknown stemmer language {language:?}; use one of: {}, or none",
                        STEMMER_LANGUAGES.join(", ")
                    ))
                })?;
                Some(Stemmer::create(algo))
            }
        };
        if config.min_token_len == 0 || config.min_token_len > config.max_token_len {
            return Err(invalid(format!(
                "min_token_len must be at least 1 and at most max_token_len (got {} and {})",
                config.min_token_len, config.max_token_len
            )));
        }
        let stopwords = config.stopwords.iter().map(|w| normalise(w, config.lowercase, config.ascii_fold)).collect();
        Ok(Tokenizer { config, stopwords, stemmer })
    }

    /// The configuration this tokenizer was built with.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Tokens of one text, in order (duplicates kept).
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let mut buf = String::new();
        words(text).filter_map(|word| self.token(word, &mut buf)).collect()
    }

    /// The token one word becomes (`None` when it is dropped); `buf` is scratch space.
    pub fn token(&self, word: &str, buf: &mut String) -> Option<String> {
        buf.clear();
        normalise_into(word, self.config.lowercase, self.config.ascii_fold, buf);
        self.finish(buf)
    }

    /// Length filter, stopwords and stemming for an already normalised word.
    fn finish(&self, normalised: &str) -> Option<String> {
        let chars = if normalised.is_ascii() { normalised.len() } else { normalised.chars().count() };
        if chars < self.config.min_token_len || chars > self.config.max_token_len {
            return None;
        }
        if self.stopwords.contains(normalised) {
            return None;
        }
        Some(match &self.stemmer {
            Some(stemmer) => stemmer.stem(normalised).into_owned(),
            None => normalised.to_string(),
        })
    }

    /// Tokens of many texts, tokenized in parallel; output order follows input order.
    pub fn tokenize_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<String>> {
        self.tokenize_chunks(texts)
            .into_iter()
            .flat_map(|chunk| {
                let TokenChunk { tokens, docs, .. } = chunk;
                docs.into_iter().map(move |ids| ids.iter().map(|&id| tokens[id as usize].clone()).collect::<Vec<_>>())
            })
            .collect()
    }

    /// Tokenize texts in parallel chunks of [`CHUNK`] texts. Within a chunk each distinct word is normalised,
    /// filtered and stemmed once and documents are lists of chunk-local token ids: no per-token allocation.
    pub fn tokenize_chunks<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<TokenChunk> {
        // big enough that each distinct word is stemmed in few chunks, small enough to balance the threads
        let size = texts.len().div_ceil(2 * rayon::current_num_threads()).clamp(CHUNK, 16 * CHUNK);
        texts.par_chunks(size).map(|part| self.tokenize_chunk(part)).collect()
    }

    fn tokenize_chunk<S: AsRef<str>>(&self, texts: &[S]) -> TokenChunk {
        let mut chunk = TokenChunk {
            tokens: Vec::with_capacity(4096),
            words: FxHashMap::with_capacity_and_hasher(8192, Default::default()),
            docs: Vec::with_capacity(texts.len()),
        };
        let mut buf = String::new();
        for text in texts {
            let mut ids = Vec::with_capacity(text.as_ref().len() / 6);
            for word in words(text.as_ref()) {
                buf.clear();
                normalise_into(word, self.config.lowercase, self.config.ascii_fold, &mut buf);
                let id = match chunk.words.get(buf.as_str()) {
                    Some(&id) => id,
                    None => {
                        let id = match self.finish(&buf) {
                            Some(token) => {
                                chunk.tokens.push(token);
                                (chunk.tokens.len() - 1) as u32
                            }
                            None => DROPPED,
                        };
                        chunk.words.insert(buf.clone(), id);
                        id
                    }
                };
                if id != DROPPED {
                    ids.push(id);
                }
            }
            chunk.docs.push(ids);
        }
        chunk
    }
}

/// Smallest number of texts per parallel tokenization chunk.
pub const CHUNK: usize = 512;

/// Marks a word that produces no token (too short or long, or a stopword).
pub const DROPPED: u32 = u32::MAX;

/// The output of tokenizing one chunk of texts.
#[derive(Debug, Default)]
pub struct TokenChunk {
    /// Chunk-local token id -> token (stem).
    pub tokens: Vec<String>,
    /// Normalised word -> chunk-local token id, or [`DROPPED`].
    pub words: FxHashMap<String, u32>,
    /// Per text, its token ids in order.
    pub docs: Vec<Vec<u32>>,
}

/// Words of a text per Unicode word segmentation (UAX #29), keeping only segments with a letter or digit, as
/// `unicode_segmentation`'s `unicode_words` does. No word spans ASCII whitespace, so the text is cut there and
/// each pure-ASCII piece takes a byte-level path with the same result; other pieces go through the full rules.
pub fn words(text: &str) -> impl Iterator<Item = &str> + '_ {
    text.split(|c: char| c.is_ascii_whitespace()).filter(|piece| !piece.is_empty()).flat_map(|piece| {
        if piece.is_ascii() {
            Pieces::Ascii(AsciiWords { bytes: piece.as_bytes(), text: piece, at: 0 })
        } else {
            Pieces::Unicode(piece.unicode_words())
        }
    })
}

enum Pieces<'a> {
    Ascii(AsciiWords<'a>),
    Unicode(unicode_segmentation::UnicodeWords<'a>),
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Pieces::Ascii(words) => words.next(),
            Pieces::Unicode(words) => words.next(),
        }
    }
}

#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// UAX #29 restricted to ASCII: letters, digits and `_` join; `:` `.` `'` join two letters (WB6/7);
/// `,` `;` `.` `'` join two digits (WB11/12); everything else breaks.
struct AsciiWords<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Iterator for AsciiWords<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let b = self.bytes;
        let n = b.len();
        loop {
            while self.at < n && !is_word_byte(b[self.at]) {
                self.at += 1;
            }
            if self.at >= n {
                return None;
            }
            let start = self.at;
            let mut i = start + 1;
            loop {
                if i < n && is_word_byte(b[i]) {
                    i += 1;
                    continue;
                }
                if i + 1 < n && is_word_byte(b[i + 1]) {
                    let (prev, mid, next) = (b[i - 1], b[i], b[i + 1]);
                    let letters = prev.is_ascii_alphabetic() && next.is_ascii_alphabetic() && matches!(mid, b':' | b'.' | b'\'');
                    let digits = prev.is_ascii_digit() && next.is_ascii_digit() && matches!(mid, b',' | b';' | b'.' | b'\'');
                    if letters || digits {
                        i += 2;
                        continue;
                    }
                }
                break;
            }
            self.at = i;
            if b[start..i].iter().any(u8::is_ascii_alphanumeric) {
                return Some(&self.text[start..i]);
            }
        }
    }
}

fn normalise(word: &str, lowercase: bool, ascii_fold: bool) -> String {
    let mut out = String::new();
    normalise_into(word, lowercase, ascii_fold, &mut out);
    out
}

/// Lowercase and (optionally) fold `word` into `out`.
pub(crate) fn normalise_into(word: &str, lowercase: bool, ascii_fold: bool, out: &mut String) {
    if word.is_ascii() {
        out.push_str(word);
        if lowercase {
            out.make_ascii_lowercase();
        }
        return;
    }
    let lowered: String = if lowercase { word.to_lowercase() } else { word.to_string() };
    if !ascii_fold {
        out.push_str(&lowered);
        return;
    }
    for ch in lowered.nfkd() {
        if is_combining_mark(ch) {
            continue;
        }
        match ch {
            'ß' => out.push_str("ss"),
            'æ' => out.push_str("ae"),
            'Æ' => out.push_str("AE"),
            'œ' => out.push_str("oe"),
            'Œ' => out.push_str("OE"),
            'ø' => out.push('o'),
            'Ø' => out.push('O'),
            'ł' => out.push('l'),
            'Ł' => out.push('L'),
            'đ' => out.push('d'),
            'Đ' => out.push('D'),
            'þ' => out.push_str("th"),
            'Þ' => out.push_str("TH"),
            'ı' => out.push('i'),
            _ => out.push(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> TokenizerConfig {
        TokenizerConfig { stopwords: vec![], stemmer: None, ..TokenizerConfig::default() }
    }

    #[test]
    fn segments_lowercases_and_folds() {
        let t = Tokenizer::new(plain()).unwrap();
        assert_eq!(t.tokenize("Crème Brûlée, STRASSE straße!"), vec!["creme", "brulee", "strasse", "strasse"]);
        assert_eq!(t.tokenize("don't stop 3.14"), vec!["don't", "stop", "3.14"]);
    }

    #[test]
    fn stopwords_and_stemming() {
        let t = Tokenizer::new(TokenizerConfig::default()).unwrap();
        assert_eq!(t.tokenize("The cats are running into the gardens"), vec!["cat", "run", "garden"]);
    }

    #[test]
    fn length_limits() {
        let t = Tokenizer::new(TokenizerConfig { min_token_len: 2, ..plain() }).unwrap();
        assert_eq!(t.tokenize("a bb ccc"), vec!["bb", "ccc"]);
    }

    #[test]
    fn chunked_and_plain_tokenization_agree() {
        let t = Tokenizer::new(TokenizerConfig::default()).unwrap();
        let texts: Vec<String> = (0..1200).map(|i| format!("Running runners ran {i} times; RUNNING the élan")).collect();
        let batch = t.tokenize_batch(&texts);
        assert_eq!(batch.len(), texts.len());
        for i in [0, 511, 512, 1199] {
            assert_eq!(batch[i], t.tokenize(&texts[i]));
        }
        assert_eq!(batch[3], vec!["run", "runner", "ran", "3", "time", "run", "elan"]);
    }

    proptest::proptest! {
        #[test]
        fn segmentation_matches_uax29(text in "[ab1_:.',; \\-\n\té’α中\u{301}]{0,40}") {
            let ours: Vec<&str> = words(&text).collect();
            let reference: Vec<&str> = text.unicode_words().collect();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn batch_keeps_order() {
        let t = Tokenizer::new(plain()).unwrap();
        let texts: Vec<String> = (0..100).map(|i| format!("word{i}")).collect();
        let out = t.tokenize_batch(&texts);
        assert_eq!(out[42], vec!["word42"]);
    }

    #[test]
    fn unknown_language_is_an_error_naming_the_choices() {
        let err = Tokenizer::new(TokenizerConfig { stemmer: Some("klingon".into()), ..plain() }).unwrap_err();
        assert!(err.to_string().contains("unknown stemmer language \"klingon\""));
        assert!(err.to_string().contains("english"));
    }
}
