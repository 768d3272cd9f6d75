//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), denied unless
//! two parties agree, and the secrets the host adds on the way out.
//!
//! A request leaves only if the plugin's manifest lists its host in
//! `allowed_hosts` **and** the operator allows it (`--allow-host`,
//! `FLOWHOST_ALLOW_HOSTS`): [`HttpGrant`] is the plugin's side, [`NetConfig`]
//! the operator's. flowhost sends the request itself rather than through
//! wasmtime-wasi-http's client so that every connection is checked:
//! - the name is resolved once and the connection goes to an address that
//!   passed the check; a *name* resolving to a loopback, link-local or
//!   unspecified address is refused (DNS rebinding) unless it is `localhost`;
//! - redirects are never followed (the guest sees the 3xx);
//! - per plugin: a time limit per request, a cap on the response body and
//!   on requests in flight.
//!
//! Secrets ([`Secrets`]) come from the host's environment or the operator's
//! secrets file and are added as headers to requests bound for their host;
//! the guest never reads them, and nothing here logs a header.
//!
//! Imports only `crate::providers` (the key variables of known providers).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// A host (and optionally a port) a rule lets through: `api.example.com`,
/// `api.example.com:8443`, `*.example.com`, `127.0.0.1:7781`, `[::1]:80`, `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostRule {
    /// Lower case; `*` alone or a leading `*.` is a wildcard.
    host: String,
    port: Option<u16>,
}

impl HostRule {
    /// Parses `HOST[:PORT]` (a leading `http://` or `https://` and a
    /// trailing `/` are tolerated).
    pub fn parse(text: &str) -> Result<HostRule, String> {
        let t = text.trim();
        let t = t
            .strip_prefix("https://")
            .or_else(|| t.strip_prefix("http://"))
            .unwrap_or(t)
            .trim_end_matches('/');
        let bad = |why: &str| format!("`{text}`: {why} (expected HOST[:PORT], `*.domain` or `*`)");
        if t.is_empty() {
            return Err(bad("empty host"));
        }
        if t.contains('/') || t.contains('@') || t.contains('?') {
            return Err(bad("a host, not a URL path"));
        }
        let (host, port) = crate::providers::url_host(t).ok_or_else(|| bad("bad port"))?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let wildcard_ok = host == "*" || host.strip_prefix("*.").is_some_and(|r| !r.contains('*'));
        if host.contains('*') && !wildcard_ok {
            return Err(bad("`*` only as the whole host or a leading `*.`"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_*:".contains(c))
        {
            return Err(bad("a host name has letters, digits, `.`, `-` only"));
        }
        Ok(HostRule {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a request to `host:port` (`host` lower case, without brackets) fits.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match self.host.as_str() {
            "*" => true,
            h => match h.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => h == host,
            },
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            _ => f.write_str(&self.host),
        }
    }
}

impl<'de> Deserialize<'de> for HostRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HostRule::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A plugin's side of outbound HTTP, from its manifest:
///
/// ```toml
/// allowed_hosts = ["api.openai.com", "*.example.com"]
/// [http]
/// timeout_ms = 60000        # one request, connect to last byte
/// max_response_mb = 16      # response body cap
/// max_concurrent = 8        # requests in flight at once, every instance and spec of the plugin together
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HttpGrant {
    pub allowed_hosts: Vec<HostRule>,
    pub limits: HttpLimits,
}

/// `[http]` of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    pub timeout_ms: u64,
    pub max_response_mb: u64,
    pub max_concurrent: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            timeout_ms: 60_000,
            max_response_mb: 16,
            max_concurrent: 8,
        }
    }
}

impl HttpLimits {
    pub fn check(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.max_response_mb == 0 || self.max_concurrent == 0 {
            return Err("[http] limits must be positive".into());
        }
        if self.timeout_ms > 3_600_000 {
            return Err("[http] timeout_ms is at most 3600000 (an hour)".into());
        }
        Ok(())
    }
}

/// One secret: a header value added to requests bound for `host`.
#[derive(Clone)]
pub struct Secret {
    pub host: HostRule,
    header: HeaderName,
    value: HeaderValue,
    /// Where it came from, for messages (`env OPENAI_API_KEY`, a file).
    pub source: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret({} for {} from {}, value hidden)",
            self.header, self.host, self.source
        )
    }
}

/// The secrets the host adds to outbound requests.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<Secret>);

/// `[[secret]]` of a secrets file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    host: HostRule,
    env: Option<String>,
    value: Option<String>,
    file: Option<std::path::PathBuf>,
    header: Option<String>,
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    secret: Vec<SecretEntry>,
}

