//! `count-words`: the mapper of the MapReduce example. Input: a document,
//! as text or `{"text": "..."}`; output: `{"word": count, ...}` for its
//! words (letters, digits and apostrophes, lowercased), keys in order.

use flowhost_sdk::{Error, Meta, Value};
use std::collections::BTreeMap;

pub fn count_words(_meta: &Meta, input: Value) -> Result<Value, Error> {
    let text = match &input {
        Value::String(t) => t.as_str(),
        Value::Object(m) => m.get("text").and_then(Value::as_str).ok_or_else(|| {
            Error::invalid_input("input: expected a text, or {\"text\": \"...\"}")
        })?,
        other => {
            return Err(Error::invalid_input(format!(
                "input: expected a text, or {{\"text\": \"...\"}}, not {other}"
            )));
        }
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    Ok(serde_json::to_value(counts).unwrap_or_default())
}

flowhost_sdk::processor!(
    count_words,
    description = "The words of a document and how often each occurs"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::json;

    #[test]
    fn words_are_counted_lowercased_without_punctuation() {
        let out = count_words(&Meta::test(), json!("The cat, the hat. Don't!")).unwrap();
        assert_eq!(out, json!({"cat": 1, "don't": 1, "hat": 1, "the": 2}));
        let out = count_words(&Meta::test(), json!({"text": "a a"})).unwrap();
        assert_eq!(out, json!({"a": 2}));
        assert!(count_words(&Meta::test(), json!(3)).is_err());
    }
}
