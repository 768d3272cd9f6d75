//! `sum-counts`: the reducer of the MapReduce example. Input: a list of
//! `{"word": count}` maps (the mapper's outputs); output:
//! `{"words": {word: total}, "total": n, "top": [[word, total], ...]}` with
//! the ten most frequent words (ties by word).

use flowhost_sdk::{Error, Meta, Value, json};
use std::collections::BTreeMap;

pub fn sum_counts(_meta: &Meta, input: Value) -> Result<Value, Error> {
    let Value::Array(parts) = input else {
        return Err(Error::invalid_input(
            "input: expected a list of {\"word\": count} maps",
        ));
    };
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(counts) = part else {
            return Err(Error::invalid_input(format!(
                "input[{i}]: expected a {{\"word\": count}} map"
            )));
        };
        for (word, n) in counts {
            let n = n.as_u64().ok_or_else(|| {
                Error::invalid_input(format!("input[{i}].{word}: expected a count"))
            })?;
            *words.entry(word.clone()).or_default() += n;
        }
    }
    let total: u64 = words.values().sum();
    let mut top: Vec<(&String, &u64)> = words.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.truncate(10);
    Ok(json!({"words": words, "total": total, "top": top}))
}

flowhost_sdk::processor!(
    sum_counts,
    description = "Word counts added up over many documents"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_the_top_words_come_first() {
        let out = sum_counts(
            &Meta::test(),
            json!([{"a": 2, "b": 1}, {"b": 3, "c": 1}, {}]),
        )
        .unwrap();
        assert_eq!(out["words"], json!({"a": 2, "b": 4, "c": 1}));
        assert_eq!(out["total"], 7);
        assert_eq!(out["top"], json!([["b", 4], ["a", 2], ["c", 1]]));
        assert!(sum_counts(&Meta::test(), json!({"a": 1})).is_err());
        assert!(sum_counts(&Meta::test(), json!([{"a": "x"}])).is_err());
    }
}
