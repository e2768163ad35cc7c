//! The node's configuration: one TOML file, every key of which an `ANYA_*` environment variable
//! can override (and the daemon's command-line flags override both).
//!
//! Unknown keys are an error, so a misspelt setting is never silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anya_bitcoin::policy::SpendPolicy;
use bitcoin::secp256k1::{PublicKey, XOnlyPublicKey};
use bitcoin::{Address, Amount, FeeRate, Network};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `ANYA_*` for the environment).
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// The chain the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    /// An in-process regtest chain (the embedded default).
    Regtest,
    /// A bitcoind reached over JSON-RPC.
    Bitcoind,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Where the API listens; default `127.0.0.1:8470`.
    pub listen: SocketAddr,
    /// The data directory: the default store (`anya.db`), the cookie file, the TLS files;
    /// default `./anya-data`.
    pub data_dir: PathBuf,
    /// The store: `sqlite:PATH` (default `sqlite:<data_dir>/anya.db`), `rocksdb:PATH` (with
    /// the `rocksdb` feature) or `postgres://…`. The keystore, wallets, tokens and the regtest
    /// chain all live in it.
    pub store: Option<String>,
    /// The chain source.
    pub chain: ChainKind,
    /// HSM settings.
    pub hsm: HsmConfig,
    /// API settings.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// Rate limits (reloadable).
    pub rate_limit: RateLimitConfig,
    /// The event stream.
    pub events: EventsConfig,
    /// bitcoind, when `chain = "bitcoind"`.
    pub bitcoind: Option<BitcoindConfig>,
    /// TLS.
    pub tls: TlsConfig,
    /// Spending policies by wallet name (reloadable). A wallet named here has its policy set
    /// from this file at start and on every reload; the API refuses to change it.
    pub policy: BTreeMap<String, PolicyBody>,
    /// The DLC oracle service.
    pub oracle: OracleConfig,
    /// DLC contracts: this node as a party.
    pub dlc: DlcConfig,
    /// A Lightning node.
    pub ln: LnConfig,
}

/// A Lightning node (`/v1/ln/…`): ldk-node on this node's HSM and store, chained to the
/// `[bitcoind]` node. Its 64-byte seed is derived inside the HSM from a BIP32 root that allows
/// Lightning node seeds (`"ln": true` when the root or its wallet is made: the usage
/// `DeriveNodeSeed`, audited at each start); its channel state lives in the store (namespace
/// `anya/ln/node`). Its payments pass a spending policy: the one of `wallet` when given
/// (sharing its per-payment and 24-hour limits), else one of its own (`anya/ln/policy`, set
/// with `PUT /v1/ln/policy`). Needs `chain = "bitcoind"`. Every key needs a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LnConfig {
    /// Run the Lightning node (default false).
    pub enabled: bool,
    /// The BIP32 root the node seed is derived from (it must exist, with the Lightning
    /// opt-in, when the node starts); required when enabled.
    pub root: Option<String>,
    /// Which node of the root this is (the last step of the seed's BIP85 path); default 0.
    pub index: u32,
    /// Addresses to accept peer connections on (`"0.0.0.0:9735"`); default none (the node
    /// only connects out).
    pub listen: Vec<SocketAddr>,
    /// The alias the node announces (at most 32 bytes).
    pub alias: Option<String>,
    /// The node wallet whose spending policy the payments pass (and whose 24-hour limit they
    /// share); it must exist when the node starts. Without it, the payments have a policy of
    /// their own.
    pub wallet: Option<String>,
    /// ldk-node's working directory (no keys and no channel state: those are in the HSM and
    /// the store); default `<data_dir>/ln`.
    pub work_dir: Option<PathBuf>,
}

/// DLC contracts (`/v1/dlc/…`): this node offers, accepts and closes contracts funded by one of
/// its wallets, with the oracles listed. Needs `chain = "bitcoind"`, and a wallet whose BIP32
/// root allows DLC contract keys (`"dlc": true` when the wallet or its root is made; see
/// `docs/adr/0006-dlc-contract-keys.md`). Every key needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DlcConfig {
    /// Run DLC contracts (default false).
    pub enabled: bool,
    /// The node wallet that funds contracts and receives their payouts (it must exist when the
    /// node starts).
    pub wallet: Option<String>,
    /// The BIP32 root of the contract keys and of the node's DLC identity; default the
    /// wallet's own root (a BIP84 or BIP86 wallet has one).
    pub root: Option<String>,
    /// The oracles contracts may settle on.
    pub oracles: Vec<DlcOracleConfig>,
    /// How often contracts are checked (confirmations, attestations, refunds), in seconds;
    /// default 10.
    pub tick_secs: u64,
}

impl Default for DlcConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            wallet: None,
            root: None,
            oracles: Vec::new(),
            tick_secs: 10,
        }
    }
}

