//! `llm`: runs one FlatAgents agent call against an OpenAI-compatible
//! chat-completions endpoint.
//!
//! The host hands the agent in the plugin's config (resolved from the
//! agent's `spec: flatagent` file and the machine's profiles):
//!
//! ```json
//! {"agent": {"name": "critic", "system": "...", "user": "...",
//!            "instruction_suffix": "...", "output": {"score": {"type": "int"}}},
//!  "model": {"name": "gpt-4o-mini", "base_url": "https://api.openai.com/v1",
//!            "structured": "json_schema", "temperature": 0.2, ...},
//!  "file": "critic.yml"}
//! ```
//!
//! `system`, `user` and `instruction_suffix` are Jinja templates over
//! `input` (the state's rendered input). With an `output` schema the reply
//! must be a JSON object that fits it (asked for through `response_format`,
//! or in the prompt where the provider has no JSON schema mode — and again
//! in the prompt when a provider refuses the schema with a 400); without
//! one the output is `{content}`.
//!
//! The answer is an envelope the engine unwraps:
//! `{"output": ..., "usage": {...}, "model": "..."}` or
//! `{"error": {"kind", "message", "retry_after_ms"?}}` with kinds
//! `retryable` (429, 5xx, connection trouble), `timeout`, `invalid_input`
//! (other 4xx), `fatal` (401/403, a refused host) and `invalid_output` (a
//! reply that does not fit the schema). API keys never pass through here:
//! the host adds them to requests bound for the provider.

pub mod schema;

use flowhost_sdk::http::{self, HttpError, Request};
use flowhost_sdk::{Error, Meta, Value, host, json};
use serde_json::Map;
use std::time::Duration;

/// Model keys that are flowhost's, not request parameters.
const NOT_PARAMS: &[&str] = &["provider", "name", "base_url", "structured", "profile"];

/// A failed call, as the envelope reports it.
#[derive(Debug, PartialEq)]
struct Failure {
    kind: &'static str,
    message: String,
    retry_after_ms: Option<u64>,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

pub fn run(meta: &Meta, input: Value) -> Result<Value, Error> {
    let config = host::config();
    Ok(match call(meta, &config, &input) {
        Ok(v) => v,
        Err(f) => {
            let mut e = json!({"kind": f.kind, "message": f.message});
            if let Some(ms) = f.retry_after_ms {
                e["retry_after_ms"] = json!(ms);
            }
            json!({ "error": e })
        }
    })
}

fn call(meta: &Meta, config: &Value, input: &Value) -> Result<Value, Failure> {
    let agent = config
        .get("agent")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Failure::new(
                "invalid_input",
                "the llm plugin runs agents named in a machine's `agents:` (its config has no `agent`)",
            )
        })?;
    let model = config
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| Failure::new("invalid_input", "the agent has no model"))?;
    let name = model
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::new("invalid_input", "the agent's model has no `name`"))?;
    let base = model
        .get("base_url")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::new("invalid_input", "the agent's model has no `base_url`"))?;
    let output = agent.get("output").and_then(Value::as_object);
    let structured = model.get("structured").and_then(Value::as_str) != Some("prompt");

    let request = |structured: bool| -> Result<http::Response, Failure> {
        let body = request_body(agent, model, name, input, output, structured)?;
        send(meta, base, &body)
    };
    let mut reply = request(structured)?;
    // The fallback: a provider without JSON-schema output refuses
    // `response_format` with a 400; ask for the JSON in the prompt instead.
    if reply.status == 400 && structured && output.is_some() {
        host::warn(format!(
            "{base} refused the request with a JSON schema ({}); asking for JSON in the prompt instead",
            status_failure(&reply, base).message
        ));
        reply = request(false)?;
    }
    if reply.status != 200 {
        return Err(status_failure(&reply, base));
    }
    let answer: Value = reply.json().map_err(|_| {
        Failure::new(
            "retryable",
            format!(
                "{base} answered 200 with a body that is not JSON: {}",
                snippet(&reply.text())
            ),
        )
    })?;
    let content = answer
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Failure::new(
                "retryable",
                format!(
                    "{base} answered without choices[0].message.content: {}",
                    snippet(&answer.to_string())
                ),
            )
        })?;
    let output = match output {
        None => json!({ "content": content }),
        Some(fields) => {
            let value = schema::extract_json(content).ok_or_else(|| {
                Failure::new(
                    "invalid_output",
                    format!("the model's reply is not JSON: {}", snippet(content)),
                )
            })?;
            schema::check(fields, value).map_err(|e| {
                Failure::new(
                    "invalid_output",
                    format!("the model's reply does not fit the output schema: {e}"),
                )
            })?
        }
    };
    let usage = answer.get("usage").cloned().unwrap_or(json!({}));
    Ok(json!({
        "output": output,
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            "completion_tokens": usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
            "total_tokens": usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(0),
        },
        "model": answer.get("model").and_then(Value::as_str).unwrap_or(name),
        "finish_reason": answer.pointer("/choices/0/finish_reason").cloned().unwrap_or(Value::Null),
    }))
}