impl Secrets {
    /// Reads a secrets file (TOML):
    ///
    /// ```toml
    /// [[secret]]
    /// host = "api.example.com"
    /// env = "EXAMPLE_KEY"        # or value = "..." or file = "/run/secrets/key"
    /// header = "authorization"   # the default
    /// prefix = "Bearer "         # the default for authorization, else ""
    /// ```
    ///
    /// Errors name the file and the entry, never a value.
    pub fn read(path: &Path) -> Result<Secrets, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secrets file {}: {e}", path.display()))?;
        let file: SecretsFile = toml::from_str(&text).map_err(|e| {
            // toml's message quotes the offending line, which may hold a key.
            let span = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            format!(
                "the secrets file {} cannot be read{span}: {}",
                path.display(),
                e.message()
            )
        })?;
        let mut out = Vec::new();
        for (i, entry) in file.secret.into_iter().enumerate() {
            let at = format!("{} [[secret]] #{} ({})", path.display(), i + 1, entry.host);
            let value = match (&entry.env, &entry.value, &entry.file) {
                (Some(var), None, None) => std::env::var(var)
                    .map_err(|_| format!("{at}: environment variable {var} is not set"))?,
                (None, Some(v), None) => v.clone(),
                (None, None, Some(f)) => std::fs::read_to_string(f)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("{at}: cannot read {}: {e}", f.display()))?,
                _ => return Err(format!("{at}: give exactly one of env, value, file")),
            };
            let source = match (&entry.env, &entry.file) {
                (Some(var), _) => format!("env {var}"),
                (_, Some(f)) => format!("file {}", f.display()),
                _ => format!("{}", path.display()),
            };
            out.push(
                Secret::new(
                    entry.host,
                    entry.header.as_deref(),
                    entry.prefix.as_deref(),
                    &value,
                    source,
                )
                .map_err(|e| format!("{at}: {e}"))?,
            );
        }
        Ok(Secrets(out))
    }

    /// The API keys of known providers whose variable is set, each for its
    /// provider's host.
    pub fn from_provider_env() -> Secrets {
        let mut out = Vec::new();
        for p in crate::providers::ALL {
            let (Some(var), Some((host, port))) =
                (p.key_env, crate::providers::url_host(p.base_url))
            else {
                continue;
            };
            let Ok(value) = std::env::var(var) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let rule = HostRule {
                host: host.to_ascii_lowercase(),
                port,
            };
            match Secret::new(rule, None, None, &value, format!("env {var}")) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!("{var} is not used: {e}"),
            }
        }
        Secrets(out)
    }

    /// These secrets, then `other`'s (a later one for the same host and
    /// header wins).
    pub fn and(mut self, other: Secrets) -> Secrets {
        self.0.extend(other.0);
        self
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    fn apply(&self, host: &str, port: u16, headers: &mut http::HeaderMap) {
        for s in self.0.iter().filter(|s| s.host.matches(host, port)) {
            headers.insert(s.header.clone(), s.value.clone());
        }
    }
}

impl Secret {
    fn new(
        host: HostRule,
        header: Option<&str>,
        prefix: Option<&str>,
        value: &str,
        source: String,
    ) -> Result<Secret, String> {
        let header = header.unwrap_or("authorization").to_ascii_lowercase();
        let name = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("`{header}` is not a header name"))?;
        let prefix = prefix.unwrap_or(if name == http::header::AUTHORIZATION {
            "Bearer "
        } else {
            ""
        });
        let mut value = HeaderValue::from_str(&format!("{prefix}{value}"))
            .map_err(|_| "the value has characters a header cannot carry".to_string())?;
        value.set_sensitive(true);
        Ok(Secret {
            host,
            header: name,
            value,
            source,
        })
    }
}

/// The operator's side of outbound HTTP: the hosts allowed, the secrets.
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    pub allow: Vec<HostRule>,
    pub secrets: Secrets,
}

impl NetConfig {
    /// From `--allow-host` flags (and `FLOWHOST_ALLOW_HOSTS`, comma
    /// separated), `--secrets FILE` (or `FLOWHOST_SECRETS`) and the
    /// provider key variables of the environment.
    pub fn from_flags(allow: &[String], secrets: Option<&Path>) -> Result<NetConfig, String> {
        let mut rules = Vec::new();
        let env = std::env::var("FLOWHOST_ALLOW_HOSTS").unwrap_or_default();
        let from_env = env.split(',').map(str::trim).filter(|s| !s.is_empty());
        for (what, text) in allow
            .iter()
            .map(|s| ("--allow-host", s.as_str()))
            .chain(from_env.map(|s| ("FLOWHOST_ALLOW_HOSTS", s)))
        {
            rules.push(HostRule::parse(text).map_err(|e| format!("{what} {e}"))?);
        }
        let file = secrets
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("FLOWHOST_SECRETS").map(Into::into));
        let mut all = Secrets::from_provider_env();
        if let Some(file) = file {
            all = all.and(Secrets::read(&file)?);
        }
        Ok(NetConfig {
            allow: rules,
            secrets: all,
        })
    }
}

