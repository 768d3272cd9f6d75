//! `moderate`: deterministic content checks for the content-moderation
//! example, standing in for the classifiers a real deployment would call.
//!
//! Input: `{"check": "spam" | "pii", "text": "..."}`.
//!
//! - `spam` scores the text from 0 to 1 by signals (links, shouting,
//!   exclamation runs, sales phrases) and returns
//!   `{"check": "spam", "score": s, "signals": [..]}`.
//! - `pii` finds e-mail addresses and phone/card-like digit runs and returns
//!   `{"check": "pii", "found": [{"kind", "at"}], "redacted": "..."}` with
//!   each finding replaced by `[kind]`.

use flowhost_sdk::{Error, Meta, Value, json};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    check: String,
    text: String,
}

/// Phrases that sell.
const SALES: &[&str] = &[
    "free money",
    "buy now",
    "click here",
    "limited offer",
    "act now",
    "winner",
    "100% free",
    "risk-free",
    "cheap",
];

pub fn moderate(_meta: &Meta, input: Value) -> Result<Value, Error> {
    let input: Input = serde_json::from_value(input).map_err(|e| {
        Error::invalid_input(format!(
            "input: {e} (expected {{\"check\": \"spam\"|\"pii\", \"text\": \"...\"}})"
        ))
    })?;
    match input.check.as_str() {
        "spam" => Ok(spam(&input.text)),
        "pii" => Ok(pii(&input.text)),
        other => Err(Error::invalid_input(format!(
            "input.check: unknown check `{other}` (expected `spam` or `pii`)"
        ))),
    }
}

fn spam(text: &str) -> Value {
    let lower = text.to_lowercase();
    let mut signals = Vec::new();
    let links = lower.matches("http://").count() + lower.matches("https://").count();
    if links > 0 {
        signals.push(format!("{links} link(s)"));
    }
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    let upper = letters.iter().filter(|c| c.is_uppercase()).count();
    let shouting = letters.len() >= 12 && upper * 2 > letters.len();
    if shouting {
        signals.push("mostly capitals".to_string());
    }
    let exclaim = text.contains("!!!");
    if exclaim {
        signals.push("!!!".to_string());
    }
    let sales: Vec<&str> = SALES
        .iter()
        .copied()
        .filter(|p| lower.contains(p))
        .collect();
    for phrase in &sales {
        signals.push(format!("\"{phrase}\""));
    }
    let score = 0.3 * links.min(2) as f64
        + 0.2 * shouting as u8 as f64
        + 0.1 * exclaim as u8 as f64
        + 0.25 * sales.len().min(3) as f64;
    let score = (score.min(1.0) * 100.0).round() / 100.0;
    json!({"check": "spam", "score": score, "signals": signals})
}

fn pii(text: &str) -> Value {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut redacted = String::new();
    let mut i = 0;
    while i < chars.len() {
        if let Some((kind, end)) = email_at(&chars, i).or_else(|| digits_at(&chars, i)) {
            found.push(json!({"kind": kind, "at": i}));
            redacted.push_str(&format!("[{kind}]"));
            i = end;
        } else {
            redacted.push(chars[i]);
            i += 1;
        }
    }
    json!({"check": "pii", "found": found, "redacted": redacted})
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

/// An e-mail address starting at `i`: `local@domain.tld`.
fn email_at(chars: &[char], i: usize) -> Option<(&'static str, usize)> {
    if i > 0 && word_char(chars[i - 1]) {
        return None;
    }
    let local = chars[i..].iter().take_while(|c| word_char(**c)).count();
    let at = i + local;
    if local == 0 || chars.get(at) != Some(&'@') {
        return None;
    }
    let domain = chars[at + 1..]
        .iter()
        .take_while(|c| word_char(**c))
        .count();
    let mut end = at + 1 + domain;
    // A trailing full stop ends the sentence, not the domain.
    while end > at + 1 && chars[end - 1] == '.' {
        end -= 1;
    }
    let host: String = chars[at + 1..end].iter().collect();
    let dot = host.rfind('.')?;
    (dot > 0 && host.len() - dot > 2).then_some(("email", end))
}

/// A phone or card number starting at `i`: 9 or more digits, with spaces,
/// dashes, dots or brackets between them (and an optional leading `+`).
fn digits_at(chars: &[char], i: usize) -> Option<(&'static str, usize)> {
    let starts = chars[i].is_ascii_digit() || (chars[i] == '+' || chars[i] == '(');
    if !starts || (i > 0 && chars[i - 1].is_alphanumeric()) {
        return None;
    }
    let mut digits = 0;
    let mut end = i;
    for (j, c) in chars.iter().enumerate().skip(i) {
        if c.is_ascii_digit() {
            digits += 1;
            end = j + 1;
        } else if !matches!(c, ' ' | '-' | '.' | '(' | ')' | '+') || j > end + 1 {
            break;
        }
    }
    match digits {
        13..=19 => Some(("card", end)),
        9..=12 => Some(("phone", end)),
        _ => None,
    }
}

flowhost_sdk::processor!(
    moderate,
    description = "Spam score and personal-data findings for a text"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(check: &str, text: &str) -> Value {
        moderate(&Meta::test(), json!({"check": check, "text": text})).unwrap()
    }

    #[test]
    fn plain_text_is_not_spam() {
        let v = check("spam", "Thanks for the quick reply, see you on Monday.");
        assert_eq!(v["score"], 0.0);
        assert_eq!(v["signals"], json!([]));
    }

    #[test]
    fn sales_links_and_shouting_add_up() {
        let v = check(
            "spam",
            "WINNER!!! CLICK HERE FOR FREE MONEY https://x.example https://y.example",
        );
        assert_eq!(v["score"], 1.0);
        assert!(v["signals"].as_array().unwrap().len() >= 5, "{v}");
    }

    #[test]
    fn emails_phones_and_cards_are_found_and_redacted() {
        let v = check(
            "pii",
            "Mail ann.lee@example.org. or call +44 20 7946 0958; card 4111 1111 1111 1111.",
        );
        let kinds: Vec<&str> = v["found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["email", "phone", "card"]);
        assert_eq!(v["redacted"], "Mail [email]. or call [phone]; card [card].");
    }

    #[test]
    fn short_numbers_and_at_signs_are_not_pii() {
        let v = check("pii", "Meet @ 10:30 in room 4021, order #12345.");
        assert_eq!(v["found"], json!([]));
    }

    #[test]
    fn unknown_checks_and_bad_input_are_invalid_input() {
        let err = moderate(&Meta::test(), json!({"check": "tone", "text": ""})).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(m) if m.contains("tone")));
        let err = moderate(&Meta::test(), json!({"text": 3})).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }
}
