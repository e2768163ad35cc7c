//! The node's state: its store, its keystore and its tokens, opened from a configuration.

use std::path::PathBuf;
use std::sync::Arc;

use anya_core_types::{Clock, SystemClock};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmError, SecretString, SoftwareHsm, SoftwareOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore, StoreError};

use crate::auth::{write_cookie, Scope, TokenError, Tokens};
use crate::config::NodeConfig;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or directory could not be made or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The keystore refused (wrong passphrase, rolled-back store, …).
    #[error("keystore: {0}")]
    Hsm(#[from] HsmError),
    /// The token store failed.
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
}

/// A running node's state, shared by every request.
pub struct Node {
    config: NodeConfig,
    store: Arc<dyn KvStore>,
    hsm: SoftwareHsm,
    tokens: Tokens,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.config.data_dir)
            .field("hsm", &self.hsm)
            .finish_non_exhaustive()
    }
}

/// What [`Node::open`] did that the operator must be told.
#[derive(Debug)]
pub struct Started {
    /// Whether the keystore was created by this start.
    pub created_keystore: bool,
    /// On the first start only: an admin token, shown once.
    pub admin_token: Option<String>,
    /// The cookie file holding this run's admin token (mode 0600).
    pub cookie: PathBuf,
}

const COOKIE_NAME: &str = "cookie";

impl Node {
    /// Opens the node in `config.data_dir`: the SQLite store `anya.db` and the software keystore
    /// in it, created on the first start and unlocked with `passphrase`, with the configured
    /// rollback anchor. Writes a fresh cookie (revoking the last run's).
    pub fn open(config: NodeConfig, passphrase: &SecretString) -> Result<(Self, Started), NodeError> {
        let io = |what: String| move |source| NodeError::Io { what, source };
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(dir.join("anya.db"), SqliteOptions::default())?);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut options = SoftwareOptions::default().with_clock(Arc::clone(&clock));
        if let Some(anchor) = config.anchor_dir() {
            options = options.with_anchor(Arc::new(FileAnchor::open(anchor)?));
        }
        let (hsm, created_keystore) = match SoftwareHsm::open(Arc::clone(&store), options.clone()) {
            Ok(hsm) => {
                hsm.unlock(passphrase)?;
                (hsm, false)
            }
            Err(HsmError::KeystoreMissing) => (SoftwareHsm::create(Arc::clone(&store), passphrase, options)?, true),
            Err(e) => return Err(e.into()),
        };
        let tokens = Tokens::new(Arc::clone(&store), Arc::clone(&clock))?;
        let admin_token = if created_keystore {
            Some(tokens.create("initial admin", vec![Scope::Admin], None, None)?.1)
        } else {
            None
        };
        for old in tokens.list()?.into_iter().filter(|t| t.name == COOKIE_NAME) {
            tokens.revoke(&old.id)?;
        }
        let (_, cookie_token) = tokens.create(COOKIE_NAME, vec![Scope::Admin], None, None)?;
        let cookie = dir.join(".cookie");
        write_cookie(&cookie, &cookie_token).map_err(io(format!("writing {}", cookie.display())))?;
        let node = Self {
            config,
            store,
            hsm,
            tokens,
            clock,
        };
        Ok((
            node,
            Started {
                created_keystore,
                admin_token,
                cookie,
            },
        ))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Its store.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Its keystore.
    pub fn hsm(&self) -> &SoftwareHsm {
        &self.hsm
    }

    /// Its API tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Its clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Makes every audit record durable (at shutdown).
    pub fn close(&self) -> Result<(), HsmError> {
        anya_hsm::HsmProvider::flush_audit(&self.hsm)
    }
}
