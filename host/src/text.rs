//! Small text helpers shared by modules: "did you mean" suggestions, and
//! escaping text from outside (plugins) before it reaches a terminal or a log.

use std::borrow::Cow;

/// Escapes what could steer a terminal or forge a line: control characters
/// (ANSI/OSC escape sequences start with ESC; CR and LF would start a fake
/// `error:` line) and the invisible Unicode formatting characters that reorder
/// text (bidi overrides and isolates). Tab stays. `\n` becomes the two
/// characters `\n`, ESC becomes `\u{1b}`, and so on. Applied where guest text
/// enters the host (error messages, log lines, stdout/stderr, progress notes).
pub fn escape_control(text: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The candidate closest to `word` by edit distance, if it is close enough to
/// be a likely typo.
pub fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= c.len().max(word.len()).div_ceil(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let words = vec![
            "transitions".to_string(),
            "output".to_string(),
            "echo".to_string(),
        ];
        assert_eq!(closest("trnsitions", &words), Some("transitions"));
        assert_eq!(closest("ecoh", &words), Some("echo"));
        assert_eq!(closest("zzzzzz", &words), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        let hostile = "x\u{1b}[2J\r\nerror: fake\u{7}\u{202e}";
        let safe = escape_control(hostile);
        assert_eq!(safe, "x\\u{1b}[2J\\r\\nerror: fake\\u{7}\\u{202e}");
        assert!(!safe.chars().any(|c| c.is_control()));
        assert!(matches!(escape_control("plain\ttext é"), Cow::Borrowed(_)));
    }
}