/// What one loaded plugin may do on the network.
pub(crate) struct HttpPolicy {
    plugin: Arc<str>,
    grant: HttpGrant,
    operator: Arc<NetConfig>,
    permits: Arc<Semaphore>,
}

impl HttpPolicy {
    pub(crate) fn new(plugin: Arc<str>, grant: HttpGrant, operator: Arc<NetConfig>) -> Self {
        let permits = Arc::new(Semaphore::new(grant.limits.max_concurrent as usize));
        HttpPolicy {
            plugin,
            grant,
            operator,
            permits,
        }
    }

    /// Why a request to `host:port` may not leave, if it may not.
    fn refusal(&self, host: &str, port: u16) -> Option<String> {
        if !self
            .grant
            .allowed_hosts
            .iter()
            .any(|r| r.matches(host, port))
        {
            return Some(if self.grant.allowed_hosts.is_empty() {
                "the plugin's manifest lists no allowed_hosts".to_string()
            } else {
                "the host is not in the plugin's allowed_hosts".to_string()
            });
        }
        if !self.operator.allow.iter().any(|r| r.matches(host, port)) {
            return Some(format!(
                "the operator does not allow it (--allow-host {host}:{port} or FLOWHOST_ALLOW_HOSTS)"
            ));
        }
        None
    }

    /// Logs why a request to `host:port` was refused; `error` is what the guest sees.
    fn refuse(&self, host: &str, port: u16, why: &str, error: HttpError) -> HttpError {
        tracing::warn!(plugin = %self.plugin, "outbound request to {host}:{port} refused: {why}");
        error
    }

    /// Sends one request under this policy.
    async fn send(
        self: Arc<Self>,
        mut req: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let uri = req.uri().clone();
        let host = uri
            .host()
            .ok_or(HttpError::HttpRequestUriInvalid)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if let Some(why) = self.refusal(&host, port) {
            return Err(self.refuse(&host, port, &why, HttpError::HttpRequestDenied));
        }
        let limits = self.grant.limits;
        let mut budget = Duration::from_millis(limits.timeout_ms);
        if let Some(t) = options.and_then(|o| o.first_byte_timeout) {
            budget = budget.min(t);
        }
        let deadline = tokio::time::Instant::now() + budget;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HttpError::ConnectionLimitReached)?
            .map_err(|_| HttpError::ConnectionLimitReached)?;

        let addrs: Vec<SocketAddr> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| HttpError::DnsTimeout)?
                .map_err(|e| HttpError::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                })?
                .collect();
        if let Some(why) = rebinding(&host, &addrs) {
            let prohibited = HttpError::DestinationIpProhibited;
            return Err(self.refuse(&host, port, &why, prohibited));
        }
        if addrs.is_empty() {
            return Err(HttpError::DestinationNotFound);
        }

        self.operator.secrets.apply(&host, port, req.headers_mut());
        let started = Instant::now();
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(&addrs[..]))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                _ => HttpError::Connect(e),
            })?;
        let _ = stream.set_nodelay(true);
        let io: Box<dyn Stream> = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?).connect(name, stream);
            Box::new(
                tokio::time::timeout_at(deadline, tls)
                    .await
                    .map_err(|_| HttpError::ConnectionTimeout)?
                    .map_err(HttpError::Tls)?,
            )
        } else {
            Box::new(stream)
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(io))
            .await
            .map_err(HttpError::from)?;
        let conn = tokio::spawn(conn);
        // Only the path goes on the wire (the authority is in `host`).
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let response = tokio::time::timeout_at(deadline, sender.send_request(req))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)?;
        tracing::debug!(plugin = %self.plugin, "{host}:{port} answered {} in {:.1} ms", response.status(), started.elapsed().as_secs_f64() * 1e3);
        let cap = limits.max_response_mb.saturating_mul(1 << 20);
        if let Some(len) = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > cap
        {
            tracing::warn!(plugin = %self.plugin, "response from {host}:{port} refused: {len} bytes, over the {} MiB cap", limits.max_response_mb);
            return Err(HttpError::HttpResponseBodySize(Some(len)));
        }
        let plugin = self.plugin.clone();
        let response = response.map(|incoming| {
            Capped {
                inner: incoming,
                left: cap,
                cap_mb: limits.max_response_mb,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                plugin,
                _permit: permit,
            }
            .boxed_unsync()
        });
        let io: IoFuture = Box::new(async move {
            match conn.await {
                Ok(r) => r.map_err(HttpError::from),
                Err(_) => Ok(()),
            }
        });
        Ok((response, io))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// Why a request to `host` may not go to the addresses it resolved to: a