/// One oracle of `[dlc]`: a remote one (`url`, `kind`) or this node's own (`local = true`,
/// with `[oracle] enabled`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DlcOracleConfig {
    /// This node's own oracle.
    pub local: bool,
    /// The oracle's base URL (`https://oracle.example`).
    pub url: Option<String>,
    /// Its routes: `kormir` (default) or `p2pd` (the p2pderivatives oracle's).
    pub kind: Option<DlcOracleKind>,
    /// Its x-only public key (hex), checked against what it serves when the node starts; without
    /// it, the key it serves then is trusted.
    pub public_key: Option<String>,
    /// How long one request to it may take, in milliseconds; default 10000.
    pub timeout_ms: Option<u64>,
}

/// Which routes a remote oracle serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlcOracleKind {
    /// kormir's (`/pubkey`, `/announcement/{id}`, `/attestation/{id}`).
    Kormir,
    /// The p2pderivatives oracle's (`/oracle/publickey`, `/asset/{asset}/…/{time}`).
    P2pd,
}

/// The DLC oracle service: its routes (kormir's and the p2pderivatives oracle's, beside
/// `/v1/oracle/…`), its key in the HSM, and its price assets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct OracleConfig {
    /// Serve the oracle. It needs the HSM's rollback anchor (`hsm.anchor_dir`, on by default):
    /// an oracle whose store could be restored from an older copy could sign twice.
    pub enabled: bool,
    /// The HSM key that signs (made on the first start); default `oracle`.
    pub key: String,
    /// Attest events before their maturity (default false: refused).
    pub allow_early: bool,
    /// Serve the oracle alone: the key, wallet, PSBT and chain routes answer 404 (what
    /// `anya-oracle` runs with). Needs `enabled`.
    pub only: bool,
    /// How often scheduled events are announced and attested, in seconds; default 10.
    pub tick_secs: u64,
    /// Price assets by name (reloadable: sources, rules and schedules).
    pub assets: BTreeMap<String, AssetConfig>,
}

impl Default for OracleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            key: "oracle".to_owned(),
            allow_early: false,
            only: false,
            tick_secs: 10,
            assets: BTreeMap::new(),
        }
    }
}

/// One price asset: where its price comes from, the rules its quotes must pass, and its
/// schedule of events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AssetConfig {
    /// The HTTP JSON sources.
    pub sources: Vec<anya_layer2::dlc::price::PriceSource>,
    /// N of M, staleness, spread, circuit breaker, timeout.
    #[serde(default)]
    pub rules: anya_layer2::dlc::price::PriceRules,
    /// Seconds between scheduled events (none: events are only made through the API).
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// How many upcoming events are kept announced; default 24.
    #[serde(default = "twenty_four")]
    pub ahead: u32,
    /// How many past intervals are looked at for unattested events; default 24.
    #[serde(default = "twenty_four")]
    pub catch_up: u32,
    /// Digit base; default 2.
    #[serde(default = "two")]
    pub base: u16,
    /// Number of digits; default 20.
    #[serde(default = "twenty")]
    pub nb_digits: u16,
    /// Whether the value has a sign; default false.
    #[serde(default)]
    pub signed: bool,
    /// Power of ten of one unit of the attested integer; default 0.
    #[serde(default)]
    pub precision: i32,
    /// The unit; default `usd/btc`.
    #[serde(default = "usd_per_btc")]
    pub unit: String,
}

fn twenty_four() -> u32 {
    24
}

fn two() -> u16 {
    2
}

fn twenty() -> u16 {
    20
}

fn usd_per_btc() -> String {
    "usd/btc".to_owned()
}

impl AssetConfig {
    /// Its schedule, when it has an interval.
    pub fn schedule(&self, asset: &str) -> Option<anya_layer2::dlc::schedule::PriceSchedule> {
        self.interval_secs
            .map(|interval_secs| anya_layer2::dlc::schedule::PriceSchedule {
                asset: asset.to_owned(),
                interval_secs,
                ahead: self.ahead,
                catch_up: self.catch_up,
                base: self.base,
                nb_digits: self.nb_digits,
                signed: self.signed,
                precision: self.precision,
                unit: self.unit.clone(),
            })
    }

    /// Its sources and rules.
    pub fn feed(&self) -> anya_layer2::dlc::oracle::PriceFeed {
        anya_layer2::dlc::oracle::PriceFeed {
            sources: self.sources.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// TLS settings. Off by default, which only a loopback `listen` allows (unless
/// `allow_plaintext` says otherwise: behind a TLS-terminating proxy on a private network).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Serve HTTPS. Changing it needs a restart.
    pub enabled: bool,
    /// A PEM certificate chain; without one a self-signed certificate is made on the first
    /// start in `<data_dir>/tls/cert.pem`. Reread on reload.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`. Reread on reload.
    pub key_file: Option<PathBuf>,
    /// More names (DNS names or IP addresses) for the self-signed certificate.
    pub names: Vec<String>,
    /// Allow plain HTTP on an address that is not loopback.
    pub allow_plaintext: bool,
}

/// Rate limits: requests per second and burst, per API token and per client address. A rate
/// of 0 turns that limit off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Sustained requests per second per token; default 200.
    pub per_token_per_sec: u32,
    /// Burst per token; default 400.
    pub per_token_burst: u32,
    /// Sustained requests per second per client IP; default 500.
    pub per_ip_per_sec: u32,
    /// Burst per client IP; default 1000.
    pub per_ip_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_token_per_sec: 200,
            per_token_burst: 400,
            per_ip_per_sec: 500,
            per_ip_burst: 1000,
        }
    }
}

