//! API tokens: scoped, optionally limited to named keys, optionally expiring, stored as SHA-256
//! hashes (the secret is shown once, at creation) and compared in constant time; and the
//! bitcoind-style cookie file holding an admin token for local use.

use std::path::Path;
use std::sync::Arc;

use anya_core_types::Clock;
use anya_storage::{KvStore, Namespace, Scan, StoreError};
use serde::{Deserialize, Serialize};

/// What a token may do. `Admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read keys, public keys, the audit chain, health.
    Read,
    /// Sign with keys (and read).
    Sign,
    /// Everything: create keys and tokens, revoke tokens.
    Admin,
}

/// A token as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    /// The token's public id (the part before the secret).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The only keys it may use, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// The only wallets it may use, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallets: Option<Vec<String>>,
    /// Unix time after which it is refused, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// When it was made (unix seconds).
    pub created: u64,
}

impl TokenInfo {
    /// Whether this token has `scope` (`Admin` has every scope; `Sign` includes `Read`).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| {
            matches!(
                (s, scope),
                (Scope::Admin, _) | (Scope::Sign, Scope::Sign | Scope::Read) | (Scope::Read, Scope::Read)
            )
        })
    }

    /// Whether this token may use key `id`.
    pub fn may_use_key(&self, id: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == id))
    }

    /// Whether this token may use wallet `name`.
    pub fn may_use_wallet(&self, name: &str) -> bool {
        self.wallets.as_ref().is_none_or(|w| w.iter().any(|k| k == name))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    info: TokenInfo,
    /// SHA-256 of the secret, hex.
    hash: String,
}

/// What a token is limited to (`None`: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// The only keys it may use.
    pub keys: Option<Vec<String>>,
    /// The only wallets it may use.
    pub wallets: Option<Vec<String>>,
}

/// Why a presented token was refused. The API says only "missing" or "invalid", never which
/// check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token, or not of the token shape.
    Malformed,
    /// No such token, wrong secret, or revoked.
    Unknown,
    /// Past its expiry.
    Expired,
}

/// Why the token store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness for a new token.
    #[error("no system randomness for a new token")]
    Random,
    /// A token record could not be encoded.
    #[error("token record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How long a token record read from the store is trusted without reading it again: what
/// another process (`anya-node token revoke`) changes in the store takes effect within this.
/// Creations and revocations through this handle take effect at once.
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The tokens of one node, in its store, with the records recently read kept in memory so that
/// most requests verify their token without a store read.
pub struct Tokens {
    store: Arc<dyn KvStore>,
    ns: Namespace,
    clock: Arc<dyn Clock>,
    rng: ring::rand::SystemRandom,
    /// id → the record (`None`: no such token) and when it was read.
    cache: std::sync::RwLock<std::collections::HashMap<String, Cached>>,
}

/// A cached token record (`None`: no such token) and when it was read.
type Cached = (Option<Arc<Stored>>, std::time::Instant);

/// A verification the cache could not answer: read the record, then call
/// [`Tokens::verify_cached`] again.
#[derive(Debug)]
pub struct CacheMiss;

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("ns", &self.ns).finish_non_exhaustive()
    }
}

const PREFIX: &str = "anya_";

fn hex(bytes: &[u8]) -> String {
    bitcoin::hex::DisplayHex::to_lower_hex_string(bytes)
}

