//! Templates and conditions of machine configs: minijinja (Jinja2 semantics)
//! with the rendering rules flowhost promises, which fix FlatMachines' worst
//! template defect (everything became a string):
//!
//! - A string that is exactly one `{{ expr }}` renders to the expression's
//!   **native JSON value** (list, number, object, ...), so
//!   `foreach: "{{ context.tasks }}"` yields a list.
//! - Any other string with `{{` or `{%` renders to text; lists and maps inside
//!   it print as JSON.
//! - A bare path without braces (`context.tasks`, `input.x`, `output.y.z`)
//!   resolves natively, as in FlatMachines.
//! - Any other string is a literal. Maps and lists render element by element;
//!   numbers, booleans and null stay as they are.
//! - A condition is an expression (`context.n > 2 and "x" in context.tags`,
//!   `context.items | length > 0`); empty means true. `None`, `none` and
//!   `null` all mean null. A missing key is undefined (Jinja's rule): it is
//!   falsy and `default(...)` replaces it, but it is not `== None`; that is
//!   true only for a key that holds null (which `output_to_context` writes
//!   when a rendered value is missing).
//!
//! Filters beyond Jinja's own: `fromjson` (text → value) and `tojson`.
//! Evaluation is bounded by minijinja's fuel, so a runaway template (a loop
//! over a huge range) fails with an error instead of hanging the host.
//!
//! Imports nothing else from flowhost.

use minijinja::value::{Serde, Value as JinjaValue};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Instructions one template or condition may execute.
const FUEL: u64 = 1_000_000;

/// A template or condition that could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("template `{template}`: {message}")]
    Template { template: String, message: String },
    #[error("condition `{condition}`: {message}")]
    Condition { condition: String, message: String },
}

/// The template engine. Build one and share it.
pub struct Expressions {
    env: Environment<'static>,
}

impl Default for Expressions {
    fn default() -> Self {
        Self::new()
    }
}

/// How a string in a config is treated.
#[derive(Debug, PartialEq)]
enum Form<'a> {
    /// `{{ expr }}` alone: the native value of `expr`.
    Expression(&'a str),
    /// Text with template syntax: rendered to a string.
    Text,
    /// `context.a.b` or `{{ a.b }}` (with its expression text): looked up
    /// natively when the first name is a variable.
    Path(Vec<&'a str>, Option<&'a str>),
    /// Anything else.
    Literal,
}

fn classify(s: &str) -> Form<'_> {
    let t = s.trim();
    if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        let inner = inner.strip_prefix('-').unwrap_or(inner);
        let inner = inner.strip_suffix('-').unwrap_or(inner);
        if !inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%") {
            let inner = inner.trim();
            // `{{ a.b.c }}` is a plain lookup: resolved natively, without the
            // template engine (the same value, much faster).
            let parts: Vec<&str> = inner.split('.').collect();
            if parts.iter().all(is_ident) {
                return Form::Path(parts, Some(inner));
            }
            return Form::Expression(inner);
        }
    }
    if s.contains("{{") || s.contains("{%") {
        return Form::Text;
    }
    let parts: Vec<&str> = t.split('.').collect();
    if t == s && matches!(parts[0], "context" | "input" | "output") && parts.iter().all(is_ident) {
        return Form::Path(parts, None);
    }
    Form::Literal
}

