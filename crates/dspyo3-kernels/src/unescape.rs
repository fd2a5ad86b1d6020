//! HTML character references decoded with the rules of Python's `html.unescape` (HTML5 tokenizer rules).
//!
//! A reference is `&` followed by one of:
//!
//! * `#` and decimal digits, an optional `;`;
//! * `#x` / `#X` and hexadecimal digits, an optional `;`;
//! * 1 to 32 characters other than tab, newline, form feed, space, `<`, `&`, `#`, `;`, then an optional `;`.
//!
//! Numbers decode to their character except: the code points HTML5 reads as windows-1252 (0x80..=0x9F), NUL
//! (U+FFFD) and CR (kept); surrogates and numbers past U+10FFFF become U+FFFD; other control characters and
//! noncharacters are dropped. A name decodes through the table given at construction (Python passes
//! `html.entities.html5`); a name not in it decodes as its longest proper prefix of two or more characters that is
//! in the table, the rest kept as text (`&ampx` -> `&x`); else the reference stays as written.
//!
//! The work is one pass with no backtracking: linear in the text whatever it holds (a number of a million digits
//! is read as "out of range" from its length, with no big-number arithmetic).

use std::borrow::Cow;
use std::collections::HashMap;

use rustc_hash::FxHashMap;

/// A name is at most this many characters (the `;` not counted), as in `html.unescape`.
const MAX_NAME_CHARS: usize = 32;
/// Past this many significant decimal digits a number is out of range (the last code point has 7).
const MAX_DECIMAL_DIGITS: usize = 7;
/// Past this many significant hexadecimal digits a number is out of range (the last code point has 6).
const MAX_HEX_DIGITS: usize = 6;
const LAST_CODE_POINT: u32 = 0x10FFFF;

/// What HTML5 reads 0x80..=0x9F as in a numeric reference (windows-1252; the five unassigned bytes stay as
/// the C1 control of the same number).
const WINDOWS_1252: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2C6}',
    '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}',
    '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}',
    '\u{153}', '\u{9D}', '\u{17E}', '\u{178}',
];

/// What a numeric reference to `number` decodes to (`None`: nothing, the reference is dropped).
/// Numbers past [`LAST_CODE_POINT`] are passed as `LAST_CODE_POINT + 1`.
fn code_point(number: u32) -> Option<char> {
    match number {
        0 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => Some(WINDOWS_1252[(number - 0x80) as usize]),
        0xD800..=0xDFFF => Some('\u{FFFD}'),
        n if n > LAST_CODE_POINT => Some('\u{FFFD}'),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => None,
        n if n & 0xFFFE == 0xFFFE => None, // U+FFFE and U+FFFF of every plane
        n => char::from_u32(n),
    }
}

/// The value of the digits `digits` in `radix`, or `LAST_CODE_POINT + 1` when it is past the last code point.
fn number(digits: &[u8], radix: u32, max_digits: usize) -> u32 {
    let start = digits.iter().position(|&d| d != b'0').unwrap_or(digits.len());
    let significant = &digits[start..];
    if significant.len() > max_digits {
        return LAST_CODE_POINT + 1;
    }
    let value = significant.iter().fold(0u32, |acc, &d| acc * radix + (d as char).to_digit(radix).unwrap_or(0));
    value.min(LAST_CODE_POINT + 1)
}

/// Is `byte` one that cannot be part of a name (tab, newline, form feed, space, `<`, `&`, `#`, `;`)?
fn ends_name(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0C | b' ' | b'<' | b'&' | b'#' | b';')
}

/// Is `byte` a UTF-8 continuation byte (not the first byte of a character)?
fn continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// Decodes HTML character references with a table of named references built once.
#[derive(Debug, Clone)]
pub struct Unescaper {
    named: FxHashMap<Box<[u8]>, Box<str>>,
    /// Byte length of the longest name with no `;` (only those can be a proper prefix of a reference).
    longest_prefix: usize,
}

impl Unescaper {
    /// An unescaper for the named references `named` (name as written after `&`, with its `;` if it has one ->
    /// replacement text), e.g. the items of Python's `html.entities.html5`.
    pub fn new<I, K, V>(named: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let named: FxHashMap<Box<[u8]>, Box<str>> =
            named.into_iter().map(|(k, v)| (k.as_ref().as_bytes().into(), v.as_ref().into())).collect();
        let longest_prefix = named.keys().filter(|k| !k.contains(&b';')).map(|k| k.len()).max().unwrap_or(0);
        Unescaper { named, longest_prefix }
    }

