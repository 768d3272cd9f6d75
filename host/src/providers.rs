//! The model providers flowhost knows by name: where their OpenAI-compatible
//! chat-completions endpoint is, which environment variable holds their API
//! key, and whether they take a JSON schema in `response_format`.
//!
//! Agent profiles name a provider (`provider: openai`); `base_url` in a
//! profile points anywhere else. The plugin runtime reads the key variables
//! (the host adds the key to requests bound for the provider's host), the
//! config module the base URLs. Imports nothing.

/// One provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    pub name: &'static str,
    /// The API root: `<base_url>/chat/completions` is the endpoint.
    pub base_url: &'static str,
    /// The environment variable holding the API key (`None`: no key).
    pub key_env: Option<&'static str>,
    /// Takes `response_format: {type: json_schema, ...}`; otherwise the
    /// schema goes into the prompt and the JSON is extracted from the reply.
    pub json_schema: bool,
}

const fn p(
    name: &'static str,
    base_url: &'static str,
    key_env: Option<&'static str>,
    json_schema: bool,
) -> Provider {
    Provider {
        name,
        base_url,
        key_env,
        json_schema,
    }
}

/// Every provider known by name.
pub const ALL: &[Provider] = &[
    p(
        "openai",
        "https://api.openai.com/v1",
        Some("OPENAI_API_KEY"),
        true,
    ),
    p(
        "cerebras",
        "https://api.cerebras.ai/v1",
        Some("CEREBRAS_API_KEY"),
        true,
    ),
    p(
        "groq",
        "https://api.groq.com/openai/v1",
        Some("GROQ_API_KEY"),
        true,
    ),
    p(
        "together",
        "https://api.together.xyz/v1",
        Some("TOGETHER_API_KEY"),
        true,
    ),
    p(
        "openrouter",
        "https://openrouter.ai/api/v1",
        Some("OPENROUTER_API_KEY"),
        true,
    ),
    p(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        Some("FIREWORKS_API_KEY"),
        true,
    ),
    p(
        "mistral",
        "https://api.mistral.ai/v1",
        Some("MISTRAL_API_KEY"),
        true,
    ),
    p(
        "deepseek",
        "https://api.deepseek.com/v1",
        Some("DEEPSEEK_API_KEY"),
        false,
    ),
    p(
        "anthropic",
        "https://api.anthropic.com/v1",
        Some("ANTHROPIC_API_KEY"),
        false,
    ),
    p("ollama", "http://localhost:11434/v1", None, true),
    p("vllm", "http://localhost:8000/v1", None, true),
    p("lmstudio", "http://localhost:1234/v1", None, true),
];

/// The provider called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static Provider> {
    ALL.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The host (and port, if the URL names one) of a base URL.
pub fn url_host(url: &str) -> Option<(&str, Option<u16>)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_base_urls() {
        assert_eq!(
            url_host("https://api.openai.com/v1"),
            Some(("api.openai.com", None))
        );
        assert_eq!(
            url_host("http://127.0.0.1:7781/v1"),
            Some(("127.0.0.1", Some(7781)))
        );
        assert_eq!(url_host("http://[::1]:80/"), Some(("::1", Some(80))));
        assert_eq!(url_host("http://h:notaport/"), None);
        assert_eq!(find("OpenAI").map(|p| p.name), Some("openai"));
        assert!(find("nope").is_none());
    }
}