/// The chat-completions request: the prompts, the model's parameters, and
/// the output schema as `response_format` (`structured`) or in the prompt.
fn request_body(
    agent: &Map<String, Value>,
    model: &Map<String, Value>,
    name: &str,
    input: &Value,
    output: Option<&Map<String, Value>>,
    structured: bool,
) -> Result<Value, Failure> {
    let (system, user) = prompts(agent, input, output.filter(|_| !structured))?;
    let mut body = json!({
        "model": name,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
    });
    for (k, v) in model {
        if !NOT_PARAMS.contains(&k.as_str()) && !v.is_null() {
            body[k] = v.clone();
        }
    }
    if let (Some(fields), true) = (output, structured) {
        let schema_name: String = agent
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("output")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema::json_schema(fields)},
        });
    }
    Ok(body)
}

/// POSTs a request to `<base>/chat/completions`; transport failures as kinds.
fn send(meta: &Meta, base: &str, body: &Value) -> Result<http::Response, Failure> {
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let mut request = Request::post(&url)
        .json(body)
        .header("accept", "application/json")
        .header("x-idempotency-key", &meta.idempotency_key);
    if meta.deadline_ms > 0 {
        request = request.timeout(Duration::from_millis(meta.deadline_ms));
    }
    http::send(&request).map_err(|e| match e {
        HttpError::Refused(m) => Failure::new(
            "fatal",
            format!("the request to {base} was refused by the host ({m}); the operator allows hosts with --allow-host"),
        ),
        HttpError::Timeout(m) => Failure::new("timeout", format!("{base} did not answer in time ({m})")),
        HttpError::Network(m) => Failure::new("retryable", format!("cannot reach {base}: {m}")),
        HttpError::Protocol(m) => Failure::new("retryable", format!("{base}: {m}")),
    })
}

/// The rendered system and user prompts; with `prompt_schema`, the system
/// prompt asks for JSON of that shape.
fn prompts(
    agent: &Map<String, Value>,
    input: &Value,
    prompt_schema: Option<&Map<String, Value>>,
) -> Result<(String, String), Failure> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    // Jinja2's filters minijinja leaves out, and Python's string methods,
    // as FlatAgents prompts use them.
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    let vars = json!({ "input": input });
    let ctx = minijinja::Value::from(minijinja::value::Serde(&vars));
    let render = |key: &str| -> Result<String, Failure> {
        match agent.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(t)) => env.render_str(t, ctx.clone()).map_err(|e| {
                Failure::new(
                    "invalid_input",
                    format!("the agent's `{key}` template: {e}"),
                )
            }),
            Some(other) => Err(Failure::new(
                "invalid_input",
                format!("the agent's `{key}` must be text, not {other}"),
            )),
        }
    };
    let mut system = render("system")?;
    let mut user = render("user")?;
    let suffix = render("instruction_suffix")?;
    if !suffix.trim().is_empty() {
        user = format!("{}\n\n{}", user.trim_end(), suffix.trim());
    }
    if let Some(fields) = prompt_schema {
        system = format!(
            "{}\n\nRespond with only a JSON object that fits this JSON schema, no other text:\n{}",
            system.trim_end(),
            schema::json_schema(fields)
        );
    }
    Ok((system, user))
}

