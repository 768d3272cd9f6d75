//! Small text helpers shared by modules: "did you mean" suggestions.

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
}
