//! The issuer's signing keys (its JWKS), cached. An unknown key id fetches the set again, at
//! most once per `MIN_REFRESH` (a stream of made-up key ids cannot hammer the issuer); the set
//! is also read again once it is older than `MAX_AGE`, so removed keys stop being accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use super::issuer;

/// The signature algorithms accepted; a key or token naming any other is refused.
pub const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The shortest time between two fetches of the key set.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a fetched key set is trusted before it is read again.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// One verification key and the algorithm its JWK pins, if any.
pub struct Key {
    pub key: DecodingKey,
    pub alg: Option<Algorithm>,
}

pub struct Keys {
    client: reqwest::Client,
    loaded: RwLock<Loaded>,
    /// When the set was last fetched (or tried): one fetch at a time, at most one per `MIN_REFRESH`.
    last_fetch: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Loaded {
    uri: Option<String>,
    keys: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`: used only when the token names none and there is exactly one.
    unnamed: Vec<Arc<Key>>,
    fetched: Option<Instant>,
}

/// Why no key verifies a token.
#[derive(Debug)]
pub enum KeyError {
    /// The set (fetched again if allowed) has no key with this id.
    Unknown(String),
    /// The token names no key and the set has several.
    Unnamed,
    /// The key set could not be read at all.
    Unavailable(String),
}

impl Keys {
    pub fn new(client: reqwest::Client) -> Keys {
        Keys { client, loaded: RwLock::new(Loaded::default()), last_fetch: Mutex::new(None) }
    }

    /// Points at the issuer's `jwks_uri` (from its metadata) and reads the set.
    pub async fn load(&self, uri: &str) -> Result<usize, String> {
        self.loaded.write().await.uri = Some(uri.to_string());
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// Whether a set has been read.
    pub async fn loaded(&self) -> bool {
        self.loaded.read().await.fetched.is_some()
    }

    /// The key a token names (`kid`), fetching the set again when it is unknown or stale.
    pub async fn find(&self, kid: Option<&str>) -> Result<Arc<Key>, KeyError> {
        {
            let loaded = self.loaded.read().await;
            let fresh = loaded.fetched.is_some_and(|at| at.elapsed() < MAX_AGE);
            if fresh && let Some(key) = lookup(&loaded, kid)? {
                return Ok(key);
            }
        }
        self.refresh().await;
        let loaded = self.loaded.read().await;
        if loaded.fetched.is_none() {
            return Err(KeyError::Unavailable("the issuer's keys have not been read yet".into()));
        }
        // The id is the token's to choose: at most 64 characters of it go into messages.
        lookup(&loaded, kid)?.ok_or_else(|| KeyError::Unknown(kid.unwrap_or_default().chars().take(64).collect()))
    }

    /// Fetches the set unless another fetch happened within `MIN_REFRESH`. A failed fetch keeps
    /// the keys already known.
    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(why) = self.fetch().await {
            tracing::warn!("cannot refresh the OAuth issuer's keys: {why}");
        }
    }

    async fn fetch(&self) -> Result<usize, String> {
        let Some(uri) = self.loaded.read().await.uri.clone() else {
            return Err("the issuer's metadata (and so its jwks_uri) has not been read yet".into());
        };
        let body = issuer::fetch(&self.client, &uri).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{uri} is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            let Some(key) = usable(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), Arc::new(key));
                }
                None => unnamed.push(Arc::new(key)),
            }
        }
        let count = keys.len() + unnamed.len();
        let mut loaded = self.loaded.write().await;
        (loaded.keys, loaded.unnamed, loaded.fetched) = (keys, unnamed, Some(Instant::now()));
        Ok(count)
    }
}

fn lookup(loaded: &Loaded, kid: Option<&str>) -> Result<Option<Arc<Key>>, KeyError> {
    match kid {
        Some(kid) => Ok(loaded.keys.get(kid).cloned()),
        None if loaded.unnamed.len() + loaded.keys.len() == 1 => {
            Ok(loaded.unnamed.first().or_else(|| loaded.keys.values().next()).cloned())
        }
        None if loaded.fetched.is_some() => Err(KeyError::Unnamed),
        None => Ok(None),
    }
}

/// A public signing key we can verify with; encryption keys, symmetric keys and keys of an
/// algorithm we do not accept are skipped.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(Algorithm::try_from(alg).ok().filter(|alg| ACCEPTED.contains(alg))?),
        None => None,
    };
    if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    Some(Key { key: DecodingKey::from_jwk(jwk).ok()?, alg })
}
