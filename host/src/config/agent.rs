//! FlatAgents agents (`spec: flatagent`) and model profiles
//! (`spec: flatprofiles`), read into the config of the provided `llm`
//! plugin, which makes the model call.
//!
//! An agent's `model` is a profile name, `{profile, …overrides}` or an
//! inline model; a missing one takes the profiles' `default`, and the
//! profiles' `override` replaces every agent's. The provider named in the
//! model gives the endpoint (`base_url` overrides it) and whether a JSON
//! schema goes into `response_format` (`structured_output: prompt` asks in
//! the prompt instead). Everything is checked here, so a typo in an agent
//! file is a validation error naming the file, not a failed call.
//!
//! Imports `crate::providers` and `crate::text`.

use serde_json::{Map, Value, json};
use std::path::Path;

/// The plugin that runs FlatAgents agents.
pub const LLM_PLUGIN: &str = "llm";

/// Keys of an agent's `data`.
const AGENT_KEYS: [&str; 7] = [
    "name",
    "model",
    "system",
    "user",
    "instruction_suffix",
    "output",
    "mcp",
];
const FIELD_TYPES: [&str; 7] = ["str", "int", "float", "bool", "json", "list", "object"];
const FIELD_KEYS: [&str; 6] = [
    "type",
    "description",
    "enum",
    "required",
    "items",
    "properties",
];

/// A `spec: flatprofiles` file.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    pub file: String,
    profiles: Map<String, Value>,
    default: Option<String>,
    force: Option<String>,
}

/// Reads YAML text as JSON (agent and profile files are data).
pub fn yaml(file: &Path, text: &str) -> Result<Value, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    serde_json::to_value(value).map_err(|e| format!("{}: {e}", file.display()))
}

fn spec_data<'a>(doc: &'a Value, spec: &str) -> Result<&'a Map<String, Value>, String> {
    let found = doc.get("spec").and_then(Value::as_str);
    if found != Some(spec) {
        return Err(match found {
            Some(s) => format!("`spec` is `{s}`, expected `{spec}`"),
            None => format!("not a `spec: {spec}` file"),
        });
    }
    doc.get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| "`data` must be a map".to_string())
}

/// Reads a profiles file (its JSON form, named `file` in messages).
pub fn read_profiles(file: &str, doc: &Value) -> Result<Profiles, String> {
    let data = spec_data(doc, "flatprofiles")?;
    let profiles = match data.get("model_profiles") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("`model_profiles` must be a map of profiles".into()),
    };
    for (name, p) in &profiles {
        model_map(p).map_err(|e| format!("profile `{name}`: {e}"))?;
    }
    let named = |key: &str| -> Result<Option<String>, String> {
        match data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if profiles.contains_key(s) => Ok(Some(s.clone())),
            Some(Value::String(s)) => Err(format!(
                "`{key}` names profile `{s}`, which is not in model_profiles ({})",
                names(&profiles)
            )),
            Some(other) => Err(format!("`{key}` must be a profile name, not {other}")),
        }
    };
    Ok(Profiles {
        file: file.to_string(),
        default: named("default")?,
        force: named("override")?,
        profiles,
    })
}

fn names(m: &Map<String, Value>) -> String {
    if m.is_empty() {
        "none".into()
    } else {
        m.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn model_map(v: &Value) -> Result<&Map<String, Value>, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("a model must be a map, not {v}"))?;
    for key in ["provider", "name", "base_url"] {
        if let Some(x) = m.get(key)
            && !x.is_string()
            && !x.is_null()
        {
            return Err(format!("`{key}` must be text, not {x}"));
        }
    }
    if let Some(s) = m.get("structured_output")
        && !matches!(s.as_str(), Some("json_schema" | "prompt"))
    {
        return Err(format!(
            "`structured_output` is `json_schema` or `prompt`, not {s}"
        ));
    }
    Ok(m)
}