    /// Number of named references in the table.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Is the table of named references empty?
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// `text` with its character references decoded (borrowed when it has no `&`).
    pub fn unescape<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.unescape_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Only whole references (delimited by ASCII bytes) were replaced, by UTF-8 text: still UTF-8.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).expect("references replaced by UTF-8 text")),
        }
    }

    /// The same on UTF-8 bytes, or on the "generalised UTF-8" Python writes for a `str` holding lone surrogates
    /// (`encode("utf-8", "surrogatepass")`): each encoded surrogate counts as one character, as in Python.
    pub fn unescape_bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(first) = text.iter().position(|&b| b == b'&') else {
            return Cow::Borrowed(text);
        };
        let mut out = Vec::with_capacity(text.len());
        let mut copied = 0; // text[..copied] is in `out`
        let mut at = first;
        loop {
            if let Some(end) = self.reference(text, at, &mut out, copied) {
                copied = end;
                at = end;
            } else {
                at += 1;
            }
            match text[at..].iter().position(|&b| b == b'&') {
                Some(offset) => at += offset,
                None => break,
            }
        }
        out.extend_from_slice(&text[copied..]);
        Cow::Owned(out)
    }

    /// If a reference starts at `text[at]` (an `&`): write `text[copied..at]` then its decoding to `out` and
    /// return where it ends.
    fn reference(&self, text: &[u8], at: usize, out: &mut Vec<u8>, copied: usize) -> Option<usize> {
        let body = at + 1;
        let byte = |i: usize| text.get(i).copied();
        if byte(body) == Some(b'#') {
            let (radix, digits_at, max_digits) = match byte(body + 1) {
                Some(b'x' | b'X') => (16, body + 2, MAX_HEX_DIGITS),
                _ => (10, body + 1, MAX_DECIMAL_DIGITS),
            };
            let digits_end = digits_at
                + text[digits_at.min(text.len())..]
                    .iter()
                    .take_while(|&&b| if radix == 16 { b.is_ascii_hexdigit() } else { b.is_ascii_digit() })
                    .count();
            if digits_end == digits_at {
                return None; // "&#", "&#x", "&#;": text
            }
            let end = if byte(digits_end) == Some(b';') { digits_end + 1 } else { digits_end };
            out.extend_from_slice(&text[copied..at]);
            if let Some(c) = code_point(number(&text[digits_at..digits_end], radix, max_digits)) {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            return Some(end);
        }
        // A name: up to MAX_NAME_CHARS characters (a character is a first byte and its continuation bytes).
        let mut end = body;
        let mut chars = 0;
        while let Some(b) = byte(end) {
            if !continuation(b) {
                if ends_name(b) || chars == MAX_NAME_CHARS {
                    break;
                }
                chars += 1;
            }
            end += 1;
        }
        if chars == 0 {
            return None;
        }
        if byte(end) == Some(b';') {
            end += 1;
        }
        out.extend_from_slice(&text[copied..at]);
        let name = &text[body..end];
        if let Some(value) = self.named.get(name) {
            out.extend_from_slice(value.as_bytes());
            return Some(end);
        }
        // The longest proper prefix of two or more characters in the table. Such a prefix has no ";" (a name's
        // only ";" is its last byte), so it is no longer than the longest name without one.
        let mut prefix = (name.len() - 1).min(self.longest_prefix);
        while prefix >= 2 {
            if !continuation(name[prefix]) && name[..prefix].iter().filter(|&&b| !continuation(b)).count() >= 2 {
                if let Some(value) = self.named.get(&name[..prefix]) {
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(&name[prefix..]);
                    return Some(end);
                }
            }
            prefix -= 1;
        }
        out.extend_from_slice(&text[at..end]);
        Some(end)
    }
}

