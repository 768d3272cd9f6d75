//! `model-server`: an OpenAI-compatible chat-completions server for tests and
//! the agents demo. It answers deterministically, and fails on request.
//!
//! `model-server [--listen 127.0.0.1:0]` prints `listening on http://ADDR`
//! first and serves until killed.
//!
//! - `POST …/chat/completions`: the answer depends only on the request. With
//!   `response_format.json_schema`, a JSON object fitting the schema (strings
//!   from the field name and the prompt, numbers from a hash of the
//!   messages, the first `enum` value); otherwise a short line of text picked
//!   by a hash of the messages. Usage counts words.
//! - The model name picks a fault: `NAME+FAULT` or `NAME+FAULT*N` (only the
//!   first N requests for that model fail). FAULT is `429` (with
//!   `Retry-After: 1`), `500`, `400`, `401`, `slow=MS`, `malformed` (a body
//!   that is not JSON), `badschema` (JSON that breaks the schema), `empty`
//!   (empty content), `big=BYTES` (a reply that long) or `redirect=URL` (302).
//! - `GET /_requests`: every request so far (path, headers, body), for
//!   tests that check what arrived (the key the host added).
//!
//! A test fixture, not the product: flowhost talks HTTP to whatever endpoint
//! a profile names.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Server {
    requests: Mutex<Vec<Value>>,
    /// Requests seen per model name.
    counts: Mutex<HashMap<String, u64>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("usage: model-server [--listen HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("model-server: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    println!("listening on http://{addr}");
    let state = Arc::new(Server::default());
    let app = Router::new()
        .route("/_requests", axum::routing::get(requests))
        .fallback(chat)
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("model-server: {e}");
        std::process::exit(1);
    }
}

async fn requests(State(s): State<Arc<Server>>) -> Response {
    let all = s.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
    axum::Json(Value::Array(all)).into_response()
}

async fn chat(State(s): State<Arc<Server>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let shown: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    s.requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(json!({"path": uri.path(), "headers": shown, "body": parsed.clone().unwrap_or(Value::Null)}));
    if !uri.path().ends_with("/chat/completions") {
        return error(StatusCode::NOT_FOUND, "only …/chat/completions is served");
    }
    let Some(req) = parsed else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let model = req["model"].as_str().unwrap_or("").to_string();
    let seen = {
        let mut counts = s.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(model.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let fault = model.split_once('+').map(|(_, f)| f).and_then(|f| {
        let (fault, times) = match f.split_once('*') {
            Some((fault, n)) => (fault, n.parse::<u64>().ok()),
            None => (f, None),
        };
        times.is_none_or(|n| seen <= n).then_some(fault)
    });
    let messages = req["messages"].to_string();
    let schema = req.pointer("/response_format/json_schema/schema").cloned();
    let mut content = match &schema {
        Some(schema) => synthesize(schema, "", &messages).to_string(),
        None => plain(&req),
    };
    match fault {
        Some("429") => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited (test fault)");
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return r;
        }
        Some("500") => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server error (test fault)",
            );
        }
        Some("400") => return error(StatusCode::BAD_REQUEST, "bad request (test fault)"),
        Some("401") => return error(StatusCode::UNAUTHORIZED, "no key (test fault)"),
        Some("malformed") => {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"choices\": [",
            )
                .into_response();
        }
        Some("badschema") => content = json!({"unexpected": true}).to_string(),
        Some("empty") => content = String::new(),
        Some(f) if f.starts_with("slow=") => {
            let ms = f[5..].parse::<u64>().unwrap_or(1000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Some(f) if f.starts_with("big=") => {
            content = "x".repeat(f[4..].parse::<usize>().unwrap_or(1 << 20));
        }
        Some(f) if f.starts_with("redirect=") => {
            return (StatusCode::FOUND, [("location", f[9..].to_string())], "").into_response();
        }
        _ => {}
    }
    let words = |t: &str| t.split_whitespace().count() as u64;
    let prompt = words(&messages);
    let completion = words(&content);
    axum::Json(json!({
        "id": format!("chatcmpl-{seen}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
    .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "test"}})),
    )
        .into_response()
}

/// A short line chosen by a hash of the messages: the same request gets
/// the same line, another request most likely another.
fn plain(req: &Value) -> String {
    const FIRST: [&str; 8] = [
        "Bright", "Quiet", "Bold", "Simple", "Warm", "Clever", "Steady", "Fresh",
    ];
    const SECOND: [&str; 8] = [
        "mornings", "ideas", "moments", "journeys", "habits", "sparks", "rituals", "wins",
    ];
    const THIRD: [&str; 8] = [
        "made easy",
        "every day",
        "without the fuss",
        "for everyone",
        "done right",
        "that last",
        "in every cup",
        "start here",
    ];
    let h = hash(&req["messages"].to_string());
    let pick = |list: &[&'static str; 8], shift: u32| list[((h >> shift) % 8) as usize];
    format!(
        "{} {}, {}.",
        pick(&FIRST, 0),
        pick(&SECOND, 8),
        pick(&THIRD, 16)
    )
}

/// FNV-1a: a stable hash (std's is seeded per process).
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// A value fitting `schema`, decided by the field name and the messages.
fn synthesize(schema: &Value, field: &str, messages: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let h = hash(&format!("{field}|{messages}"));
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (name, sub) in props {
                    out.insert(name.clone(), synthesize(sub, name, messages));
                }
            }
            Value::Object(out)
        }
        Some("array") => json!([synthesize(&schema["items"], field, messages)]),
        Some("integer") => json!(1 + h % 10),
        Some("number") => json!((h % 1000) as f64 / 100.0),
        Some("boolean") => json!(h.is_multiple_of(2)),
        Some("string") => json!(format!("{field} #{}", h % 1000)),
        _ => json!(format!("{field} #{}", h % 1000)),
    }
}