/// What a non-200 answer means.
fn status_failure(reply: &http::Response, base: &str) -> Failure {
    let detail = reply
        .json::<Value>()
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| snippet(&reply.text()));
    let message = format!("{base} answered {}: {detail}", reply.status);
    let kind = match reply.status {
        429 | 500..=599 => "retryable",
        408 => "timeout",
        401 | 403 => "fatal",
        s if (300..400).contains(&s) => "fatal",
        _ => "invalid_input",
    };
    let mut f = Failure::new(kind, message);
    if kind == "retryable" {
        f.retry_after_ms = reply.header("retry-after").and_then(retry_after_ms);
    }
    f
}

/// `Retry-After`: seconds (fractions allowed) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), at most an hour.
fn retry_after_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    let secs = match value.parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            (http_date(value)? as f64 - now).max(0.0)
        }
    };
    (secs.is_finite() && secs >= 0.0).then(|| (secs.min(3600.0) * 1000.0) as u64)
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month_name)? as i64
        + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

flowhost_sdk::processor!(
    run,
    description = "Runs a FlatAgents agent (spec: flatagent) against an OpenAI-compatible endpoint"
);

#[cfg(test)]
mod tests {
    use super::*;
    use flowhost_sdk::http::Response;
    use flowhost_sdk::testing::FakeHost;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn config(output: Option<Value>, structured: &str) -> Value {
        let mut agent = json!({
            "name": "critic",
            "system": "You judge {{ input.product }}.",
            "user": "Tagline: {{ input.tagline }}",
            "instruction_suffix": "Be brief.",
        });
        if let Some(o) = output {
            agent["output"] = o;
        }
        json!({
            "agent": agent,
            "model": {"name": "m1", "base_url": "http://models.test/v1", "structured": structured,
                      "temperature": 0.5, "disable_reasoning": true},
        })
    }

