//! Finds the line of a state, or of a key inside a state, in the config text,
//! so validation errors can point at it. serde does not keep positions, so
//! this reads the block-style YAML that configs are written in: the `states:`
//! key under `data:`, each state's key one level deeper, and each state's
//! lines up to the next state.

pub struct LineIndex {
    /// (state name, first line, last line), 1-based, in file order.
    states: Vec<(String, usize, usize)>,
    lines: Vec<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The key of a `key:` or `key: value` line, without quotes.
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.starts_with('-') {
        return None;
    }
    let key = t.split_once(':')?.0.trim();
    Some(key.trim_matches(|c| c == '"' || c == '\''))
}

impl LineIndex {
    pub fn new(source: &str) -> LineIndex {
        let lines: Vec<String> = source.lines().map(str::to_string).collect();
        let mut states = Vec::new();
        let mut data_indent = None;
        let mut states_indent = None;
        let mut state_indent = None;
        for (i, line) in lines.iter().enumerate() {
            if !is_content(line) {
                continue;
            }
            let ind = indent(line);
            match (data_indent, states_indent) {
                (None, _) if ind == 0 && key_of(line) == Some("data") => data_indent = Some(0),
                (Some(d), None) if ind > d && key_of(line) == Some("states") => {
                    states_indent = Some(ind)
                }
                (Some(_), Some(s)) => {
                    if ind <= s {
                        // Left the states block; close the last state.
                        states_indent = None;
                        if let Some(last) = states.last_mut() {
                            let (_, _, end): &mut (String, usize, usize) = last;
                            *end = i;
                        }
                        if ind == 0 {
                            data_indent = None;
                        }
                        continue;
                    }
                    let level = *state_indent.get_or_insert(ind);
                    if ind == level
                        && let Some(key) = key_of(line)
                    {
                        if let Some(last) = states.last_mut() {
                            let (_, _, end): &mut (String, usize, usize) = last;
                            *end = i;
                        }
                        states.push((key.to_string(), i + 1, lines.len()));
                    }
                }
                _ => {}
            }
        }
        LineIndex { states, lines }
    }

    /// The line where state `name` is declared.
    pub fn state(&self, name: &str) -> Option<usize> {
        self.states
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, start, _)| *start)
    }

    /// The state whose block contains `line`.
    pub fn state_at(&self, line: usize) -> Option<&str> {
        self.states
            .iter()
            .find(|(_, start, end)| (*start..=*end).contains(&line))
            .map(|(n, _, _)| n.as_str())
    }

    /// The first line in state `name` whose text contains all of `needles`
    /// (e.g. `["to:", "done"]`), else the state's own line.
    pub fn in_state(&self, name: &str, needles: &[&str]) -> Option<usize> {
        let (_, start, end) = self.states.iter().find(|(n, _, _)| n == name)?;
        (*start..=*end)
            .find(|&l| {
                self.lines
                    .get(l - 1)
                    .is_some_and(|text| needles.iter().all(|n| text.contains(n)))
            })
            .or(Some(*start))
    }

    /// The first line (1-based) containing all of `needles`, anywhere.
    pub fn find(&self, needles: &[&str]) -> Option<usize> {
        self.lines
            .iter()
            .position(|t| needles.iter().all(|n| t.contains(n)))
            .map(|i| i + 1)
    }
}