/// The event stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EventsConfig {
    /// How many events a subscriber may fall behind before it is told it missed some; default
    /// 1024.
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { queue: 1024 }
    }
}

/// How to reach bitcoind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BitcoindConfig {
    /// `http://127.0.0.1:18443`.
    pub url: String,
    /// Its cookie file (`<datadir>/regtest/.cookie`); or `user` and `password_file`.
    #[serde(default)]
    pub cookie_file: Option<PathBuf>,
    /// An `-rpcuser`.
    #[serde(default)]
    pub user: Option<String>,
    /// A file whose first line is the RPC password (never the password itself in the file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The network it must serve: `bitcoin`, `testnet`, `signet` or `regtest`.
    pub network: Network,
    /// How often every wallet is synced with bitcoind's blocks and mempool, in seconds
    /// (default 10); what the syncs find is published on `/v1/events`.
    #[serde(default = "ten")]
    pub poll_secs: u64,
    /// The node is not ready when bitcoind's tip has not changed for this long, in seconds
    /// (default 7200: two hours without a block is rare on a live network); not checked on
    /// regtest.
    #[serde(default = "two_hours")]
    pub stale_after_secs: u64,
}

fn two_hours() -> u64 {
    7200
}

fn ten() -> u64 {
    10
}

/// A wallet's spending policy, as the config file and the API write it. Absent limits are no
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyBody {
    /// Most satoshis one transaction may send out of the wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_tx_sat: Option<u64>,
    /// Most satoshis all approved transactions may send out in any rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_24h_sat: Option<u64>,
    /// The only addresses a transaction may pay outside the wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowlist: Option<Vec<String>>,
    /// Highest fee rate, sat/vB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fee_rate_sat_vb: Option<u64>,
    /// Highest absolute fee, satoshis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fee_sat: Option<u64>,
    /// Every output that claims to be change must pay the wallet (default true).
    #[serde(default = "yes")]
    pub change_to_wallet: bool,
    /// The only Lightning nodes (hex node ids) a payment under this policy may go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_allowlist: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl PolicyBody {
    /// The rules, with each allowlisted address checked to be of `network`.
    pub fn to_policy(&self, network: Network) -> Result<SpendPolicy, String> {
        let amount = |sat: Option<u64>, what: &str| -> Result<Option<Amount>, String> {
            sat.map(|s| {
                let a = Amount::from_sat(s);
                if a > Amount::MAX_MONEY {
                    Err(format!("{what}: {s} sat is past the money limit"))
                } else {
                    Ok(a)
                }
            })
            .transpose()
        };
        let allowlist = self
            .allowlist
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(|a| {
                        a.parse::<Address<_>>()
                            .map_err(|e| format!("allowlist {a}: {e}"))?
                            .require_network(network)
                            .map(|a| a.script_pubkey())
                            .map_err(|e| format!("allowlist {a}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let max_fee_rate = self
            .max_fee_rate_sat_vb
            .map(|r| FeeRate::from_sat_per_vb(r).ok_or_else(|| format!("max_fee_rate_sat_vb: {r} is too large")))
            .transpose()?;
        let node_allowlist = self
            .node_allowlist
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(|n| n.parse::<PublicKey>().map_err(|e| format!("node_allowlist {n}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(SpendPolicy {
            max_per_tx: amount(self.max_per_tx_sat, "max_per_tx_sat")?,
            max_per_24h: amount(self.max_per_24h_sat, "max_per_24h_sat")?,
            allowlist,
            max_fee_rate,
            max_fee: amount(self.max_fee_sat, "max_fee_sat")?,
            change_to_wallet: self.change_to_wallet,
            node_allowlist,
        })
    }

    /// The rules as the API shows them (a script that is not an address shows as
    /// `script:<hex>`).
    pub fn from_policy(policy: &SpendPolicy, network: Network) -> Self {
        Self {
            max_per_tx_sat: policy.max_per_tx.map(Amount::to_sat),
            max_per_24h_sat: policy.max_per_24h.map(Amount::to_sat),
            allowlist: policy.allowlist.as_ref().map(|list| {
                list.iter()
                    .map(|script| {
                        Address::from_script(script, network)
                            .map_or_else(|_| format!("script:{script:x}"), |a| a.to_string())
                    })
                    .collect()
            }),
            max_fee_rate_sat_vb: policy.max_fee_rate.map(FeeRate::to_sat_per_vb_ceil),
            max_fee_sat: policy.max_fee.map(Amount::to_sat),
            change_to_wallet: policy.change_to_wallet,
            node_allowlist: policy
                .node_allowlist
                .as_ref()
                .map(|list| list.iter().map(ToString::to_string).collect()),
        }
    }
}

/// HSM settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HsmConfig {
    /// `software` (default: a keystore sealed under the passphrase), `envelope` (the software
    /// keystore with its key-encryption key held by the PKCS#11 token) or `pkcs11` (keys live
    /// on the token).
    pub provider: HsmKind,
    /// A file holding the keystore passphrase (its first line). Without it the passphrase comes
    /// from `ANYA_PASSPHRASE` or a prompt; never from a command-line argument.
    pub passphrase_file: Option<PathBuf>,
    /// The PKCS#11 token, for `envelope` and `pkcs11`.
    pub pkcs11: Option<Pkcs11Config>,
    /// With `provider = "pkcs11"`: `"software"` makes a software keystore in the same store (its
    /// own namespaces, unlocked with the passphrase) the secondary that takes over when the
    /// token stops answering (`FailoverHsm`). The secondary must hold the same keys under the
    /// same ids: import them into both; keys made through the API go to the active one only.
    pub failover: Option<FailoverKind>,
    /// The keystore's rollback anchor directory; default the data directory's path with
    /// `.anchor` appended (a sibling, outside what a restore of the data directory touches).
    /// `"none"` runs without one.
    pub anchor_dir: Option<PathBuf>,
}

/// Which HSM provider holds the keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HsmKind {
    /// The software keystore, sealed under a passphrase.
    #[default]
    Software,
    /// The software keystore, its key-encryption key on a PKCS#11 token.
    Envelope,
    /// Keys on a PKCS#11 token.
    Pkcs11,
}

/// The secondary of a failover pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverKind {
    /// A software keystore in the node's store.
    Software,
}

/// A PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Pkcs11Config {
    /// The vendor's module (`/usr/lib/softhsm/libsofthsm2.so`, `libyubihsm_pkcs11.so`, …).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file whose first line is the user PIN; without it, `ANYA_HSM_PIN`.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// The prefix of this node's object labels on the token (default `anya/`), so that
    /// several nodes can share one token.
    #[serde(default)]
    pub label_prefix: Option<String>,
}

/// API settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Largest request body, in bytes; default 64 KiB.
    pub body_limit: usize,
    /// How long shutdown waits for requests in flight, in seconds; default 10.
    pub shutdown_grace_secs: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `anya_node=debug`, …); default `info`. Reloadable.
    pub level: String,
    /// `pretty` (default) or `json`, one object per line.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            data_dir: PathBuf::from("./anya-data"),
            store: None,
            chain: ChainKind::Regtest,
            hsm: HsmConfig::default(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
            rate_limit: RateLimitConfig::default(),
            events: EventsConfig::default(),
            bitcoind: None,
            tls: TlsConfig::default(),
            policy: BTreeMap::new(),
            oracle: OracleConfig::default(),
            dlc: DlcConfig::default(),
            ln: LnConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

/// Environment variables that override keys of the file: `ANYA_<SECTION>_<KEY>` in upper case
/// (`ANYA_API_BODY_LIMIT`), or `ANYA_<KEY>` for top-level keys (`ANYA_LISTEN`).
const ENV_KEYS: &[(&str, &str, &str)] = &[
    ("ANYA_LISTEN", "", "listen"),
    ("ANYA_DATA_DIR", "", "data_dir"),
    ("ANYA_STORE", "", "store"),
    ("ANYA_CHAIN", "", "chain"),
    ("ANYA_HSM_PROVIDER", "hsm", "provider"),
    ("ANYA_HSM_PASSPHRASE_FILE", "hsm", "passphrase_file"),
    ("ANYA_HSM_ANCHOR_DIR", "hsm", "anchor_dir"),
    ("ANYA_API_BODY_LIMIT", "api", "body_limit"),
    ("ANYA_API_SHUTDOWN_GRACE_SECS", "api", "shutdown_grace_secs"),
    ("ANYA_LOG_LEVEL", "log", "level"),
    ("ANYA_LOG_FORMAT", "log", "format"),
    ("ANYA_RATE_LIMIT_PER_TOKEN_PER_SEC", "rate_limit", "per_token_per_sec"),
    ("ANYA_RATE_LIMIT_PER_TOKEN_BURST", "rate_limit", "per_token_burst"),
    ("ANYA_RATE_LIMIT_PER_IP_PER_SEC", "rate_limit", "per_ip_per_sec"),
    ("ANYA_RATE_LIMIT_PER_IP_BURST", "rate_limit", "per_ip_burst"),
    ("ANYA_EVENTS_QUEUE", "events", "queue"),
    ("ANYA_TLS_ENABLED", "tls", "enabled"),
    ("ANYA_TLS_CERT_FILE", "tls", "cert_file"),
    ("ANYA_TLS_KEY_FILE", "tls", "key_file"),
    ("ANYA_ORACLE_ENABLED", "oracle", "enabled"),
    ("ANYA_DLC_ENABLED", "dlc", "enabled"),
    ("ANYA_DLC_WALLET", "dlc", "wallet"),
    ("ANYA_LN_ENABLED", "ln", "enabled"),
    ("ANYA_LN_ROOT", "ln", "root"),
    ("ANYA_LN_WALLET", "ln", "wallet"),
];

impl NodeConfig {
    /// The configuration in `file` (or the defaults without one), with the `ANYA_*` variables
    /// of `env` applied over it.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = file.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: e.to_string(),
        })?;
        for (var, section, key) in ENV_KEYS {
            let Some(value) = env(var) else { continue };
            let value = Self::env_value(key, &value);
            if section.is_empty() {
                table.insert((*key).to_owned(), value);
            } else {
                let entry = table
                    .entry((*section).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => {
                        t.insert((*key).to_owned(), value);
                    }
                    _ => {
                        return Err(ConfigError::Parse {
                            path: origin,
                            message: format!("[{section}] is not a table"),
                        })
                    }
                }
            }
        }
        let config: NodeConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: format!("{origin} with the ANYA_* environment"),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// An environment value as TOML: numbers stay numbers, anything else is a string.
    fn env_value(key: &str, value: &str) -> toml::Value {
        match key {
            "body_limit"
            | "shutdown_grace_secs"
            | "per_token_per_sec"
            | "per_token_burst"
            | "per_ip_per_sec"
            | "per_ip_burst"
            | "queue" => value
                .parse::<i64>()
                .map_or_else(|_| toml::Value::String(value.to_owned()), toml::Value::Integer),
            "enabled" => value
                .parse::<bool>()
                .map_or_else(|_| toml::Value::String(value.to_owned()), toml::Value::Boolean),
            _ => toml::Value::String(value.to_owned()),
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=16 * 1024 * 1024).contains(&self.api.body_limit) {
            return Err(ConfigError::Invalid {
                key: "api.body_limit",
                message: format!("{} bytes: must be 1 KiB to 16 MiB", self.api.body_limit),
            });
        }
        if self.api.shutdown_grace_secs > 600 {
            return Err(ConfigError::Invalid {
                key: "api.shutdown_grace_secs",
                message: "at most 600".to_owned(),
            });
        }
        if !self.tls.enabled && !self.tls.allow_plaintext && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "tls.enabled",
                message: format!(
                    "listening on {} without TLS would send tokens in the clear; enable [tls] (or set tls.allow_plaintext behind a TLS proxy)",
                    self.listen
                ),
            });
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls",
                message: "cert_file and key_file go together".to_owned(),
            });
        }
        if self.hsm.provider != HsmKind::Software && self.hsm.pkcs11.is_none() {
            return Err(ConfigError::Invalid {
                key: "hsm.pkcs11",
                message: "provider = \"envelope\" or \"pkcs11\" needs an [hsm.pkcs11] token".to_owned(),
            });
        }
        if self.hsm.failover.is_some() && self.hsm.provider != HsmKind::Pkcs11 {
            return Err(ConfigError::Invalid {
                key: "hsm.failover",
                message: "a failover secondary backs a PKCS#11 primary (provider = \"pkcs11\")".to_owned(),
            });
        }
        if !(1..=1 << 20).contains(&self.events.queue) {
            return Err(ConfigError::Invalid {
                key: "events.queue",
                message: "1 to 1048576 events".to_owned(),
            });
        }
        if self.chain == ChainKind::Bitcoind && self.bitcoind.is_none() {
            return Err(ConfigError::Invalid {
                key: "bitcoind",
                message: "chain = \"bitcoind\" needs a [bitcoind] section".to_owned(),
            });
        }
        if let Some(b) = &self.bitcoind {
            if !(1..=3600).contains(&b.poll_secs) {
                return Err(ConfigError::Invalid {
                    key: "bitcoind.poll_secs",
                    message: "1 to 3600 seconds".to_owned(),
                });
            }
            if b.cookie_file.is_some() == (b.user.is_some() || b.password_file.is_some()) {
                return Err(ConfigError::Invalid {
                    key: "bitcoind",
                    message: "give either cookie_file or user and password_file".to_owned(),
                });
            }
        }
        self.validate_oracle()?;
        self.validate_dlc()?;
        self.validate_ln()?;
        let network = self.network();
        for (wallet, body) in &self.policy {
            body.to_policy(network).map_err(|message| ConfigError::Invalid {
                key: "policy",
                message: format!("[policy.{wallet}] {message}"),
            })?;
        }
        Ok(())
    }

    fn validate_oracle(&self) -> Result<(), ConfigError> {
        let o = &self.oracle;
        let invalid = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if o.enabled && self.anchor_dir().is_none() {
            return invalid(
                "oracle.enabled",
                "the oracle needs the HSM's rollback anchor (hsm.anchor_dir must not be \"none\")".to_owned(),
            );
        }
        if o.only && !o.enabled {
            return invalid(
                "oracle.only",
                "serving the oracle alone needs oracle.enabled".to_owned(),
            );
        }
        if anya_core_types::Label::new(o.key.clone()).is_err() {
            return invalid("oracle.key", format!("{:?} is not a key id", o.key));
        }
        if !(1..=3600).contains(&o.tick_secs) {
            return invalid("oracle.tick_secs", "1 to 3600 seconds".to_owned());
        }
        for (name, asset) in &o.assets {
            let ok_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return invalid(
                    "oracle.assets",
                    format!("{name:?}: 1 to 32 letters, digits, '-' or '_'"),
                );
            }
            if asset.sources.is_empty() || asset.rules.min_sources == 0 || asset.rules.min_sources > asset.sources.len()
            {
                return invalid(
                    "oracle.assets",
                    format!(
                        "[oracle.assets.{name}] needs sources and 1 <= rules.min_sources <= {} sources",
                        asset.sources.len()
                    ),
                );
            }
            if asset.interval_secs == Some(0) {
                return invalid(
                    "oracle.assets",
                    format!("[oracle.assets.{name}] interval_secs must be positive"),
                );
            }
            if let Err(e) = anya_layer2::dlc::digits::Digits::new(asset.base, asset.nb_digits, asset.signed) {
                return invalid("oracle.assets", format!("[oracle.assets.{name}] {e}"));
            }
        }
        Ok(())
    }

    fn validate_dlc(&self) -> Result<(), ConfigError> {
        let d = &self.dlc;
        let invalid = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if !(1..=3600).contains(&d.tick_secs) {
            return invalid("dlc.tick_secs", "1 to 3600 seconds".to_owned());
        }
        for (key, name) in [("dlc.wallet", &d.wallet), ("dlc.root", &d.root)] {
            if let Some(name) = name {
                if anya_core_types::Label::new(name.clone()).is_err() {
                    return invalid(key, format!("{name:?} is not a wallet or key name"));
                }
            }
        }
        for (i, o) in d.oracles.iter().enumerate() {
            match (o.local, &o.url) {
                (true, None) if o.kind.is_none() && o.public_key.is_none() && o.timeout_ms.is_none() => {
                    if d.enabled && !self.oracle.enabled {
                        return invalid(
                            "dlc.oracles",
                            format!("oracle {i}: local = true is this node's oracle, which needs [oracle] enabled"),
                        );
                    }
                }
                (true, _) => {
                    return invalid(
                        "dlc.oracles",
                        format!("oracle {i}: local = true takes no url, kind, public_key or timeout_ms"),
                    )
                }
                (false, None) => {
                    return invalid(
                        "dlc.oracles",
                        format!("oracle {i}: give url (a remote oracle) or local = true (this node's)"),
                    )
                }
                (false, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return invalid("dlc.oracles", format!("oracle {i}: {url:?} is not an http(s) URL"));
                    }
                    if let Some(key) = &o.public_key {
                        if key.parse::<XOnlyPublicKey>().is_err() {
                            return invalid(
                                "dlc.oracles",
                                format!("oracle {i}: public_key {key:?} is not an x-only public key in hex"),
                            );
                        }
                    }
                    if o.timeout_ms.is_some_and(|t| !(100..=120_000).contains(&t)) {
                        return invalid("dlc.oracles", format!("oracle {i}: timeout_ms is 100 to 120000"));
                    }
                }
            }
        }
        if !d.enabled {
            return Ok(());
        }
        self.require_bitcoind_node("dlc.enabled", "DLC contracts")?;
        if d.wallet.is_none() {
            return invalid(
                "dlc.wallet",
                "[dlc] enabled needs the wallet that funds contracts".to_owned(),
            );
        }
        if d.oracles.is_empty() {
            return invalid(
                "dlc.oracles",
                "[dlc] enabled needs at least one oracle ([[dlc.oracles]] url = … or local = true)".to_owned(),
            );
        }
        if d.oracles.iter().filter(|o| o.local).count() > 1 {
            return invalid("dlc.oracles", "local = true is listed twice".to_owned());
        }
        Ok(())
    }

    /// What an enabled `[dlc]` or `[ln]` (`key`, running `what`) needs of the rest: a full
    /// node (not oracle-only) on a real bitcoind.
    fn require_bitcoind_node(&self, key: &'static str, what: &str) -> Result<(), ConfigError> {
        let message = if self.oracle.only {
            format!("an oracle-only node (oracle.only, anya-oracle) does not run {what}")
        } else if self.chain != ChainKind::Bitcoind {
            format!("{what} needs a real node: chain = \"bitcoind\" with a [bitcoind] section")
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid { key, message })
    }

    fn validate_ln(&self) -> Result<(), ConfigError> {
        let l = &self.ln;
        let invalid = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        for (key, name) in [("ln.root", &l.root), ("ln.wallet", &l.wallet)] {
            if let Some(name) = name {
                if anya_core_types::Label::new(name.clone()).is_err() {
                    return invalid(key, format!("{name:?} is not a key or wallet name"));
                }
            }
        }
        if l.index >= 1 << 31 {
            return invalid("ln.index", "below 2^31 (a hardened BIP85 index)".to_owned());
        }
        if l.alias.as_ref().is_some_and(|a| a.is_empty() || a.len() > 32) {
            return invalid("ln.alias", "1 to 32 bytes".to_owned());
        }
        if let Some(a) = l.listen.iter().find(|a| **a == self.listen) {
            return invalid("ln.listen", format!("{a} is the API's own address (listen)"));
        }
        if !l.enabled {
            return Ok(());
        }
        self.require_bitcoind_node("ln.enabled", "a Lightning node")?;
        if l.root.is_none() {
            return invalid(
                "ln.root",
                "[ln] enabled needs the BIP32 root its node seed is derived from".to_owned(),
            );
        }
        Ok(())
    }

    /// ldk-node's working directory: `ln.work_dir`, or `<data_dir>/ln`.
    pub fn ln_work_dir(&self) -> PathBuf {
        self.ln.work_dir.clone().unwrap_or_else(|| self.data_dir.join("ln"))
    }

    /// The network the node serves.
    pub fn network(&self) -> Network {
        match (&self.chain, &self.bitcoind) {
            (ChainKind::Bitcoind, Some(b)) => b.network,
            _ => Network::Regtest,
        }
    }

    /// The store's address.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("anya.db").display()))
    }

    /// The rollback anchor directory, or `None` when configured as `"none"`.
    pub fn anchor_dir(&self) -> Option<PathBuf> {
        match &self.hsm.anchor_dir {
            Some(dir) if dir.as_os_str() == "none" => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let mut sibling = self.data_dir.clone().into_os_string();
                sibling.push(".anchor");
                Some(PathBuf::from(sibling))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_a_file() {
        let c = NodeConfig::load(None, no_env).expect("defaults");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8470)));
        assert_eq!(c.api.body_limit, 64 * 1024);
        assert_eq!(c.anchor_dir(), Some(PathBuf::from("./anya-data.anchor")));
    }

    #[test]
    fn the_example_file_is_a_valid_config_of_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/anya-node.example.toml");
        let c = NodeConfig::load(Some(&path), no_env).expect("the example parses");
        let d = NodeConfig::default();
        assert_eq!((c.listen, &c.data_dir, c.chain), (d.listen, &d.data_dir, d.chain));
        assert_eq!(c.rate_limit, d.rate_limit);
        assert_eq!(c.hsm, d.hsm);
        assert_eq!(c.tls, d.tls);
        assert_eq!(c.events.queue, d.events.queue);
        // Every commented-out line that sets a key is valid too, with its section.
        let text = std::fs::read_to_string(&path).expect("read");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest.split("  #").next().unwrap_or(rest),
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let table: toml::Table = toml::from_str(&uncommented).expect("the uncommented example is TOML");
        assert!(
            table.contains_key("bitcoind") && table.contains_key("policy"),
            "{table:?}"
        );
        let all: NodeConfig = toml::Value::Table(table)
            .try_into()
            .expect("every documented key is a key of the configuration, with a value of its type");
        assert!(all.hsm.pkcs11.is_some() && all.tls.cert_file.is_some() && all.store.is_some());
        assert_eq!(c.oracle, d.oracle);
        assert_eq!(c.dlc, d.dlc);
        assert_eq!(c.ln, d.ln);
        assert!(
            all.ln.root.is_some() && all.ln.wallet.is_some() && !all.ln.listen.is_empty(),
            "{:?}",
            all.ln
        );
        assert_eq!(all.dlc.oracles.len(), 2, "{:?}", all.dlc);
        let btcusd = &all.oracle.assets["btcusd"];
        assert_eq!((btcusd.sources.len(), btcusd.interval_secs), (2, Some(3600)));
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[api]\nbody_limit = 4096\n").expect("write");
        let c =
            NodeConfig::load(Some(&path), |v| (v == "ANYA_API_BODY_LIMIT").then(|| "8192".to_owned())).expect("config");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.api.body_limit, 8192);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        std::fs::write(&path, "[api]\nbody_limt = 4096\n").expect("write");
        let err = NodeConfig::load(Some(&path), no_env).unwrap_err();
        assert!(err.to_string().contains("body_limt"), "{err}");
        std::fs::write(&path, "[api]\nbody_limit = 1\n").expect("write");
        let err = NodeConfig::load(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "api.body_limit",
                    ..
                }
            ),
            "{err}"
        );
        let err = NodeConfig::load(None, |v| (v == "ANYA_LISTEN").then(|| "not an address".to_owned())).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn dlc_needs_bitcoind_a_wallet_and_oracles_it_can_reach() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        let bitcoind = "chain = \"bitcoind\"\n[bitcoind]\nurl = \"http://127.0.0.1:1\"\ncookie_file = \"/c\"\nnetwork = \"regtest\"\n";
        let load = |text: &str| {
            std::fs::write(&path, text).expect("write");
            NodeConfig::load(Some(&path), no_env)
        };
        let key = |text: &str| match load(text) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("{text}: {other:?}"),
        };
        let remote = "[[dlc.oracles]]\nurl = \"http://127.0.0.1:2\"\n";
        assert_eq!(
            key(&format!("[dlc]\nenabled = true\nwallet = \"w\"\n{remote}")).0,
            "dlc.enabled"
        );
        assert_eq!(
            key(&format!("{bitcoind}[dlc]\nenabled = true\n{remote}")).0,
            "dlc.wallet"
        );
        assert_eq!(
            key(&format!("{bitcoind}[dlc]\nenabled = true\nwallet = \"w\"\n")).0,
            "dlc.oracles"
        );
        let (k, m) = key(&format!(
            "{bitcoind}[dlc]\nenabled = true\nwallet = \"w\"\n[[dlc.oracles]]\nlocal = true\n"
        ));
        assert!(k == "dlc.oracles" && m.contains("[oracle] enabled"), "{m}");
        for oracle in [
            "[[dlc.oracles]]\n",
            "[[dlc.oracles]]\nlocal = true\nurl = \"http://x\"\n",
            "[[dlc.oracles]]\nurl = \"ftp://x\"\n",
            "[[dlc.oracles]]\nurl = \"http://x\"\npublic_key = \"zz\"\n",
            "[[dlc.oracles]]\nurl = \"http://x\"\ntimeout_ms = 1\n",
        ] {
            assert_eq!(
                key(&format!("{bitcoind}[dlc]\nenabled = true\nwallet = \"w\"\n{oracle}")).0,
                "dlc.oracles",
                "{oracle}"
            );
        }
        assert_eq!(key(&format!("{bitcoind}[dlc]\nwallet = \"a b\"\n")).0, "dlc.wallet");
        assert_eq!(key(&format!("{bitcoind}[dlc]\ntick_secs = 0\n")).0, "dlc.tick_secs");
        let c = load(&format!(
            "{bitcoind}[oracle]\nenabled = true\n[dlc]\nenabled = true\nwallet = \"w\"\n[[dlc.oracles]]\nlocal = true\n{remote}kind = \"p2pd\"\n"
        ))
        .expect("valid");
        assert_eq!(c.dlc.oracles.len(), 2);
        assert_eq!(c.dlc.oracles[1].kind, Some(DlcOracleKind::P2pd));
        // A section that is off is checked for its values, not for what running needs.
        load("[dlc]\nwallet = \"w\"\n").expect("disabled needs nothing more");
    }

    #[test]
    fn ln_needs_bitcoind_and_a_root() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        let bitcoind = "chain = \"bitcoind\"\n[bitcoind]\nurl = \"http://127.0.0.1:1\"\ncookie_file = \"/c\"\nnetwork = \"regtest\"\n";
        let load = |text: &str| {
            std::fs::write(&path, text).expect("write");
            NodeConfig::load(Some(&path), no_env)
        };
        let key = |text: &str| match load(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(key("[ln]\nenabled = true\nroot = \"r\"\n"), "ln.enabled");
        assert_eq!(key(&format!("{bitcoind}[ln]\nenabled = true\n")), "ln.root");
        assert_eq!(key(&format!("{bitcoind}[ln]\nroot = \"a b\"\n")), "ln.root");
        assert_eq!(key(&format!("{bitcoind}[ln]\nwallet = \"\"\n")), "ln.wallet");
        assert_eq!(key(&format!("{bitcoind}[ln]\nindex = 2147483648\n")), "ln.index");
        assert_eq!(
            key(&format!("{bitcoind}[ln]\nalias = \"{}\"\n", "a".repeat(33))),
            "ln.alias"
        );
        assert_eq!(
            key(&format!("{bitcoind}[ln]\nlisten = [\"127.0.0.1:8470\"]\n")),
            "ln.listen"
        );
        let c = load(&format!(
            "{bitcoind}[ln]\nenabled = true\nroot = \"r\"\nlisten = [\"127.0.0.1:9735\"]\nalias = \"anya\"\n"
        ))
        .expect("valid");
        assert_eq!(c.ln_work_dir(), c.data_dir.join("ln"));
        assert_eq!(c.ln.listen.len(), 1);
        let err = load(&format!("{bitcoind}[ln]\nlsten = []\n")).expect_err("unknown key");
        assert!(err.to_string().contains("lsten"), "{err}");
    }
}
