//! The bearer token: kept as its sha256 digest, compared in constant time,
//! never logged.

use sha2::{Digest, Sha256};

/// A token the daemon accepts.
pub(crate) struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Result<Token, String> {
        if token.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        Ok(Token(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether an `Authorization` header value carries this token. The
    /// digests are compared byte by byte without an early exit, so the time
    /// taken says nothing about how much of a guess was right.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_is_accepted() {
        let t = Token::new("0123456789abcdef-secret").unwrap();
        assert!(t.accepts(Some("Bearer 0123456789abcdef-secret")));
        assert!(!t.accepts(Some("Bearer 0123456789abcdef-secreT")));
        assert!(!t.accepts(Some("0123456789abcdef-secret")));
        assert!(!t.accepts(Some("Basic 0123456789abcdef-secret")));
        assert!(!t.accepts(None));
        assert!(Token::new("short").is_err());
    }
}
