//! Text rules of DSPy's `ChatAdapter` and `JSONAdapter`, byte for byte.
//!
//! The PyO3 binding (`dspyo3_native.ChatFormatter`) walks Python values and calls these for the text: JSON string
//! escaping as Python's `json.dumps(..., ensure_ascii=False)`, the numbered list of text blobs DSPy shows for a
//! list given to a `str` field, `str.strip()` with Python's idea of whitespace, and the split of a completion into
//! `[[ ## field ## ]]` sections as `ChatAdapter.parse` does it.
//!
//! ```
//! use dspyo3_kernels::adapter::{chat_sections, py_strip};
//!
//! let sections = chat_sections("[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]").unwrap();
//! assert_eq!(sections[1], (Some("answer".to_string()), "Paris".to_string()));
//! assert_eq!(py_strip("\x1c hi \n"), "hi");
//! ```

/// Whether Python's `str.isspace()` is true for `c`: Unicode `White_Space` plus the information separators
/// U+001C..U+001F, which Python also counts.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `text.strip()` as Python does it.
pub fn py_strip(text: &str) -> &str {
    text.trim_matches(py_isspace)
}

/// Appends `text` as a JSON string literal, escaped as Python's `json.dumps(text, ensure_ascii=False)` does:
/// `"` and `\`, the short escapes `\n \r \t \b \f`, other control characters below U+0020 as `\u00XX`
/// (lower-case hex), everything else as is.
pub fn push_json_str(out: &mut String, text: &str) {
    out.push('"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&text[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
            }
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// One text blob of a list, as DSPy's `_format_blob`: `«text»`, or an indented `«««` block when the text holds a
/// newline or a guillemet.
pub fn push_blob(out: &mut String, blob: &str) {
    if !blob.contains(['\n', '«', '»']) {
        out.push('«');
        out.push_str(blob);
        out.push('»');
        return;
    }
    out.push_str("«««\n    ");
    out.push_str(&blob.replace('\n', "\n    "));
    out.push_str("\n»»»");
}

/// A list of texts given to a `str` field, as DSPy's `_format_input_list_field_value`: `N/A` when empty, the one
/// blob alone, else `[1] «a»` lines.
pub fn format_text_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => "N/A".to_string(),
        [one] => {
            let mut out = String::new();
            push_blob(&mut out, one.as_ref());
            out
        }
        _ => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push('[');
                out.push_str(&(i + 1).to_string());
                out.push_str("] ");
                push_blob(&mut out, item.as_ref());
            }
            out
        }
    }
}

/// Line breaks `str.splitlines()` knows besides `\n`, `\r` and `\r\n`: a completion holding one is left to DSPy.
const RARE_BREAKS: [char; 7] = ['\u{0b}', '\u{0c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}'];

/// `[[ ## name ## ]]` at the start of `line` (already stripped): the name and the length of the marker.
fn header(line: &str) -> Option<(&str, usize)> {
    let rest = line.strip_prefix("[[ ## ")?;
    let end = rest.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))?;
    if end == 0 || !rest[end..].starts_with(" ## ]]") {
        return None;
    }
    Some((&rest[..end], 6 + end + 6))
}

/// The sections of a chat completion as `ChatAdapter.parse` builds them: a first section without header (None),
/// then one per `[[ ## name ## ]]` line, each text the lines joined with `\n` and stripped. A header's own line may
/// carry text after the marker, which starts its section. As in DSPy, that text is cut from the unstripped line at
/// the marker's length, so an indented header line keeps the marker's tail (`"  [[ ## a ## ]]"` starts with `]]`).
///
/// Returns None when the completion needs DSPy's own rules: a line break other than `\n`, `\r\n` or `\r`
/// (`str.splitlines()` splits on more), or a header-like line holding non-ASCII text (where Python's Unicode `\w`
/// decides).
pub fn chat_sections(completion: &str) -> Option<Vec<(Option<String>, String)>> {
    if completion.contains(RARE_BREAKS) || completion.contains('\u{2029}') {
        return None;
    }
    let mut sections: Vec<(Option<String>, Vec<&str>)> = vec![(None, Vec::new())];
    let mut rest = completion;
    while !rest.is_empty() {
        let (line, next) = match rest.find(['\n', '\r']) {
            Some(i) if rest[i..].starts_with("\r\n") => (&rest[..i], &rest[i + 2..]),
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let stripped = py_strip(line);
        if stripped.starts_with("[[ ## ") && !stripped.is_ascii() {
            return None;
        }
        match header(stripped) {
            Some((name, marker)) => {
                // DSPy slices the unstripped line at the end of the match in the stripped one (code points)
                let after = line.char_indices().nth(marker).map_or("", |(i, _)| &line[i..]);
                let after = py_strip(after);
                let lines = if after.is_empty() { Vec::new() } else { vec![after] };
                sections.push((Some(name.to_string()), lines));
            }
            None => {
                if let Some(last) = sections.last_mut() {
                    last.1.push(line);
                }
            }
        }
    }
    Some(sections.into_iter().map(|(name, lines)| (name, py_strip(&lines.join("\n")).to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> String {
        let mut out = String::new();
        push_json_str(&mut out, text);
        out
    }

    #[test]
    fn json_strings_escape_as_python() {
        assert_eq!(json("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(json("\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(json("é ✓ \u{7f}"), "\"é ✓ \u{7f}\"");
    }

    #[test]
    fn lists_of_text_are_numbered_blobs() {
        assert_eq!(format_text_list::<&str>(&[]), "N/A");
        assert_eq!(format_text_list(&["one"]), "«one»");
        assert_eq!(format_text_list(&["a", "b\nc"]), "[1] «a»\n[2] «««\n    b\n    c\n»»»");
        assert_eq!(format_text_list(&["«x»"]), "«««\n    «x»\n»»»");
    }

    #[test]
    fn sections_follow_chat_adapter_parse() {
        let got = chat_sections("intro\n[[ ## a ## ]] inline\nmore\r\n\r\n  [[ ## b ## ]]\n x \n[[ ## a ## ]]\nagain")
            .unwrap();
        assert_eq!(
            got,
            vec![
                (None, "intro".to_string()),
                (Some("a".to_string()), "inline\nmore".to_string()),
                (Some("b".to_string()), "]]\n x".to_string()),
                (Some("a".to_string()), "again".to_string()),
            ]
        );
        assert_eq!(chat_sections("").unwrap(), vec![(None, String::new())]);
        assert_eq!(chat_sections("[[ ## a-b ## ]]").unwrap(), vec![(None, "[[ ## a-b ## ]]".to_string())]);
    }

    #[test]
    fn unusual_breaks_and_unicode_headers_are_left_to_dspy() {
        assert!(chat_sections("a\u{2028}b").is_none());
        assert!(chat_sections("a\u{b}b").is_none());
        assert!(chat_sections("[[ ## é ## ]]").is_none());
        assert!(chat_sections("é\n[[ ## a ## ]]\nü").is_some());
    }

    #[test]
    fn strip_uses_python_whitespace() {
        assert_eq!(py_strip("\u{1f}\u{a0}x\u{3000}"), "x");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x");
    }
}