    fn reply(status: u16, body: Value, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_string().into_bytes(),
        }
    }

    fn chat(content: &str) -> Value {
        json!({"model": "m1", "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
    }

    /// Runs the plugin against a fake endpoint; returns the envelope and the
    /// request bodies sent.
    fn with(config: Value, answer: Response) -> (Value, Vec<Value>) {
        let _host = FakeHost::new().config(config).install();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        http::fake(move |r| {
            assert_eq!(r.url, "http://models.test/v1/chat/completions");
            log.borrow_mut()
                .push(serde_json::from_slice::<Value>(&r.body).unwrap());
            Ok(answer.clone())
        });
        let out = run(
            &Meta::default(),
            json!({"product": "tea", "tagline": "hot"}),
        )
        .unwrap();
        let sent = seen.borrow().clone();
        (out, sent)
    }

    #[test]
    fn plain_agents_return_content_and_usage() {
        let (out, sent) = with(
            config(None, "json_schema"),
            reply(200, chat("Score: 7"), &[]),
        );
        assert_eq!(out["output"], json!({"content": "Score: 7"}));
        assert_eq!(out["usage"]["total_tokens"], 13);
        let body = &sent[0];
        assert_eq!(body["model"], "m1");
        assert_eq!(body["messages"][0]["content"], "You judge tea.");
        assert_eq!(body["messages"][1]["content"], "Tagline: hot\n\nBe brief.");
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(
            body["disable_reasoning"], true,
            "profile extras pass through"
        );
        assert!(body.get("base_url").is_none() && body.get("response_format").is_none());
    }

    #[test]
    fn structured_output_is_asked_for_and_checked() {
        let schema = json!({"score": {"type": "int"}, "feedback": {"type": "str"}});
        let (out, sent) = with(
            config(Some(schema.clone()), "json_schema"),
            reply(200, chat(r#"{"score": 8, "feedback": "good"}"#), &[]),
        );
        assert_eq!(out["output"], json!({"score": 8, "feedback": "good"}));
        assert_eq!(sent[0]["response_format"]["type"], "json_schema");

        let (out, sent) = with(
            config(Some(schema.clone()), "prompt"),
            reply(
                200,
                chat("Here you go: {\"score\": \"9\", \"feedback\": \"ok\"}"),
                &[],
            ),
        );
        assert_eq!(out["output"]["score"], 9);
        assert!(sent[0].get("response_format").is_none());
        let system = sent[0]["messages"][0]["content"].as_str().unwrap();
        assert!(system.contains("JSON schema"), "{system}");

        let (out, _) = with(
            config(Some(schema), "json_schema"),
            reply(200, chat(r#"{"score": "high"}"#), &[]),
        );
        assert_eq!(out["error"]["kind"], "invalid_output", "{out}");
    }

    #[test]
    fn a_provider_refusing_json_schema_is_asked_in_the_prompt() {
        let schema = json!({"score": {"type": "int"}});
        let _host = FakeHost::new()
            .config(config(Some(schema), "json_schema"))
            .install();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        http::fake(move |r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            log.borrow_mut().push(body.clone());
            Ok(if body.get("response_format").is_some() {
                reply(
                    400,
                    json!({"error": {"message": "response_format is not supported"}}),
                    &[],
                )
            } else {
                reply(200, chat(r#"{"score": 6}"#), &[])
            })
        });
        let out = run(&Meta::default(), json!({})).unwrap();
        assert_eq!(out["output"], json!({"score": 6}), "{out}");
        assert_eq!(seen.borrow().len(), 2, "one fallback request");
        let system = seen.borrow()[1]["messages"][0]["content"].clone();
        assert!(system.as_str().unwrap().contains("JSON schema"), "{system}");
    }

    #[test]
    fn provider_errors_map_to_kinds() {
        let cases = [
            (429, "retryable", Some(1500)),
            (503, "retryable", None),
            (400, "invalid_input", None),
            (401, "fatal", None),
            (302, "fatal", None),
        ];
        for (status, kind, after) in cases {
            let headers: &[(&str, &str)] = if status == 429 {
                &[("retry-after", "1.5")]
            } else {
                &[]
            };
            let (out, _) = with(
                config(None, "json_schema"),
                reply(status, json!({"error": {"message": "nope"}}), headers),
            );
            assert_eq!(out["error"]["kind"], kind, "{status}: {out}");
            assert_eq!(out["error"]["retry_after_ms"].as_u64(), after, "{status}");
            assert!(out["error"]["message"].as_str().unwrap().contains("nope"));
        }
        let _host = FakeHost::new()
            .config(config(None, "json_schema"))
            .install();
        http::fake(|_| Err(HttpError::Timeout("slow".into())));
        let out = run(&Meta::default(), json!({})).unwrap();
        assert_eq!(out["error"]["kind"], "timeout");
        http::fake(|_| Err(HttpError::Refused("HttpRequestDenied".into())));
        let out = run(&Meta::default(), json!({})).unwrap();
        assert_eq!(out["error"]["kind"], "fatal");
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-host")
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        assert_eq!(retry_after_ms("1.5"), Some(1500));
        assert_eq!(retry_after_ms("99999"), Some(3_600_000), "at most an hour");
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(0),
            "a date passed"
        );
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(retry_after_ms("soon"), None);
    }

    #[test]
    fn malformed_answers_are_retryable() {
        let _host = FakeHost::new()
            .config(config(None, "json_schema"))
            .install();
        http::fake(|_| {
            Ok(Response {
                status: 200,
                headers: vec![],
                body: b"{not json".to_vec(),
            })
        });
        let out = run(&Meta::default(), json!({})).unwrap();
        assert_eq!(out["error"]["kind"], "retryable", "{out}");
    }
}