/// `text` with its character references decoded as Python's `html.unescape` does, `named` being the table of
/// named references (see [`Unescaper`]; build one `Unescaper` to decode many texts with the same table).
pub fn unescape_html(text: &str, named: &HashMap<String, String>) -> String {
    Unescaper::new(named).unescape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Unescaper {
        Unescaper::new([
            ("amp", "&"),
            ("amp;", "&"),
            ("lt", "<"),
            ("lt;", "<"),
            ("not", "\u{AC}"),
            ("not;", "\u{AC}"),
            ("notin;", "\u{2209}"),
            ("eacute", "\u{E9}"),
            ("eacute;", "\u{E9}"),
            ("frac34", "\u{BE}"),
            ("NotEqualTilde;", "\u{2242}\u{338}"),
        ])
    }

    fn u(text: &str) -> String {
        table().unescape(text).into_owned()
    }

    #[test]
    fn text_without_ampersand_is_borrowed() {
        assert!(matches!(table().unescape("plain text"), Cow::Borrowed(_)));
        assert_eq!(u(""), "");
    }

    #[test]
    fn decimal_and_hex_references() {
        assert_eq!(u("&#65;&#x42;&#X43;&#0000068;&#x0045"), "ABCDE");
        assert_eq!(u("a&#233;b&#xe9c"), "a\u{E9}b\u{E9C}");
        assert_eq!(u("&#128512;"), "\u{1F600}");
    }

    #[test]
    fn references_without_digits_stay_text() {
        assert_eq!(u("&# &#x &#; &#xg; & &&"), "&# &#x &#; &#xg; & &&");
        assert_eq!(u("&"), "&");
        assert_eq!(u("x&#"), "x&#");
    }

    #[test]
    fn invalid_numbers_follow_html5() {
        assert_eq!(u("&#0;"), "\u{FFFD}");
        assert_eq!(u("&#13;"), "\r");
        assert_eq!(u("&#x80;&#x81;&#x9f;"), "\u{20AC}\u{81}\u{178}");
        assert_eq!(u("&#xD800;&#xDFFF;"), "\u{FFFD}\u{FFFD}");
        assert_eq!(u("&#x110000;&#99999999999999999999;"), "\u{FFFD}\u{FFFD}");
        assert_eq!(u("a&#1;&#8;&#11;&#14;&#x1f;&#x7f;&#xFDD0;&#xFFFE;&#x10FFFF;b"), "ab");
        assert_eq!(u("&#9;&#10;&#12;&#32;&#x10FFFD;"), "\t\n\x0C \u{10FFFD}");
    }

    #[test]
    fn a_number_of_a_million_digits_is_out_of_range() {
        let text = format!("&#{};", "9".repeat(1_000_000));
        assert_eq!(u(&text), "\u{FFFD}");
        let zeros = format!("&#x{}41", "0".repeat(1_000_000));
        assert_eq!(u(&zeros), "A");
    }

    #[test]
    fn named_references_with_and_without_semicolon() {
        assert_eq!(u("&amp;&lt;&amp&lt x"), "&<&< x");
        assert_eq!(u("&eacute;t&eacute"), "\u{E9}t\u{E9}");
        assert_eq!(u("&NotEqualTilde;"), "\u{2242}\u{338}");
    }

    #[test]
    fn longest_prefix_rule_for_unknown_names() {
        assert_eq!(u("&ampx"), "&x");
        assert_eq!(u("&ampx;"), "&x;");
        assert_eq!(u("&notit;"), "\u{AC}it;");
        assert_eq!(u("&notin;"), "\u{2209}");
        assert_eq!(u("&notin"), "\u{AC}in"); // "notin" has no legacy form without ";"
        assert_eq!(u("&frac345"), "\u{BE}5");
        assert_eq!(u("&unknown;"), "&unknown;");
        assert_eq!(u("&a"), "&a");
        assert_eq!(u("&lt\u{E9}x"), "<\u{E9}x");
    }

    #[test]
    fn names_are_at_most_32_characters() {
        let long = format!("&amp{};", "z".repeat(40));
        // The name is "amp" + 29 "z"; no ";" follows it, so the rest is text.
        assert_eq!(u(&long), format!("&{}", &long[4..]));
        let accents = format!("&{}", "\u{E9}".repeat(40));
        assert_eq!(u(&accents), accents);
    }

    #[test]
    fn name_stops_at_delimiters() {
        assert_eq!(u("&amp\tx&lt\nx&lt<x&lt#x&lt&ltx"), "&\tx<\nx<<x<#x<<x");
        assert_eq!(u("&\r;"), "&\r;");
    }

    #[test]
    fn surrogate_bytes_count_as_one_character() {
        // "&lt" then an encoded lone surrogate (as Python's surrogatepass writes it).
        let text = b"&lt\xED\xA0\x80;";
        assert_eq!(table().unescape_bytes(text).as_ref(), b"<\xED\xA0\x80;");
    }

    #[test]
    fn function_form_uses_the_given_table() {
        let named: HashMap<String, String> = [("hello;".to_string(), "hi".to_string())].into();
        assert_eq!(unescape_html("&hello; &amp;", &named), "hi &amp;");
    }

    #[test]
    fn empty_table_decodes_numbers_only() {
        let empty = Unescaper::new(Vec::<(String, String)>::new());
        assert!(empty.is_empty());
        assert_eq!(empty.unescape("&amp;&#65;"), "&amp;A");
        assert_eq!(table().len(), 11);
    }
}
