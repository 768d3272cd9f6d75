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
    /// The first line holding every needle, preferring one whose key is the
    /// first needle (so `y` finds `y: ...`, not a line that merely contains a `y`).
    pub fn find(&self, needles: &[&str]) -> Option<usize> {
        let has_all = |t: &String| needles.iter().all(|n| t.contains(n));
        let keyed = needles.first().and_then(|first| {
            self.lines
                .iter()
                .position(|t| key_of(t) == Some(first.trim_end_matches(':')) && has_all(t))
        });
        keyed
            .or_else(|| self.lines.iter().position(has_all))
            .map(|i| i + 1)
    }
}

/// The first line where flow collections (`[`, `{`) nest deeper than `max`,
/// with the depth there. Skips quoted strings and comments; linear time.
pub fn flow_depth_over(source: &str, max: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut prev = ' ';
    for c in source.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        match (quote, c) {
            (Some('"'), '"') if prev != '\\' => quote = None,
            (Some('\''), '\'') => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                if depth > max {
                    return Some((line, depth));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// The text with the key on `line` (1-based) and the lines nested under it
/// commented out, keeping the line count; `None` if that line is not a
/// block-style key.
pub fn comment_out_block(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let first = *lines.get(line.checked_sub(1)?)?;
    key_of(first)?;
    let own = indent(first);
    let mut out = String::with_capacity(text.len() + 16);
    let mut inside = false;
    for (i, l) in lines.iter().enumerate() {
        if i + 1 == line {
            inside = true;
        } else if inside && is_content(l) && indent(l) <= own {
            inside = false;
        }
        if inside {
            out.push_str(&" ".repeat(indent(l)));
            out.push('#');
            out.push_str(l.trim_start());
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    Some(out)
}

impl LineIndex {
    /// Two lines holding `key:` at the same indentation in the same block,
    /// the first at or after line `from` (1-based): where a duplicate key is.
    pub fn same_key_twice(&self, from: usize, key: &str) -> Option<(usize, usize)> {
        let mut found: Option<(usize, usize)> = None;
        for i in from.checked_sub(1)?..self.lines.len() {
            let l = &self.lines[i];
            if !is_content(l) {
                continue;
            }
            if let Some((_, own)) = found
                && indent(l) < own
            {
                break;
            }
            if key_of(l) == Some(key) {
                match found {
                    None => found = Some((i + 1, indent(l))),
                    Some((first, own)) if indent(l) == own => return Some((first, i + 1)),
                    Some(_) => {}
                }
            }
        }
        None
    }
}