fn is_ident(p: &&str) -> bool {
    let mut chars = p.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`
/// (`leeway` by name only):
/// text longer than `length + leeway` is cut to `length` characters, ending
/// in `end`, at a word boundary unless `killwords`.
fn truncate(
    value: String,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    kwargs: minijinja::value::Kwargs,
) -> Result<String, minijinja::Error> {
    let length = kwargs
        .get::<Option<usize>>("length")?
        .or(length)
        .unwrap_or(255);
    let killwords = kwargs
        .get::<Option<bool>>("killwords")?
        .or(killwords)
        .unwrap_or(false);
    let end = kwargs
        .get::<Option<String>>("end")?
        .or(end)
        .unwrap_or_else(|| "...".to_string());
    let leeway = kwargs.get::<Option<usize>>("leeway")?.unwrap_or(5);
    kwargs.assert_all_used()?;
    let chars = value.chars().count();
    if chars <= length.saturating_add(leeway) {
        return Ok(value);
    }
    let keep: String = value
        .chars()
        .take(length.saturating_sub(end.chars().count()))
        .collect();
    let kept = if killwords {
        keep
    } else {
        match keep.rsplit_once(' ') {
            Some((head, _)) => head.to_string(),
            None => keep,
        }
    };
    Ok(kept + &end)
}

impl Expressions {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.add_global("null", JinjaValue::from(()));
        // Jinja2's filters that minijinja leaves out, and Python's methods.
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Jinja2's signature: positional arguments too (`truncate(500, true)`).
        env.add_filter("truncate", truncate);
        env.add_filter(
            "fromjson",
            |text: String| -> Result<JinjaValue, minijinja::Error> {
                serde_json::from_str::<Value>(&text)
                    .map(|v| JinjaValue::from(Serde(&v)))
                    .map_err(|e| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("fromjson: {e}"),
                        )
                    })
            },
        );
        env.set_formatter(|out, state, value| {
            if matches!(
                value.kind(),
                minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Map
            ) {
                let json = serde_json::to_string(value).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::BadSerialization, e.to_string())
                })?;
                out.write_str(&json).map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        Expressions { env }
    }

    /// Renders a config value with these variables (an object such as
    /// `{"context": ..., "input": ..., "output": ...}`).
    pub fn render(&self, template: &Value, vars: &Value) -> Result<Value, ExprError> {
        // Converting the variables for minijinja costs as much as the whole
        // context; it happens only when a template needs the engine.
        let jinja_vars = std::cell::OnceCell::new();
        self.render_with(template, vars, &jinja_vars)
    }

    fn render_with(
        &self,
        template: &Value,
        vars: &Value,
        jinja_vars: &std::cell::OnceCell<JinjaValue>,
    ) -> Result<Value, ExprError> {
        Ok(match template {
            Value::String(s) => self.render_string(s, vars, jinja_vars)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_with(i, vars, jinja_vars))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_with(v, vars, jinja_vars)?)))
                    .collect::<Result<_, ExprError>>()?,
            ),
            other => other.clone(),
        })
    }

    fn render_string(
        &self,
        s: &str,
        vars: &Value,
        jinja_vars: &std::cell::OnceCell<JinjaValue>,
    ) -> Result<Value, ExprError> {
        let fail = |e: minijinja::Error| ExprError::Template {
            template: s.to_string(),
            message: describe(&e),
        };
        let form = match classify(s) {
            // A name that is no variable (`range`, `true`) is the engine's to evaluate.
            Form::Path(parts, Some(expr)) if vars.get(parts[0]).is_none() => Form::Expression(expr),
            form => form,
        };
        match form {
            Form::Expression(expr) => {
                let value = self
                    .env
                    .compile_expression(expr)
                    .map_err(fail)?
                    .eval(jinja_vars.get_or_init(|| JinjaValue::from(Serde(vars))))
                    .map_err(fail)?;
                to_json(&value).map_err(|message| ExprError::Template {
                    template: s.to_string(),
                    message,
                })
            }
            Form::Text => Ok(Value::String(
                self.env
                    .render_str(s, jinja_vars.get_or_init(|| JinjaValue::from(Serde(vars))))
                    .map_err(fail)?,
            )),
            Form::Path(parts, _) => Ok(parts
                .iter()
                .try_fold(vars, |v, p| v.get(p))
                .cloned()
                .unwrap_or(Value::Null)),
            Form::Literal => Ok(Value::String(s.to_string())),
        }
    }

    /// Evaluates a transition condition; an empty one is true.
    pub fn condition(&self, condition: &str, vars: &Value) -> Result<bool, ExprError> {
        let fail = |e: minijinja::Error| ExprError::Condition {
            condition: condition.to_string(),
            message: describe(&e),
        };
        if condition.trim().is_empty() {
            return Ok(true);
        }
        let value = self
            .env
            .compile_expression(condition)
            .map_err(fail)?
            .eval(JinjaValue::from(Serde(vars)))
            .map_err(fail)?;
        Ok(value.is_true())
    }

    /// Checks that every template in a config value compiles (for validation
    /// before anything runs).
    pub fn check_template(&self, template: &Value) -> Result<(), ExprError> {
        match template {
            Value::String(s) => {
                let fail = |e: minijinja::Error| ExprError::Template {
                    template: s.clone(),
                    message: describe(&e),
                };
                match classify(s) {
                    Form::Expression(expr) => {
                        self.env.compile_expression(expr).map(|_| ()).map_err(fail)
                    }
                    Form::Text => self.env.template_from_str(s).map(|_| ()).map_err(fail),
                    Form::Path(_, Some(expr)) => {
                        self.env.compile_expression(expr).map(|_| ()).map_err(fail)
                    }
                    Form::Path(_, None) | Form::Literal => return Ok(()),
                }?;
                // In text, only what stands inside `{{ }}` and `{% %}` is code.
                code_segments(s)
                    .try_for_each(|code| self.no_unknown_names(code))
                    .map_err(|message| ExprError::Template {
                        template: s.clone(),
                        message,
                    })
            }
            Value::Array(items) => items.iter().try_for_each(|i| self.check_template(i)),
            Value::Object(map) => map.values().try_for_each(|v| self.check_template(v)),
            _ => Ok(()),
        }
    }

    /// Filters (`x | name`) and tests (`x is name`) a template or condition
    /// names that this engine does not have. minijinja resolves them only when
    /// it evaluates, so compiling alone would let a typo through to a run.
    pub fn unknown_names(&self, source: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        let bytes = source.as_bytes();
        let ident = |from: usize| {
            let start = (from..bytes.len()).find(|&i| !bytes[i].is_ascii_whitespace())?;
            let end = (start..bytes.len())
                .find(|&i| !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_'))
                .unwrap_or(bytes.len());
            // A name runs to an ASCII boundary (`naïve` is not `na`).
            if bytes.get(end).is_some_and(|b| !b.is_ascii()) {
                return None;
            }
            let name = &source[start..end];
            is_ident(&name).then_some((name, start))
        };
        let mut i = 0;
        while i < bytes.len() {
            // String literals are data: `"a|b"` names no filter.
            if let quote @ (b'"' | b'\'') = bytes[i] {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            let (probe, kind) = if bytes[i] == b'|' {
                (ident(i + 1), minijinja::ErrorKind::UnknownFilter)
            } else if bytes[i..].starts_with(b" is ") {
                // `x is name`, `x is not name`
                let after = match ident(i + 4) {
                    Some(("not", at)) => ident(at + 3),
                    other => other,
                };
                (after, minijinja::ErrorKind::UnknownTest)
            } else {
                (None, minijinja::ErrorKind::UnknownFilter)
            };
            if let Some((name, _)) = probe {
                let expr = if kind == minijinja::ErrorKind::UnknownFilter {
                    format!("none | {name}")
                } else {
                    format!("none is {name}")
                };
                let missing = self
                    .env
                    .compile_expression(&expr)
                    .and_then(|e| e.eval(()))
                    .is_err_and(|e| e.kind() == kind);
                if missing && !unknown.iter().any(|u| u == name) {
                    unknown.push(name.to_string());
                }
            }
            i += 1;
        }
        unknown
    }

    /// Checks that a condition compiles.
    pub fn check_condition(&self, condition: &str) -> Result<(), ExprError> {
        if condition.trim().is_empty() {
            return Ok(());
        }
        let fail = |message| ExprError::Condition {
            condition: condition.to_string(),
            message,
        };
        self.env
            .compile_expression(condition)
            .map_err(|e| fail(describe(&e)))?;
        self.no_unknown_names(condition).map_err(fail)
    }

    fn no_unknown_names(&self, source: &str) -> Result<(), String> {
        match self.unknown_names(source).as_slice() {
            [] => Ok(()),
            [one] => Err(format!("unknown filter or test `{one}`")),
            many => Err(format!("unknown filters or tests `{}`", many.join("`, `"))),
        }
    }
}

/// The code inside `{{ ... }}` and `{% ... %}` of a template's text.
fn code_segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let open = rest.find("{{").into_iter().chain(rest.find("{%")).min()?;
        let close = if rest[open..].starts_with("{{") {
            "}}"
        } else {
            "%}"
        };
        let body = &rest[open + 2..];
        let end = body.find(close).unwrap_or(body.len());
        let code = &body[..end];
        rest = &body[(end + close.len()).min(body.len())..];
        Some(code)
    })
}

/// A minijinja value as JSON; undefined becomes null. A function or other
/// opaque object is not data, and is refused rather than stringified.
fn to_json(value: &JinjaValue) -> Result<Value, String> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined => Ok(Value::Null),
        ValueKind::Plain | ValueKind::Invalid => Err(format!("`{value}` is not a JSON value")),
        _ => serde_json::to_value(value).map_err(|e| format!("not a JSON value: {e}")),
    }
}

/// The error's own message plus its detail, without minijinja's debug dump.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
