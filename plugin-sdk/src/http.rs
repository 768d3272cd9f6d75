//! Outbound HTTP from a plugin (feature `http`): one blocking call per request.
//!
//! ```ignore
//! use flowhost_sdk::http::{self, Request};
//!
//! let reply = http::send(
//!     &Request::post("https://api.example.com/v1/things")
//!         .json(&serde_json::json!({"name": "x"}))
//!         .header("x-trace", "1"),
//! )?;
//! if reply.status == 200 {
//!     let thing: serde_json::Value = reply.json()?;
//! }
//! ```
//!
//! A request leaves the sandbox only if the plugin's manifest lists the host
//! in `allowed_hosts` **and** the operator runs flowhost with
//! `--allow-host HOST`; otherwise [`send`] returns [`HttpError::Refused`].
//! Keys are added by the host (the plugin never sees them); redirects are
//! returned, not followed.
//!
//! On wasm32 this is `wasi:http/outgoing-handler`; natively (under
//! `cargo test`) requests go to the responder set with [`fake`].

use std::time::Duration;

/// An HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Time to the first byte of the answer (the host's limit applies too).
    pub timeout: Option<Duration>,
    /// Why [`Request::json`] could not serialize the body ([`send`] reports it).
    body_error: Option<String>,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            body_error: None,
        }
    }
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// A JSON body (and its content type).
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Request {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.body = bytes,
            Err(e) => self.body_error = Some(format!("the JSON body cannot be written: {e}")),
        }
        self.header("content-type", "application/json")
    }
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }
}

/// An HTTP response, read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Protocol(format!("the response is not the JSON expected: {e}")))
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// The host did not let the request out (not in the manifest's
    /// `allowed_hosts`, not allowed by the operator, or the name resolves
    /// to an address it may not point at); the host's log says which.
    Refused(String),
    /// No answer within the time limit.
    Timeout(String),
    /// Could not connect, or the connection broke.
    Network(String),
    /// The URL or the answer does not make sense (too large, not HTTP).
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused(m) => write!(f, "refused by the host: {m}"),
            HttpError::Timeout(m) => write!(f, "timed out: {m}"),
            HttpError::Network(m) => write!(f, "network error: {m}"),
            HttpError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Sends a request and reads the whole response.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    if let Some(e) = &request.body_error {
        return Err(HttpError::Protocol(e.clone()));
    }
    imp::send(request)
}

/// Splits `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(&str, &str, &str), HttpError> {
    let bad = || HttpError::Protocol(format!("`{url}` is not an http(s) URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, path))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{HttpError, Request, Response, split_url};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn code(e: ErrorCode) -> HttpError {
        let text = format!("{e:?}");
        match e {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Refused(text)
            }
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::DnsTimeout
            | ErrorCode::HttpResponseTimeout => HttpError::Timeout(text),
            ErrorCode::HttpResponseBodySize(_) | ErrorCode::HttpRequestUriInvalid => {
                HttpError::Protocol(text)
            }
            _ => HttpError::Network(text),
        }
    }

    pub(super) fn send(r: &Request) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&r.url)?;
        let mut pairs = Vec::new();
        for (n, v) in &r.headers {
            pairs.push((n.to_ascii_lowercase(), v.as_bytes().to_vec()));
        }
        let headers = Fields::from_list(&pairs)
            .map_err(|e| HttpError::Protocol(format!("bad header: {e:?}")))?;
        let req = OutgoingRequest::new(headers);
        let method = match r.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        };
        let protocol = |what: &str| HttpError::Protocol(format!("cannot set the {what}"));
        req.set_method(&method).map_err(|_| protocol("method"))?;
        req.set_scheme(Some(&if scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        }))
        .map_err(|_| protocol("scheme"))?;
        req.set_authority(Some(authority))
            .map_err(|_| protocol("host"))?;
        req.set_path_with_query(Some(path))
            .map_err(|_| protocol("path"))?;
        let body = req.body().map_err(|_| protocol("body"))?;
        let options = RequestOptions::new();
        if let Some(t) = r.timeout {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_first_byte_timeout(Some(nanos));
        }
        let pending = outgoing_handler::handle(req, Some(options)).map_err(code)?;
        // A request the host refuses fails while its body is written; the
        // response future then says why, so look there first.
        let mut sent = Ok(());
        {
            let out = body.write().map_err(|_| protocol("body"))?;
            for chunk in r.body.chunks(4096) {
                if let Err(e) = out.blocking_write_and_flush(chunk) {
                    sent = Err(HttpError::Network(format!("sending the body: {e:?}")));
                    break;
                }
            }
        }
        let finished = OutgoingBody::finish(body, None);
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(code(e)),
            _ => return Err(HttpError::Network("no response".into())),
        };
        sent?;
        finished.map_err(code)?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response
            .consume()
            .map_err(|_| HttpError::Protocol("the response has no body".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|_| HttpError::Protocol("the response has no body".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(match wasip2::http::types::http_error_code(&e) {
                            Some(c) => code(c),
                            None => HttpError::Network(e.to_debug_string()),
                        });
                    }
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{HttpError, Request, Response};
    use std::cell::RefCell;

    pub(super) type Responder = Box<dyn Fn(&Request) -> Result<Response, HttpError>>;

    thread_local! {
        pub(super) static RESPONDER: RefCell<Option<Responder>> = const { RefCell::new(None) };
    }

    pub(super) fn send(r: &Request) -> Result<Response, HttpError> {
        super::split_url(&r.url)?;
        RESPONDER.with(|c| match c.borrow().as_ref() {
            Some(f) => f(r),
            None => Err(HttpError::Refused(
                "no network under `cargo test`: set a responder with flowhost_sdk::http::fake"
                    .into(),
            )),
        })
    }
}

/// Answers this thread's requests with `responder` (native tests only).
#[cfg(not(target_arch = "wasm32"))]
pub fn fake(responder: impl Fn(&Request) -> Result<Response, HttpError> + 'static) {
    imp::RESPONDER.with(|c| *c.borrow_mut() = Some(Box::new(responder)));
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_cannot_be_json_is_an_error_not_an_empty_body() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1); // map keys must be strings in JSON
        fake(|_| panic!("nothing is sent"));
        let err = send(&Request::post("http://h/x").json(&bad)).unwrap_err();
        assert!(
            matches!(err, HttpError::Protocol(ref m) if m.contains("JSON body")),
            "{err}"
        );
    }
}
