//! The node's state: its store, keystore, tokens, chain, wallets, events, metrics and limits,
//! opened from a configuration; and its reload.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::WalletError;
use anya_core_types::{Clock, Label, SystemClock};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::passphrase::read_secret_file;
use anya_hsm::{
    FailoverHsm, HsmError, HsmProvider, Pkcs11Hsm, Pkcs11Options, SecretString, SoftwareHsm, SoftwareOptions,
};
use anya_storage::{KvStore, StoreError};
use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::Notify;

use crate::auth::{write_cookie, Scope, TokenError, TokenLimits, Tokens};
use crate::chain::{Chain, ChainError, Regtest};
use crate::config::{ChainKind, ConfigError, FailoverKind, HsmKind, NodeConfig};
use crate::dlc::{Dlc, DlcStartError};
use crate::events::{Event, Events};
use crate::limits::Limits;
use crate::ln::{Ln, LnStartError};
use crate::metrics::{MeteredStore, Metrics};
use crate::tls;
use crate::wallets::{lock, Wallets};
use anya_layer2::dlc::{Oracle, OracleError, OracleOptions};

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
    /// The store could not be opened.
    #[error("store: {0}")]
    StoreUrl(#[from] anya_storage::StoreUrlError),
    /// The keystore refused (wrong passphrase, rolled-back store, …).
    #[error("keystore: {0}")]
    Hsm(#[from] HsmError),
    /// The token store failed.
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
    /// The chain source failed.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// A secret file (PIN, RPC password) could not be read.
    #[error("{0}")]
    Secret(#[from] anya_hsm::passphrase::PassphraseError),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The oracle could not be opened.
    #[error("oracle: {0}")]
    Oracle(#[from] OracleError),
    /// DLC contracts could not be started.
    #[error("dlc: {0}")]
    Dlc(Box<DlcStartError>),
    /// The Lightning node could not be started.
    #[error("ln: {0}")]
    Ln(Box<LnStartError>),
    /// A configured policy could not be applied.
    #[error("policy of wallet {wallet}: {source}")]
    Policy {
        /// The wallet.
        wallet: String,
        /// Why.
        source: WalletError,
    },
}

impl From<DlcStartError> for NodeError {
    fn from(e: DlcStartError) -> Self {
        Self::Dlc(Box::new(e))
    }
}

impl From<LnStartError> for NodeError {
    fn from(e: LnStartError) -> Self {
        Self::Ln(Box::new(e))
    }
}

/// Why a reload was refused; the running configuration is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The node has no configuration source to reload from.
    #[error("this node was started without a configuration source to reload")]
    NoSource,
    /// The new configuration is invalid.
    #[error("the new configuration is invalid: {0}")]
    Invalid(String),
    /// A setting changed that only a restart applies.
    #[error("{0} changed; it takes effect only on a restart (nothing was reloaded)")]
    NeedsRestart(&'static str),
    /// Applying it failed.
    #[error("{0}")]
    Apply(String),
}

impl From<ConfigError> for ReloadError {
    fn from(e: ConfigError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Reads the configuration again.
pub type LoadConfig = Box<dyn Fn() -> Result<NodeConfig, ConfigError> + Send + Sync>;
/// Checks and applies a configuration's settings that live outside the node.
pub type ApplyConfig = Box<dyn Fn(&NodeConfig) -> Result<(), String> + Send + Sync>;

/// Where a reload reads its configuration and how it applies what the library cannot (the
/// daemon's log filter).
pub struct Reloader {
    /// Reads the configuration again (file, environment, command line).
    pub load: LoadConfig,
    /// Checks and applies what lives outside the node (the log filter); an error refuses the
    /// reload before anything changed.
    pub apply: ApplyConfig,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// A running node's state, shared by every request.
pub struct Node {
    config: RwLock<Arc<NodeConfig>>,
    store: Arc<dyn KvStore>,
    hsm: Arc<dyn HsmProvider>,
    /// The software keystore, when that is the provider (its lock state is a readiness check).
    software: Option<Arc<SoftwareHsm>>,
    /// The failover pair, when configured (readiness says which side is active).
    failover: Option<Arc<FailoverHsm>>,
    tokens: Tokens,
    clock: Arc<dyn Clock>,
    wallets: Wallets,
    /// The DLC oracle, when `oracle.enabled`.
    oracle: Option<Arc<Oracle>>,
    /// This node as a DLC party, when `dlc.enabled`.
    dlc: Option<Arc<Dlc>>,
    /// The Lightning node, when `ln.enabled`.
    ln: Option<Arc<Ln>>,
    events: Events,
    metrics: Arc<Metrics>,
    limits: Limits,
    tls: Option<RustlsConfig>,
    reloader: Mutex<Option<Reloader>>,
    /// The last audit record published as an event.
    audit_seen: Mutex<u64>,
    audit_changed: Notify,
    /// Records were appended while nobody listened.
    audit_behind: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.config().data_dir)
            .field("software_hsm", &self.software.is_some())
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

/// What unlocks a software keystore.
enum Unlock<'a> {
    /// Its passphrase.
    Passphrase(&'a SecretString),
    /// The PKCS#11 token holding its key-encryption key (an enveloped keystore).
    Token(&'a Pkcs11Options),
}

/// Opens and unlocks the software keystore `options` name in `store`, creating it on the first
/// start; whether it was created.
fn open_software(
    store: &Arc<dyn KvStore>,
    options: SoftwareOptions,
    unlock: Unlock<'_>,
) -> Result<(SoftwareHsm, bool), HsmError> {
    match (SoftwareHsm::open(Arc::clone(store), options.clone()), unlock) {
        (Ok(hsm), Unlock::Passphrase(pass)) => hsm.unlock(pass).map(|()| (hsm, false)),
        (Ok(hsm), Unlock::Token(token)) => hsm.unlock_enveloped(token).map(|()| (hsm, false)),
        (Err(HsmError::KeystoreMissing), Unlock::Passphrase(pass)) => {
            SoftwareHsm::create(Arc::clone(store), pass, options).map(|hsm| (hsm, true))
        }
        (Err(HsmError::KeystoreMissing), Unlock::Token(token)) => {
            SoftwareHsm::create_enveloped(Arc::clone(store), token, options).map(|hsm| (hsm, true))
        }
        (Err(e), _) => Err(e),
    }
}

/// The configured HSM: the provider, the software keystore when that is it, and whether this
/// start created the keystore.
type OpenedHsm = (
    Arc<dyn HsmProvider>,
    Option<Arc<SoftwareHsm>>,
    Option<Arc<FailoverHsm>>,
    bool,
);

fn open_hsm(
    config: &NodeConfig,
    store: &Arc<dyn KvStore>,
    clock: &Arc<dyn Clock>,
    passphrase: &SecretString,
) -> Result<OpenedHsm, NodeError> {
    let anchor = config
        .anchor_dir()
        .map(|dir| FileAnchor::open(dir).map(|a| Arc::new(a) as Arc<dyn anya_hsm::anchor::RollbackAnchor>))
        .transpose()?;
    let token = match &config.hsm.pkcs11 {
        Some(p) => {
            let pin = match &p.pin_file {
                Some(file) => read_secret_file(file)?,
                None => std::env::var("ANYA_HSM_PIN")
                    .map(SecretString::new)
                    .map_err(|_| NodeError::Io {
                        what: "the PKCS#11 PIN: set hsm.pkcs11.pin_file or ANYA_HSM_PIN".to_owned(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })?,
            };
            let mut options = Pkcs11Options::new(&p.module, &p.token_label, pin).with_clock(Arc::clone(clock));
            if let Some(prefix) = &p.label_prefix {
                options = options.with_label_prefix(prefix.clone());
            }
            if let Some(anchor) = &anchor {
                options = options.with_anchor(Arc::clone(anchor));
            }
            Some(options)
        }
        None => None,
    };
    let mut options = SoftwareOptions::default().with_clock(Arc::clone(clock));
    if let Some(anchor) = anchor {
        options = options.with_anchor(anchor);
    }
    let software = |hsm: SoftwareHsm, created| {
        let hsm = Arc::new(hsm);
        (Arc::clone(&hsm) as Arc<dyn HsmProvider>, Some(hsm), None, created)
    };
    match (config.hsm.provider, token) {
        (HsmKind::Software, _) => {
            let (hsm, created) = open_software(store, options, Unlock::Passphrase(passphrase))?;
            Ok(software(hsm, created))
        }
        (HsmKind::Envelope, Some(token)) => {
            let (hsm, created) = open_software(store, options, Unlock::Token(&token))?;
            Ok(software(hsm, created))
        }
        (HsmKind::Pkcs11, Some(token)) => {
            let primary: Arc<dyn HsmProvider> = Arc::new(Pkcs11Hsm::open(Arc::clone(store), token)?);
            match config.hsm.failover {
                None => Ok((primary, None, None, false)),
                Some(FailoverKind::Software) => {
                    // The secondary's own namespaces and its own anchor beside the primary's.
                    let mut options = SoftwareOptions::default()
                        .with_clock(Arc::clone(clock))
                        .with_namespace_prefix("anya.secondary");
                    if let Some(dir) = config.anchor_dir() {
                        options = options.with_anchor(Arc::new(FileAnchor::open(dir.join("secondary"))?));
                    }
                    let (secondary, created) = open_software(store, options, Unlock::Passphrase(passphrase))?;
                    let pair = Arc::new(FailoverHsm::new(primary, Arc::new(secondary)));
                    Ok((Arc::clone(&pair) as Arc<dyn HsmProvider>, None, Some(pair), created))
                }
            }
        }
        (_, None) => Err(NodeError::Io {
            what: "hsm.pkcs11".to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
    }
}

fn open_chain(config: &NodeConfig, store: &Arc<dyn KvStore>) -> Result<Chain, NodeError> {
    match (config.chain, &config.bitcoind) {
        (ChainKind::Bitcoind, Some(b)) => {
            let auth = match (&b.cookie_file, &b.user, &b.password_file) {
                (Some(cookie), _, _) => RpcAuth::Cookie(cookie.clone()),
                (None, Some(user), Some(file)) => RpcAuth::UserPass {
                    user: user.clone(),
                    pass: read_secret_file(file)?,
                },
                _ => {
                    return Err(NodeError::Chain(ChainError::Corrupt(
                        "[bitcoind] needs cookie_file or user and password_file".to_owned(),
                    )))
                }
            };
            let client = BitcoindChain::connect(RpcConfig::new(b.url.clone(), auth)).map_err(ChainError::from)?;
            client.check_network(b.network).map_err(ChainError::from)?;
            Ok(Chain::Bitcoind {
                client: Arc::new(client),
                network: b.network,
                last_tip: Mutex::new(None),
                stale_after: Duration::from_secs(b.stale_after_secs),
            })
        }
        _ => Ok(Chain::Regtest(Regtest::open(Arc::clone(store))?)),
    }
}

impl Node {
    /// Opens the node: its store (`config.store`, by default SQLite in `config.data_dir`) and
    /// its HSM (`config.hsm.provider`; `passphrase` unlocks a software keystore and is not used
    /// by the token-backed providers), the keystore created on the first start and unlocked with `passphrase`, with the configured
    /// rollback anchor; the chain source; the configured wallet policies; DLC contracts and the
    /// Lightning node when enabled (the Lightning node runs on the tokio runtime this is called
    /// in, if any). Writes a fresh cookie (revoking the last run's).
    pub fn open(config: NodeConfig, passphrase: &SecretString) -> Result<(Self, Started), NodeError> {
        let io = |what: String| move |source| NodeError::Io { what, source };
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let metrics = Arc::new(Metrics::new());
        let backend = anya_storage::open_url(&config.store_url())?;
        let store: Arc<dyn KvStore> = Arc::new(MeteredStore::new(backend, Arc::clone(&metrics)));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (hsm, software, failover, created_keystore) = open_hsm(&config, &store, &clock, passphrase)?;
        let tokens = Tokens::new(Arc::clone(&store), Arc::clone(&clock))?;
        // The first start (a new keystore, or a token-backed node's first run) prints an admin
        // token once.
        let admin_token = if created_keystore || tokens.list()?.is_empty() {
            Some(
                tokens
                    .create("initial admin", vec![Scope::Admin], TokenLimits::default(), None)?
                    .1,
            )
        } else {
            None
        };
        for old in tokens.list()?.into_iter().filter(|t| t.name == COOKIE_NAME) {
            tokens.revoke(&old.id)?;
        }
        let (_, cookie_token) = tokens.create(COOKIE_NAME, vec![Scope::Admin], TokenLimits::default(), None)?;
        let cookie = dir.join(".cookie");
        write_cookie(&cookie, &cookie_token).map_err(io(format!("writing {}", cookie.display())))?;
        let chain = Arc::new(open_chain(&config, &store)?);
        let events = Events::new(config.events.queue);
        let wallets = Wallets::new(
            Arc::clone(&store),
            Arc::clone(&hsm),
            Arc::clone(&clock),
            chain,
            events.clone(),
        );
        let oracle = if config.oracle.enabled {
            Some(Arc::new(open_oracle(&config, &hsm, &store, &clock)?))
        } else {
            None
        };
        let limits = Limits::new(&config.rate_limit);
        let tls = if config.tls.enabled {
            if tls::ensure_self_signed(&config)? {
                tracing::info!(cert = %tls::paths(&config).0.display(), "made a self-signed TLS certificate");
            }
            Some(RustlsConfig::from_config(tls::server_config(&config)?))
        } else {
            None
        };
        let mut node = Self {
            config: RwLock::new(Arc::new(config)),
            store,
            hsm,
            software,
            failover,
            tokens,
            clock,
            wallets,
            oracle,
            dlc: None,
            ln: None,
            events,
            metrics,
            limits,
            tls,
            reloader: Mutex::new(None),
            audit_seen: Mutex::new(0),
            audit_changed: Notify::new(),
            // Nobody listens yet: the first subscriber moves past what the chain already holds.
            audit_behind: std::sync::atomic::AtomicBool::new(true),
        };
        let config = node.config();
        node.apply_policies(&config)?;
        // After the policies: resuming may sign a funding transaction again through the
        // wallet's policy.
        if config.dlc.enabled {
            node.dlc = Some(Arc::new(crate::dlc::open(crate::dlc::Parts {
                config: &config,
                hsm: &node.hsm,
                store: &node.store,
                clock: &node.clock,
                chain: node.wallets.chain(),
                wallets: &node.wallets,
                oracle: node.oracle.as_ref(),
            })?));
        }
        // After the policies too: the payments may share a wallet's.
        if config.ln.enabled {
            node.ln = Some(crate::ln::open(crate::ln::Parts {
                config: &config,
                hsm: &node.hsm,
                store: &node.store,
                clock: &node.clock,
                chain: node.wallets.chain(),
                wallets: &node.wallets,
                events: &node.events,
            })?);
        }
        Ok((
            node,
            Started {
                created_keystore,
                admin_token,
                cookie,
            },
        ))
    }

    /// The configuration it runs with now.
    pub fn config(&self) -> Arc<NodeConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Its store (timed into the metrics).
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Its HSM.
    pub fn hsm(&self) -> &dyn HsmProvider {
        &*self.hsm
    }

    /// Whether the HSM can sign: the software keystore is unlocked, or the token answers.
    pub fn hsm_ready(&self) -> Result<&'static str, String> {
        if let Some(pair) = &self.failover {
            return match pair.health_check() {
                Ok(anya_hsm::failover::Active::Primary) => Ok("primary answering"),
                Ok(_) => Ok("secondary active: the primary does not answer"),
                Err(e) => Err(e.to_string()),
            };
        }
        match &self.software {
            Some(software) if software.is_unlocked() => Ok("unlocked"),
            Some(_) => Err("locked".to_owned()),
            None => self
                .hsm
                .list_keys()
                .map(|_| "token answering")
                .map_err(|e| e.to_string()),
        }
    }

    /// Its API tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Its clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Its wallets.
    pub fn wallets(&self) -> &Wallets {
        &self.wallets
    }

    /// Its DLC oracle, when the configuration enables it.
    pub fn oracle(&self) -> Option<&Arc<Oracle>> {
        self.oracle.as_ref()
    }

    /// This node as a DLC party, when the configuration enables it.
    pub fn dlc(&self) -> Option<&Arc<Dlc>> {
        self.dlc.as_ref()
    }

    /// Its Lightning node, when the configuration enables it.
    pub fn ln(&self) -> Option<&Arc<Ln>> {
        self.ln.as_ref()
    }

    /// Runs the DLC contracts' periodic work now (new blocks, funding confirmations, closes by
    /// CET once attested, refunds after the locktime) and publishes each contract whose state
    /// changed as a `dlc_contract` event; returns them.
    pub async fn dlc_tick(
        &self,
    ) -> Result<Vec<anya_layer2::dlc::contracts::ContractSummary>, anya_layer2::dlc::contracts::DlcError> {
        let Some(dlc) = &self.dlc else { return Ok(Vec::new()) };
        let changed = dlc.service().tick().await?;
        for summary in &changed {
            tracing::info!(contract = %summary.id, state = summary.state, "DLC contract changed state");
            self.events.publish(dlc.event(summary));
        }
        self.audit_changed();
        Ok(changed)
    }

    /// Its chain source.
    pub fn chain(&self) -> &Arc<Chain> {
        self.wallets.chain()
    }

    /// Its event bus.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Its rate limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Its TLS configuration, when it serves HTTPS.
    pub fn tls(&self) -> Option<&RustlsConfig> {
        self.tls.as_ref()
    }

    /// Whether the configuration names `wallet`'s policy (then the API may not change it).
    pub fn policy_from_config(&self, wallet: &str) -> bool {
        self.config().policy.contains_key(wallet)
    }

    /// Sets the policy of every existing wallet the configuration names.
    fn apply_policies(&self, config: &NodeConfig) -> Result<(), NodeError> {
        let existing = self.wallets.list().map_err(|source| NodeError::Policy {
            wallet: "*".to_owned(),
            source,
        })?;
        for (name, body) in &config.policy {
            let Some(label) = existing.iter().find(|l| l.as_str() == name) else {
                continue;
            };
            self.apply_policy(label, body, config)
                .map_err(|source| NodeError::Policy {
                    wallet: name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn apply_policy(
        &self,
        wallet: &Label,
        body: &crate::config::PolicyBody,
        config: &NodeConfig,
    ) -> Result<(), WalletError> {
        let rules = body
            .to_policy(config.network())
            .map_err(|e| WalletError::Descriptor(e.into()))?;
        let handle = self.wallets.get(wallet)?;
        let w = lock(&handle);
        if w.policy().rules()? != rules {
            w.policy().set_rules(&rules)?;
        }
        Ok(())
    }

    /// Applies the configured policy of a wallet just created.
    pub fn on_wallet_created(&self, wallet: &Label) -> Result<(), WalletError> {
        let config = self.config();
        match config.policy.get(wallet.as_str()) {
            Some(body) => self.apply_policy(wallet, body, &config),
            None => Ok(()),
        }
    }

    /// Sets where [`reload`](Self::reload) reads the configuration from.
    pub fn set_reloader(&self, reloader: Reloader) {
        *self.reloader.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reloader);
    }

    /// Reads the configuration again and applies what may change while running: rate limits,
    /// wallet policies, the log filter, the TLS certificate, the shutdown grace period. A new configuration that
    /// is invalid, or that changes what only a restart applies (listen address, data
    /// directory, chain, HSM, body limit, event queue), is refused and the running one stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let guard = self.reloader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let reloader = guard.as_ref().ok_or(ReloadError::NoSource)?;
        let new = (reloader.load)()?;
        let old = self.config();
        for (key, same) in [
            ("listen", old.listen == new.listen),
            ("data_dir", old.data_dir == new.data_dir),
            ("store", old.store == new.store),
            ("chain", old.chain == new.chain),
            ("bitcoind", old.bitcoind == new.bitcoind),
            ("hsm", old.hsm == new.hsm),
            ("api.body_limit", old.api.body_limit == new.api.body_limit),
            ("events.queue", old.events.queue == new.events.queue),
            ("log.format", old.log.format == new.log.format),
            ("tls.enabled", old.tls.enabled == new.tls.enabled),
            ("oracle.enabled", old.oracle.enabled == new.oracle.enabled),
            ("oracle.key", old.oracle.key == new.oracle.key),
            ("oracle.allow_early", old.oracle.allow_early == new.oracle.allow_early),
            ("oracle.only", old.oracle.only == new.oracle.only),
            ("dlc", old.dlc == new.dlc),
            ("ln", old.ln == new.ln),
        ] {
            if !same {
                return Err(ReloadError::NeedsRestart(key));
            }
        }
        // Every policy must apply before anything changes.
        for body in new.policy.values() {
            body.to_policy(new.network()).map_err(ReloadError::Invalid)?;
        }
        let certificate = match &self.tls {
            Some(_) => Some(tls::server_config(&new).map_err(|e| ReloadError::Invalid(e.to_string()))?),
            None => None,
        };
        (reloader.apply)(&new).map_err(ReloadError::Invalid)?;
        if let (Some(current), Some(certificate)) = (&self.tls, certificate) {
            current.reload_from_config(certificate);
        }
        self.apply_policies(&new)
            .map_err(|e| ReloadError::Apply(e.to_string()))?;
        self.limits.reload(&new.rate_limit);
        if let Some(oracle) = &self.oracle {
            set_price_feeds(oracle, &new);
        }
        *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        self.events.publish(Event::ConfigReloaded);
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Says that audit records were appended: the background task publishes them as events
    /// when anyone listens. With no subscriber nothing is read; the next subscriber starts
    /// after the records appended before it came ([`audit_catch_up`](Self::audit_catch_up)).
    pub fn audit_changed(&self) {
        if self.events.subscribers() > 0 {
            self.audit_changed.notify_one();
        } else {
            self.audit_behind.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Moves past the audit records appended while nobody listened, without publishing them.
    pub fn audit_catch_up(&self) {
        if !self.audit_behind.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.follow_audit(false) {
            tracing::warn!(error = %e, "reading the audit chain for events");
            self.audit_behind.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Reads the audit records after the last one seen, publishing each as an event when
    /// `publish`.
    fn follow_audit(&self, publish: bool) -> Result<(), HsmError> {
        let mut seen = self
            .audit_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let records = self.hsm.audit_records(*seen, 1000)?;
            let Some(last) = records.last() else { return Ok(()) };
            *seen = last.seq;
            for r in records.iter().filter(|_| publish) {
                self.events.publish(Event::AuditAppended {
                    record: r.seq,
                    operation: format!("{:?}", r.operation),
                    key_id: r.key_id.as_ref().map(|k| k.as_str().to_owned()),
                    outcome: r.outcome,
                });
            }
        }
    }

    /// Work the node does beside requests, until dropped: publishing audit appends as events,
    /// forgetting idle rate-limit buckets.
    pub async fn background(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let poll_secs = match (&**self.chain(), &self.config().bitcoind) {
            (Chain::Bitcoind { .. }, Some(b)) => Some(b.poll_secs),
            _ => None,
        };
        let mut poll = tokio::time::interval(Duration::from_secs(poll_secs.unwrap_or(3600)));
        let mut oracle_tick = tokio::time::interval(Duration::from_secs(self.config().oracle.tick_secs));
        oracle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dlc_tick = tokio::time::interval(Duration::from_secs(self.config().dlc.tick_secs));
        dlc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = dlc_tick.tick(), if self.dlc.is_some() => {
                    let node = Arc::clone(&self);
                    match tokio::spawn(async move { node.dlc_tick().await }).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "the DLC contract check"),
                        Err(e) => tracing::warn!(error = %e, "the DLC contract check task failed"),
                    }
                }
                _ = oracle_tick.tick(), if self.oracle.is_some() => {
                    let node = Arc::clone(&self);
                    if let Err(e) = tokio::task::spawn_blocking(move || node.oracle_tick()).await {
                        tracing::warn!(error = %e, "the oracle schedule task failed");
                    }
                }
                _ = poll.tick(), if poll_secs.is_some() => {
                    let node = Arc::clone(&self);
                    if let Err(e) = tokio::task::spawn_blocking(move || node.sync_all()).await {
                        tracing::warn!(error = %e, "the wallet sync task failed");
                    }
                }
                () = self.audit_changed.notified() => {
                    let node = Arc::clone(&self);
                    match tokio::task::spawn_blocking(move || node.follow_audit(true)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "reading the audit chain for events"),
                        Err(e) => tracing::warn!(error = %e, "the audit event task failed"),
                    }
                }
                _ = sweep.tick() => self.limits.sweep(),
            }
        }
    }

    /// Announces the scheduled price events that are due and attests those that matured, for
    /// every asset with a schedule; what it does is published as events.
    pub fn oracle_tick(&self) {
        let Some(oracle) = &self.oracle else { return };
        let config = self.config();
        let now = self.clock.now();
        for (name, asset) in &config.oracle.assets {
            let Some(schedule) = asset.schedule(name) else { continue };
            let tick = schedule.tick(oracle, now);
            for (event_id, maturity) in tick.announced {
                self.events.publish(Event::OracleAnnounced { event_id, maturity });
            }
            for attestation in tick.attested {
                self.publish_attested(attestation);
            }
            for (id, e) in tick.failed {
                tracing::warn!(asset = %name, event = %id, error = %e, "oracle schedule");
                self.publish_refused(&id, &e);
            }
        }
        self.audit_changed();
    }

    /// Publishes an attestation made.
    pub(crate) fn publish_attested(&self, attestation: anya_layer2::dlc::messages::OracleAttestation) {
        self.events.publish(Event::OracleAttested {
            event_id: attestation.event_id,
            outcomes: attestation.outcomes,
        });
    }

    /// Publishes a price refusal (other errors are not events).
    pub(crate) fn publish_refused(&self, event_id: &str, e: &OracleError) {
        use anya_layer2::dlc::price::PriceError;
        let code = match e {
            OracleError::Price { source, .. } => match source {
                PriceError::CircuitBreaker { .. } => "circuit_breaker",
                PriceError::Spread { .. } => "price_spread",
                PriceError::NotEnoughSources { .. } => "price_sources",
                _ => "price_rules",
            },
            OracleError::Halted { .. } => "price_halted",
            _ => return,
        };
        self.events.publish(Event::OracleRefused {
            event_id: event_id.to_owned(),
            code: code.to_owned(),
            detail: e.to_string(),
        });
    }

    /// Syncs every wallet with the chain (what it finds is published as events); a wallet that
    /// fails is logged and the others go on.
    pub fn sync_all(&self) {
        let names = match self.wallets.list() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing wallets to sync");
                return;
            }
        };
        for name in names {
            let result = self.wallets.get(&name).map_err(ChainError::from).and_then(|handle| {
                let mut wallet = lock(&handle);
                self.wallets.sync(&mut wallet)
            });
            if let Err(e) = result {
                tracing::warn!(wallet = %name, error = %e, "sync");
            }
        }
    }

    /// Stops the Lightning node, if any, and makes every audit record durable (at shutdown).
    pub fn close(&self) -> Result<(), HsmError> {
        if let Some(ln) = &self.ln {
            ln.stop();
        }
        self.hsm.flush_audit()
    }
}

/// Opens the oracle on the node's HSM and store, with the configured price feeds.
fn open_oracle(
    config: &NodeConfig,
    hsm: &Arc<dyn HsmProvider>,
    store: &Arc<dyn KvStore>,
    clock: &Arc<dyn Clock>,
) -> Result<Oracle, NodeError> {
    let key = Label::new(config.oracle.key.clone()).map_err(HsmError::from)?;
    let options = OracleOptions {
        key,
        allow_early: config.oracle.allow_early,
        ..OracleOptions::default()
    };
    let oracle = Oracle::open(Arc::clone(hsm), Arc::clone(store), Arc::clone(clock), options)?;
    set_price_feeds(&oracle, config);
    tracing::info!(public_key = %oracle.public_key(), "oracle serving");
    Ok(oracle)
}

fn set_price_feeds(oracle: &Oracle, config: &NodeConfig) {
    for (name, asset) in &config.oracle.assets {
        oracle.set_price_feed(name, asset.feed());
    }
}