fn secret_hash(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// The id and secret of a token of the right shape.
fn split(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// Equal in time that does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// The tokens in `store` under namespace `anya/node/tokens`.
    pub fn new(store: Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        Ok(Self {
            store,
            ns: Namespace::new("anya/node/tokens")?,
            clock,
            rng: ring::rand::SystemRandom::new(),
            cache: std::sync::RwLock::new(std::collections::HashMap::new()),
        })
    }

    fn random_hex<const N: usize>(&self) -> Result<String, TokenError> {
        let mut b = [0u8; N];
        ring::rand::SecureRandom::fill(&self.rng, &mut b).map_err(|_| TokenError::Random)?;
        Ok(hex(&b))
    }

    /// Makes a token; returns what is stored and the token itself (`anya_<id>_<secret>`),
    /// which is shown once and never stored.
    pub fn create(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        limits: TokenLimits,
        expires: Option<u64>,
    ) -> Result<(TokenInfo, String), TokenError> {
        let TokenLimits { keys, wallets } = limits;
        let id = self.random_hex::<8>()?;
        let secret = self.random_hex::<32>()?;
        let info = TokenInfo {
            id: id.clone(),
            name: name.to_owned(),
            scopes,
            keys,
            wallets,
            expires,
            created: self.clock.now().as_secs(),
        };
        let stored = Stored {
            info: info.clone(),
            hash: secret_hash(&secret),
        };
        let bytes = serde_json::to_vec(&stored)?;
        self.store.put(&self.ns, id.as_bytes(), &bytes)?;
        self.forget(&id);
        Ok((info, format!("{PREFIX}{id}_{secret}")))
    }

    /// The token `presented` stands for, if it is one of ours, unexpired (reading its record
    /// from the store when the cache does not hold a fresh one).
    pub fn verify(&self, presented: &str) -> Result<Result<TokenInfo, TokenRefusal>, StoreError> {
        match self.verify_cached(presented) {
            Ok(verdict) => Ok(verdict),
            Err(CacheMiss) => {
                self.refresh(presented)?;
                Ok(self.verify_cached(presented).unwrap_or(Err(TokenRefusal::Unknown)))
            }
        }
    }

    /// [`verify`](Self::verify) from memory only: `Err(CacheMiss)` when the record is not
    /// cached or older than [`TOKEN_CACHE_TTL`] (then [`refresh`](Self::refresh) it). No I/O,
    /// so it runs on an async worker.
    pub fn verify_cached(&self, presented: &str) -> Result<Result<TokenInfo, TokenRefusal>, CacheMiss> {
        let Some((id, secret)) = split(presented) else {
            return Ok(Err(TokenRefusal::Malformed));
        };
        let record = self.fresh(id).ok_or(CacheMiss)?;
        let Some(stored) = record else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if !constant_time_eq(secret_hash(secret).as_bytes(), stored.hash.as_bytes()) {
            return Ok(Err(TokenRefusal::Unknown));
        }
        if stored.info.expires.is_some_and(|t| self.clock.now().as_secs() >= t) {
            return Ok(Err(TokenRefusal::Expired));
        }
        Ok(Ok(stored.info.clone()))
    }

    /// Token `id`'s cached record (`Some(None)`: no such token), if read within
    /// [`TOKEN_CACHE_TTL`].
    fn fresh(&self, id: &str) -> Option<Option<Arc<Stored>>> {
        let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(id)
            .filter(|(_, at)| at.elapsed() <= TOKEN_CACHE_TTL)
            .map(|(record, _)| record.clone())
    }

    /// Reads the record of the token `presented` names into the cache.
    pub fn refresh(&self, presented: &str) -> Result<(), StoreError> {
        match split(presented) {
            Some((id, _)) => self.load(id).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Reads token `id`'s record from the store into the cache.
    fn load(&self, id: &str) -> Result<Option<Arc<Stored>>, StoreError> {
        let record = self
            .store
            .get(&self.ns, id.as_bytes())?
            .and_then(|v| serde_json::from_slice::<Stored>(&v.value).ok())
            .map(Arc::new);
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: unknown ids presented by anyone would otherwise grow it without end.
        if cache.len() >= 10_000 {
            cache.retain(|_, (_, at)| at.elapsed() <= TOKEN_CACHE_TTL);
            if cache.len() >= 10_000 {
                cache.clear();
            }
        }
        cache.insert(id.to_owned(), (record.clone(), std::time::Instant::now()));
        Ok(record)
    }

    fn forget(&self, id: &str) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// Whether token `id` still stands: not revoked, not expired (for connections that outlive
    /// the request that opened them). Answered from the cache while its record is fresh.
    pub fn still_valid(&self, id: &str) -> Result<bool, StoreError> {
        let record = match self.fresh(id) {
            Some(record) => record,
            None => self.load(id)?,
        };
        Ok(record.is_some_and(|s| s.info.expires.is_none_or(|t| self.clock.now().as_secs() < t)))
    }

    /// Revokes token `id`; `false` if there was none.
    pub fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.get(&self.ns, id.as_bytes())?.is_some();
        self.store.delete(&self.ns, id.as_bytes())?;
        self.forget(id);
        Ok(existed)
    }

    /// Every token (without secrets).
    pub fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        Ok(self
            .store
            .scan(&self.ns, Scan::all())?
            .into_iter()
            .filter_map(|e| serde_json::from_slice::<Stored>(&e.value).ok())
            .map(|s| s.info)
            .collect())
    }
}

/// Writes `token` to the cookie file `path`, readable by the owner only (mode 0600), replacing
/// any earlier one.
pub fn write_cookie(path: &Path, token: &str) -> std::io::Result<()> {
    write_private(path, token.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file, readable by the owner only (mode 0600),
/// durably, replacing any earlier file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        let t = |scopes| TokenInfo {
            id: String::new(),
            name: String::new(),
            scopes,
            keys: None,
            wallets: None,
            expires: None,
            created: 0,
        };
        assert!(t(vec![Scope::Admin]).allows(Scope::Sign));
        assert!(t(vec![Scope::Sign]).allows(Scope::Read));
        assert!(!t(vec![Scope::Sign]).allows(Scope::Admin));
        assert!(!t(vec![Scope::Read]).allows(Scope::Sign));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