/// Reads an agent document (a `spec: flatagent` file's JSON form) into the
/// `llm` plugin's config: `{agent, model, file}`.
pub fn read_agent(file: &str, doc: &Value, profiles: Option<&Profiles>) -> Result<Value, String> {
    let data = spec_data(doc, "flatagent")?;
    if let Some(key) = data.keys().find(|k| !AGENT_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{key}` in data (keys: {})",
            AGENT_KEYS.join(", ")
        ));
    }
    if data.get("mcp").is_some_and(|v| !v.is_null()) {
        return Err("`mcp` tool servers are not supported by flowhost's llm plugin".into());
    }
    for key in ["system", "user", "instruction_suffix"] {
        match data.get(key) {
            None | Some(Value::Null) if key == "user" => {
                return Err("`user` (the prompt template) is missing".into());
            }
            None | Some(Value::Null) => {}
            Some(Value::String(t)) => {
                let env = minijinja::Environment::new();
                env.template_from_str(t)
                    .map_err(|e| format!("`{key}` is not a valid template: {e}"))?;
            }
            Some(other) => return Err(format!("`{key}` must be text, not {other}")),
        }
    }
    let mut agent = data.clone();
    if let Some(output) = agent.get_mut("output").filter(|v| !v.is_null()) {
        let fields = output
            .as_object_mut()
            .ok_or("`output` must map field names to `{type, ...}`")?;
        check_fields("output", fields)?;
    }
    let model = resolve_model(data.get("model"), profiles)?;
    agent.remove("model");
    agent.remove("mcp");
    Ok(json!({"agent": agent, "model": model, "file": file}))
}

/// JSON-schema spellings of the field types, as some agents write them.
const TYPE_ALIASES: [(&str, &str); 7] = [
    ("string", "str"),
    ("integer", "int"),
    ("number", "float"),
    ("boolean", "bool"),
    ("array", "list"),
    ("dict", "object"),
    ("any", "json"),
];

/// Checks an output schema, rewriting type aliases to the canonical names.
fn check_fields(at: &str, fields: &mut Map<String, Value>) -> Result<(), String> {
    for (name, def) in fields.iter_mut() {
        let here = format!("{at}.{name}");
        let def = def
            .as_object_mut()
            .ok_or_else(|| format!("`{here}` must be `{{type, ...}}`"))?;
        if let Some(Value::String(t)) = def.get_mut("type")
            && let Some((_, canonical)) = TYPE_ALIASES.iter().find(|(a, _)| a == t)
        {
            *t = canonical.to_string();
        }
        if let Some(key) = def.keys().find(|k| !FIELD_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "`{here}`: unknown key `{key}` (keys: {})",
                FIELD_KEYS.join(", ")
            ));
        }
        let kind = def.get("type").and_then(Value::as_str).unwrap_or("str");
        if !FIELD_TYPES.contains(&kind) {
            return Err(format!(
                "`{here}`: type `{kind}` is not one of {}",
                FIELD_TYPES.join(", ")
            ));
        }
        if let Some(e) = def.get("enum")
            && !e.is_array()
        {
            return Err(format!("`{here}`: `enum` must be a list"));
        }
        if let Some(r) = def.get("required")
            && !r.is_boolean()
        {
            return Err(format!("`{here}`: `required` is true or false"));
        }
        if let Some(items) = def.get_mut("items") {
            let mut one = Map::new();
            one.insert("items".into(), std::mem::take(items));
            check_fields(&here, &mut one)?;
            *items = one.remove("items").unwrap_or_default();
        }
        if let Some(props) = def.get_mut("properties") {
            let props = props
                .as_object_mut()
                .ok_or_else(|| format!("`{here}`: `properties` must be a map"))?;
            check_fields(&here, props)?;
        }
    }
    Ok(())
}

/// The model an agent calls, with `base_url` and `structured` filled in.
fn resolve_model(model: Option<&Value>, profiles: Option<&Profiles>) -> Result<Value, String> {
    let profile = |name: &str| -> Result<Map<String, Value>, String> {
        let Some(p) = profiles else {
            return Err(format!(
                "the model is profile `{name}`, but the machine names no profiles file (`data.profiles: ./profiles.yml`)"
            ));
        };
        p.profiles
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no profile `{name}` in {} (profiles: {}){}",
                    p.file,
                    names(&p.profiles),
                    crate::text::closest(name, &p.profiles.keys().cloned().collect::<Vec<_>>())
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_default()
                )
            })
    };
    let mut resolved = match model {
        _ if profiles.is_some_and(|p| p.force.is_some()) => profile(
            profiles
                .and_then(|p| p.force.as_deref())
                .unwrap_or_default(),
        )?,
        None | Some(Value::Null) => match profiles.and_then(|p| p.default.as_deref()) {
            Some(d) => profile(d)?,
            None => {
                return Err("the agent names no model, and there is no default profile".to_string());
            }
        },
        Some(Value::String(name)) => profile(name)?,
        Some(Value::Object(m)) => {
            let mut base = match m.get("profile") {
                Some(Value::String(name)) => profile(name)?,
                Some(other) => return Err(format!("`model.profile` must be a name, not {other}")),
                None => Map::new(),
            };
            for (k, v) in m {
                if k != "profile" {
                    base.insert(k.clone(), v.clone());
                }
            }
            base
        }
        Some(other) => {
            return Err(format!(
                "`model` is a profile name, `{{profile, ...}}` or a model map, not {other}"
            ));
        }
    };
    model_map(&Value::Object(resolved.clone())).map_err(|e| format!("model: {e}"))?;
    if !resolved.get("name").is_some_and(Value::is_string) {
        return Err("the model has no `name`".into());
    }
    let provider = resolved
        .get("provider")
        .and_then(Value::as_str)
        .map(str::to_string);
    let known = provider.as_deref().and_then(crate::providers::find);
    let base_url = match (resolved.get("base_url").and_then(Value::as_str), known) {
        (Some(url), _) => {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || crate::providers::url_host(url).is_none()
            {
                return Err(format!("`base_url` `{url}` is not an http(s) URL"));
            }
            url.to_string()
        }
        (None, Some(p)) => p.base_url.to_string(),
        (None, None) => {
            let all: Vec<&str> = crate::providers::ALL.iter().map(|p| p.name).collect();
            return Err(match provider {
                Some(p) => format!(
                    "provider `{p}` is not known (known: {}); give the model a `base_url`",
                    all.join(", ")
                ),
                None => "the model names no `provider` and no `base_url`".to_string(),
            });
        }
    };
    let structured = match resolved.get("structured_output").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None if known.is_none_or(|p| p.json_schema) => "json_schema".into(),
        None => "prompt".into(),
    };
    // What the plugin reads: the endpoint and how to ask for structure
    // (every other key but `provider` and `name` goes to the provider).
    resolved.remove("structured_output");
    resolved.insert("base_url".into(), Value::String(base_url));
    resolved.insert("structured".into(), Value::String(structured));
    Ok(Value::Object(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Profiles {
        read_profiles(
            "profiles.yml",
            &json!({"spec": "flatprofiles", "data": {
                "model_profiles": {
                    "fast": {"provider": "cerebras", "name": "m-fast", "temperature": 0.1},
                    "local": {"provider": "other", "name": "m", "base_url": "http://127.0.0.1:9/v1"},
                },
                "default": "fast"}}),
        )
        .unwrap()
    }

    fn agent(model: Value) -> Value {
        json!({"spec": "flatagent", "data": {"name": "a", "model": model, "user": "{{ input.x }}"}})
    }

    #[test]
    fn models_come_from_profiles_with_overrides() {
        let p = profiles();
        let c = read_agent("a.yml", &agent(json!("fast")), Some(&p)).unwrap();
        assert_eq!(c["model"]["name"], "m-fast");
        assert_eq!(c["model"]["base_url"], "https://api.cerebras.ai/v1");
        assert_eq!(c["model"]["structured"], "json_schema");
        let c = read_agent(
            "a.yml",
            &agent(json!({"profile": "fast", "max_tokens": 5})),
            Some(&p),
        )
        .unwrap();
        assert_eq!(c["model"]["max_tokens"], 5);
        assert_eq!(c["model"]["temperature"], 0.1);
        let c = read_agent("a.yml", &agent(Value::Null), Some(&p)).unwrap();
        assert_eq!(c["model"]["name"], "m-fast", "the default profile");
        let c = read_agent("a.yml", &agent(json!("local")), Some(&p)).unwrap();
        assert_eq!(c["model"]["base_url"], "http://127.0.0.1:9/v1");
        let c = read_agent(
            "a.yml",
            &agent(json!({"provider": "anthropic", "name": "claude"})),
            None,
        )
        .unwrap();
        assert_eq!(c["model"]["structured"], "prompt");
    }

    #[test]
    fn mistakes_are_named() {
        let p = profiles();
        let e = read_agent("a.yml", &agent(json!("fats")), Some(&p)).unwrap_err();
        assert!(
            e.contains("no profile `fats`") && e.contains("did you mean `fast`"),
            "{e}"
        );
        let e = read_agent("a.yml", &agent(json!("fast")), None).unwrap_err();
        assert!(e.contains("names no profiles file"), "{e}");
        let e = read_agent(
            "a.yml",
            &agent(json!({"provider": "nope", "name": "m"})),
            None,
        )
        .unwrap_err();
        assert!(e.contains("provider `nope` is not known"), "{e}");
        let mut doc = agent(json!("fast"));
        doc["data"]["output"] = json!({"score": {"type": "integr"}});
        let e = read_agent("a.yml", &doc, Some(&p)).unwrap_err();
        assert!(e.contains("type `integr` is not one of"), "{e}");
        doc["data"]["output"] = json!({"tags": {"type": "array", "items": {"type": "string"}}});
        let c = read_agent("a.yml", &doc, Some(&p)).unwrap();
        assert_eq!(
            c["agent"]["output"]["tags"],
            json!({"type": "list", "items": {"type": "str"}})
        );
        doc["data"]["output"] = Value::Null;
        doc["data"]["user"] = json!("{{ input.x ");
        let e = read_agent("a.yml", &doc, Some(&p)).unwrap_err();
        assert!(e.contains("`user` is not a valid template"), "{e}");
        let e = read_profiles(
            "p.yml",
            &json!({"spec": "flatprofiles", "data": {"model_profiles": {}, "default": "x"}}),
        )
        .unwrap_err();
        assert!(e.contains("`default` names profile `x`"), "{e}");
    }
}
