//! FlatAgents `output` schemas: field → `{type, description, enum, required,
//! items, properties}` with types `str/int/float/bool/json/list/object`.
//! Turned into a JSON schema for `response_format`, described for prompts,
//! and used to check (and gently coerce) what the model answered.

use serde_json::{Map, Value, json};

/// The JSON schema of an output schema (an object of its fields).
pub fn json_schema(fields: &Map<String, Value>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, def) in fields {
        properties.insert(name.clone(), field_schema(def));
        if is_required(def) {
            required.push(Value::String(name.clone()));
        }
    }
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn is_required(def: &Value) -> bool {
    def.get("required").and_then(Value::as_bool).unwrap_or(true)
}

fn field_schema(def: &Value) -> Value {
    let kind = def.get("type").and_then(Value::as_str).unwrap_or("str");
    let mut schema = match kind {
        "int" => json!({"type": "integer"}),
        "float" => json!({"type": "number"}),
        "bool" => json!({"type": "boolean"}),
        "list" => match def.get("items") {
            Some(items) => json!({"type": "array", "items": field_schema(items)}),
            None => json!({"type": "array"}),
        },
        "object" => match def.get("properties").and_then(Value::as_object) {
            Some(props) => json_schema(props),
            None => json!({"type": "object"}),
        },
        "json" => json!({}),
        _ => json!({"type": "string"}),
    };
    if let (Some(obj), Some(d)) = (schema.as_object_mut(), def.get("description")) {
        obj.insert("description".into(), d.clone());
    }
    if let (Some(obj), Some(e)) = (schema.as_object_mut(), def.get("enum")) {
        obj.insert("enum".into(), e.clone());
    }
    schema
}

/// The JSON object in a model's reply: the whole text, or inside a
/// ```` ```json ```` fence, or the first `{...}` that parses.
pub fn extract_json(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        return Some(v);
    }
    if let Some(start) = trimmed.find("```") {
        let after = &trimmed[start + 3..];
        let after = after.strip_prefix("json").unwrap_or(after);
        if let Some(end) = after.find("```")
            && let Ok(v) = serde_json::from_str::<Value>(after[..end].trim())
        {
            return Some(v);
        }
    }
    for (i, _) in trimmed.match_indices('{') {
        let mut de = serde_json::Deserializer::from_str(&trimmed[i..]).into_iter::<Value>();
        if let Some(Ok(v)) = de.next() {
            return Some(v);
        }
    }
    None
}

/// Checks `value` against the fields; returns it with numbers given as
/// strings (`"7"`) read as numbers, and missing optional fields as null.
/// The error names the field path and what was wrong.
pub fn check(fields: &Map<String, Value>, value: Value) -> Result<Value, String> {
    let Value::Object(mut obj) = value else {
        return Err(format!("expected a JSON object, got {}", kind_of(&value)));
    };
    let mut out = Map::new();
    for (name, def) in fields {
        match obj.remove(name) {
            None | Some(Value::Null) if is_required(def) => {
                return Err(format!("field `{name}` is missing"));
            }
            None | Some(Value::Null) => {
                out.insert(name.clone(), Value::Null);
            }
            Some(v) => {
                out.insert(name.clone(), check_field(name, def, v)?);
            }
        }
    }
    Ok(Value::Object(out))
}

fn check_field(path: &str, def: &Value, v: Value) -> Result<Value, String> {
    let kind = def.get("type").and_then(Value::as_str).unwrap_or("str");
    let wrong = |v: &Value| format!("field `{path}` should be {kind}, got {}", kind_of(v));
    let v = match kind {
        "str" => match v {
            Value::String(_) => v,
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            other => return Err(wrong(&other)),
        },
        "int" => match &v {
            Value::Number(n) if n.is_i64() || n.is_u64() => v,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                json!(n.as_f64().unwrap_or_default() as i64)
            }
            Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                json!(s.trim().parse::<i64>().unwrap_or_default())
            }
            other => return Err(wrong(other)),
        },
        "float" => match &v {
            Value::Number(_) => v,
            Value::String(s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
                json!(s.trim().parse::<f64>().unwrap_or_default())
            }
            other => return Err(wrong(other)),
        },
        "bool" => match &v {
            Value::Bool(_) => v,
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            other => return Err(wrong(other)),
        },
        "list" => match v {
            Value::Array(items) => match def.get("items") {
                Some(item_def) => Value::Array(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| check_field(&format!("{path}[{i}]"), item_def, item))
                        .collect::<Result<_, _>>()?,
                ),
                None => Value::Array(items),
            },
            other => return Err(wrong(&other)),
        },
        "object" => match (v, def.get("properties").and_then(Value::as_object)) {
            (v @ Value::Object(_), Some(props)) => {
                check(props, v).map_err(|e| format!("in `{path}`: {e}"))?
            }
            (v @ Value::Object(_), None) => v,
            (other, _) => return Err(wrong(&other)),
        },
        _ => v, // json: anything
    };
    if let Some(Value::Array(allowed)) = def.get("enum")
        && !allowed.contains(&v)
    {
        return Err(format!(
            "field `{path}` is {v}, not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    Ok(v)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Map<String, Value> {
        json!({
            "score": {"type": "int"},
            "feedback": {"type": "str"},
            "tags": {"type": "list", "items": {"type": "str"}, "required": false},
            "mood": {"type": "str", "enum": ["good", "bad"], "required": false},
            "meta": {"type": "object", "properties": {"ok": {"type": "bool"}}, "required": false}
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn schema_lists_required_fields_and_types() {
        let s = json_schema(&fields());
        assert_eq!(s["properties"]["score"]["type"], "integer");
        assert_eq!(s["properties"]["tags"]["items"]["type"], "string");
        assert_eq!(
            s["properties"]["meta"]["properties"]["ok"]["type"],
            "boolean"
        );
        assert_eq!(s["required"], json!(["feedback", "score"]));
    }

    #[test]
    fn replies_are_checked_and_coerced() {
        let ok = check(&fields(), json!({"score": "7", "feedback": "fine"})).unwrap();
        assert_eq!(ok["score"], 7);
        assert_eq!(ok["tags"], Value::Null);
        let e = check(&fields(), json!({"score": "high", "feedback": "x"})).unwrap_err();
        assert!(e.contains("`score` should be int"), "{e}");
        let e = check(&fields(), json!({"score": 1})).unwrap_err();
        assert!(e.contains("`feedback` is missing"), "{e}");
        let e = check(
            &fields(),
            json!({"score": 1, "feedback": "x", "mood": "meh"}),
        )
        .unwrap_err();
        assert!(e.contains("not one of"), "{e}");
        let e = check(
            &fields(),
            json!({"score": 1, "feedback": "x", "meta": {"ok": 3}}),
        )
        .unwrap_err();
        assert!(e.contains("in `meta`"), "{e}");
    }

    #[test]
    fn json_is_found_in_chatty_replies() {
        assert_eq!(extract_json(r#"{"a":1}"#), Some(json!({"a": 1})));
        assert_eq!(
            extract_json("Sure!\n```json\n{\"a\": 2}\n```\nDone"),
            Some(json!({"a": 2}))
        );
        assert_eq!(extract_json("Here: {\"a\": 3} ok"), Some(json!({"a": 3})));
        assert_eq!(extract_json("no json here"), None);
    }
}