/// name (not an address, not `localhost`) pointing at loopback, link-local
/// or unspecified addresses, as DNS rebinding would have it.
fn rebinding(host: &str, addrs: &[SocketAddr]) -> Option<String> {
    let literal = host.parse::<IpAddr>().is_ok();
    let local_name = host == "localhost" || host.ends_with(".localhost");
    if literal || local_name {
        return None;
    }
    let bad = addrs.iter().find(|a| !routable(a.ip()))?;
    Some(format!(
        "the name resolves to {}, an address a name may not point at (allow the address itself to reach it)",
        bad.ip()
    ))
}

/// Addresses a *name* may resolve to.
fn routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || mapped.is_some_and(|m| !routable(IpAddr::V4(m))))
        }
    }
}

/// The TLS client settings (webpki roots, ring), built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            // ring, as wasmtime-wasi-http uses (aws-lc-rs would add a long
            // C build); its classical key exchanges are what providers offer.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS is unavailable: {e}"))
        })
        .clone()
        .map_err(|e| HttpError::InternalError(Some(e)))
}

/// A response body under the plugin's size cap and time limit; holds the
/// request's concurrency permit until it ends.
struct Capped {
    inner: hyper::body::Incoming,
    left: u64,
    cap_mb: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    plugin: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.left {
                    tracing::warn!(plugin = %self.plugin, "response body cut: over the {} MiB cap", self.cap_mb);
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(plugin = %self.plugin, "response body cut: the request's time limit passed");
                    Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The `wasi:http` hooks of one store: the plugin's policy.
pub(crate) struct Hooks(pub(crate) Arc<HttpPolicy>);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        drop(fut);
        Box::new(self.0.clone().send(request, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = HostRule::parse("API.example.com").unwrap();
        assert!(r.matches("api.example.com", 443));
        assert!(!r.matches("evil.com", 443));
        let r = HostRule::parse("127.0.0.1:7781").unwrap();
        assert!(r.matches("127.0.0.1", 7781));
        assert!(!r.matches("127.0.0.1", 7782));
        let r = HostRule::parse("*.example.com").unwrap();
        assert!(r.matches("a.example.com", 80));
        assert!(!r.matches("example.com", 80));
        assert!(!r.matches("badexample.com", 80));
        assert!(HostRule::parse("*").unwrap().matches("x", 1));
        assert!(
            HostRule::parse("https://api.openai.com/")
                .unwrap()
                .matches("api.openai.com", 443)
        );
        assert!(
            HostRule::parse("[::1]:80").unwrap().matches("::1", 80),
            "IPv6 literal"
        );
        for bad in ["", "a/b", "ex*ample.com", "host:99999", "a b"] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_may_not_point_at_loopback_or_link_local() {
        for ip in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!routable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "93.184.216.34", "2001:db8::1"] {
            assert!(routable(ip.parse().unwrap()), "{ip}");
        }
        let at = |ip: &str| vec![SocketAddr::new(ip.parse().unwrap(), 80)];
        assert!(rebinding("evil.example", &at("127.0.0.1")).is_some());
        assert!(rebinding("evil.example", &at("169.254.169.254")).is_some());
        assert!(rebinding("api.example", &at("93.184.216.34")).is_none());
        assert!(rebinding("localhost", &at("127.0.0.1")).is_none());
        assert!(
            rebinding("127.0.0.1", &at("127.0.0.1")).is_none(),
            "an allowed address"
        );
    }

    #[test]
    fn the_tls_client_settings_build() {
        let config = tls_config().expect("ring gives TLS 1.2 and 1.3");
        assert!(config.alpn_protocols.is_empty(), "HTTP/1.1 only");
        assert!(Arc::ptr_eq(&config, &tls_config().unwrap()), "built once");
    }

    #[test]
    fn secrets_never_show_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.toml");
        std::fs::write(
            &file,
            "[[secret]]\nhost = \"api.example.com\"\nvalue = \"sk-very-secret\"\n",
        )
        .unwrap();
        let secrets = Secrets::read(&file).unwrap();
        assert_eq!(secrets.len(), 1);
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        let mut headers = http::HeaderMap::new();
        secrets.apply("api.example.com", 443, &mut headers);
        assert_eq!(headers["authorization"], "Bearer sk-very-secret");
        let mut other = http::HeaderMap::new();
        secrets.apply("evil.example.com", 443, &mut other);
        assert!(other.is_empty(), "a secret goes only to its own host");

        std::fs::write(
            &file,
            "[[secret]]\nhost = \"h\"\nvalue = \"sk-x\"\nbogus = 1\n",
        )
        .unwrap();
        let err = Secrets::read(&file).unwrap_err();
        assert!(err.contains("bogus") && !err.contains("sk-x"), "{err}");
    }
}
