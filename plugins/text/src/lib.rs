//! `text`: deterministic text tasks that stand in for the seed configs' LLM agents.
//!
//! Input: `{"task": "...", "text": ...}` (`data` is accepted in place of
//! `text`; a non-string value is flattened to text). The task is picked from
//! the `task` string by keyword, so seed prompts like "Summarize the data"
//! work unchanged:
//!
//! | keyword in `task`          | result                                       |
//! |----------------------------|----------------------------------------------|
//! | `uppercase` / `lowercase`  | the text in that case                        |
//! | `word count`, `count words`, `word_count` | the number of words           |
//! | `summar`                   | the first `max_sentences` sentences (config, default 1) |
//! | `list`                     | the sentences / lines / comma items as a list |
//! | `write`                    | a short paragraph about the text             |
//!
//! Output: `{"task": "<kind>", "result": ...}`.

use flowhost_sdk::{Error, Meta, Value, host, json};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    max_sentences: Option<usize>,
    /// The task when the input names none (e.g. an agent that only extracts).
    #[serde(default)]
    task: Option<String>,
}

pub fn run(_meta: &Meta, input: Input) -> Result<Value, Error> {
    let config: Config = host::config_as()?;
    let text = flatten(input.text.or(input.data).unwrap_or(Value::Null));
    let Some(task_text) = input.task.or(config.task) else {
        return Err(Error::invalid_input(
            "input: missing field `task` (and the plugin config names no default `task`)",
        ));
    };
    let task = task_text.to_lowercase();
    let (kind, result) = if task.contains("extract") {
        ("extract", extract(&text))
    } else if task.contains("uppercase") {
        ("uppercase", json!(text.to_uppercase()))
    } else if task.contains("lowercase") {
        ("lowercase", json!(text.to_lowercase()))
    } else if ["word count", "count words", "word_count", "count the words"]
        .iter()
        .any(|k| task.contains(k))
    {
        ("word_count", json!(text.split_whitespace().count()))
    } else if task.contains("summar") {
        let n = config.max_sentences.unwrap_or(1).max(1);
        (
            "summarize",
            json!(
                sentences(&text)
                    .into_iter()
                    .take(n)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
    } else if task.contains("list") {
        ("list", json!(items(&text)))
    } else if task.contains("write") {
        ("write", json!(write_about(&task_text, &text)))
    } else {
        return Err(Error::invalid_input(format!(
            "unknown task `{task_text}`: expected one of uppercase, lowercase, word count, summarize, list, write, extract"
        )));
    };
    host::debug(format!("text task {kind}"));
    // `content` is the result as text, as an LLM agent's output would carry it.
    let content = flatten(result.clone());
    Ok(json!({"task": kind, "result": result, "content": content}))
}

/// `{"result": x}` inside the text (as JSON) gives x; otherwise the text itself.
fn extract(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(mut m)) if m.contains_key("result") => {
            m.remove("result").unwrap_or(Value::Null)
        }
        _ => json!(text.trim()),
    }
}

/// Turns any JSON value into text: strings as they are, lists one item per line.
fn flatten(value: Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s,
        Value::Array(items) => items
            .into_iter()
            .map(flatten)
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Splits text into sentences ending in `.`, `!` or `?` (the rest counts as one).
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if matches!(ch, '.' | '!' | '?') {
            push_trimmed(&mut out, &current);
            current.clear();
        }
    }
    push_trimmed(&mut out, &current);
    out
}

fn push_trimmed(out: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
}

/// Lines if there are several, else sentences if there are several, else comma items.
fn items(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        push_trimmed(&mut lines, line.trim_start_matches(['-', '*', ' ']));
    }
    if lines.len() > 1 {
        return lines;
    }
    let s = sentences(text);
    if s.len() > 1 {
        return s;
    }
    let mut parts = Vec::new();
    for part in text.split(',') {
        push_trimmed(&mut parts, part);
    }
    parts
}

fn write_about(task: &str, text: &str) -> String {
    let words = text.split_whitespace().count();
    let first = sentences(text).into_iter().next().unwrap_or_default();
    if first.is_empty() {
        format!("{task}: there is nothing to write about.")
    } else {
        format!("{task}: {first} ({words} words of source material.)")
    }
}

flowhost_sdk::processor!(
    run,
    description =
        "Deterministic text tasks by keyword: uppercase, word count, summarize, list, write"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::testing::FakeHost;

    fn call(input: Value) -> Result<Value, Error> {
        run(&Meta::test(), serde_json::from_value(input).unwrap())
    }

    #[test]
    fn summarize_takes_first_sentences() {
        let out = call(json!({"task": "Summarize this", "text": "One. Two! Three?"})).unwrap();
        assert_eq!(
            out,
            json!({"task": "summarize", "result": "One.", "content": "One."})
        );
        let _h = FakeHost::new()
            .config(json!({"max_sentences": 2}))
            .install();
        let out = call(json!({"task": "summarize", "data": "One. Two! Three?"})).unwrap();
        assert_eq!(out["result"], "One. Two!");
    }

    #[test]
    fn list_prefers_lines_then_sentences_then_commas() {
        assert_eq!(
            call(json!({"task": "list", "text": "- a\n- b"})).unwrap()["result"],
            json!(["a", "b"])
        );
        assert_eq!(
            call(json!({"task": "list", "text": "A. B."})).unwrap()["result"],
            json!(["A.", "B."])
        );
        assert_eq!(
            call(json!({"task": "list", "text": "a, b,c"})).unwrap()["result"],
            json!(["a", "b", "c"])
        );
    }

    #[test]
    fn word_count_and_case() {
        assert_eq!(
            call(json!({"task": "word count", "text": " a b  c "})).unwrap()["result"],
            3
        );
        assert_eq!(
            call(json!({"task": "uppercase", "text": "Straße"})).unwrap()["result"],
            "STRASSE"
        );
    }

    #[test]
    fn data_lists_are_flattened() {
        let out = call(json!({"task": "count words", "data": ["a b", "c"]})).unwrap();
        assert_eq!(out["result"], 3);
    }

    #[test]
    fn unknown_task_is_invalid_input() {
        let err = call(json!({"task": "dance", "text": "x"})).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(m) if m.contains("dance")));
    }

    #[test]
    fn bad_config_is_invalid_input() {
        let _h = FakeHost::new()
            .config(json!({"max_sentences": "two"}))
            .install();
        let err = call(json!({"task": "summarize", "text": "x"})).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(m) if m.contains("config")));
    }
}
