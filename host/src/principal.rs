//! Who a request acts for: an OAuth subject (its issuer and `sub`), a static bearer token
//! (named by a short hash of it, never the token itself), or `anonymous` when the server has
//! no authentication. Every session is bound to the principal that opened it.

use std::fmt;

use crate::runtime::verify::sha256_bytes;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// Everyone, on a server without tokens.
    pub fn anonymous() -> Principal {
        Principal("anonymous".into())
    }

    /// The holder of a static bearer token.
    pub fn token(token: &[u8]) -> Principal {
        Principal(format!("token:{}", &sha256_bytes(token)[..12]))
    }

    /// The subject `sub` of the OAuth issuer `iss`: the same person whichever token they use.
    pub fn oauth(issuer: &str, subject: &str) -> Principal {
        Principal(format!("oauth:{subject}@{issuer}"))
    }

    /// A principal as a workspace's owner record holds it (`as_str`, written to disk).
    pub fn from_record(record: String) -> Principal {
        Principal(record)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_principal_never_shows_the_token() {
        let principal = Principal::token(b"very-secret-token");
        assert!(principal.as_str().starts_with("token:") && !principal.as_str().contains("secret"));
        assert_eq!(principal, Principal::token(b"very-secret-token"));
        assert_ne!(principal, Principal::token(b"another-token"));
    }
}
