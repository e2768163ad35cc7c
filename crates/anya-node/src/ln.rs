//! The node's Lightning node (`[ln]`): `anya-layer2`'s [`LightningNode`] (ldk-node) on the
//! node's HSM, store and bitcoind.
//!
//! **Keys.** The node's 64-byte seed is derived inside the HSM from `ln.root` (BIP85, the
//! audited `DeriveNodeSeed` operation, which the root must allow: `"ln": true` when it is
//! made). Nothing else about the keys is configured: the same root and index give back the
//! same node, with its channels, from the store (namespace [`LN_NS`]).
//!
//! **Spending policy.** Every outgoing payment passes a [`PolicyEngine`] before anything is
//! sent: the one of `ln.wallet` when given (its per-payment limit, its node allowlist, and
//! the 24-hour limit it shares with that wallet's on-chain spends), else one of the node's own
//! in namespace [`POLICY_NS`]. A push to the peer when a channel opens is a payment to it and
//! passes the same policy
//! ([`LightningNode::open_channel`](anya_layer2::lightning::LightningNode::open_channel)).
//!
//! **Events.** A thread of its own takes ldk-node's events as they come, publishes each on
//! the node's event bus (`ln_channel_pending`, `ln_channel_ready`, `ln_channel_closed`,
//! `ln_payment_received`, `ln_payment_successful`, `ln_payment_failed`,
//! `ln_payment_forwarded`) and only then marks it handled, so that an event the process did
//! not publish before it stopped comes again after a restart. A failed payment's policy
//! reservation is released before its event is published (`LightningNode::next_event`).
//!
//! **Runtime.** ldk-node runs on the tokio runtime [`Node::open`](crate::Node::open) is
//! called in (the daemon's), or on one of its own when there is none. [`Ln::stop`] (called by
//! [`Node::close`](crate::Node::close) at shutdown) stops the event thread, then the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anya_bitcoin::policy::PolicyEngine;
use anya_core_types::{Clock, Label};
use anya_hsm::passphrase::{read_secret_file, PassphraseError};
use anya_hsm::{HsmError, HsmProvider, KeyId, Usage};
use anya_layer2::lightning::ldk_node::Event as LdkEvent;
use anya_layer2::lightning::{BitcoindRpc, LightningError, LightningNode, NodeOptions};
use anya_storage::{KvStore, Namespace};
use bitcoin::hex::DisplayHex;
use bitcoin::Network;

use crate::chain::Chain;
use crate::config::{BitcoindConfig, NodeConfig};
use crate::events::{Event, Events};
use crate::wallets::{lock, Wallets};

/// The store namespace of the Lightning node's records.
pub const LN_NS: &str = "anya/ln/node";
/// The store namespace of the payments' own spending policy (without `ln.wallet`).
pub const POLICY_NS: &str = "anya/ln/policy";

/// How long the event thread waits for an event before it checks whether to stop.
const EVENT_POLL: Duration = Duration::from_millis(250);

/// Why the Lightning node did not start (the node does not start either).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LnStartError {
    /// `[ln] enabled` without a bitcoind chain.
    #[error("a Lightning node needs chain = \"bitcoind\"")]
    NotBitcoind,
    /// `ln.root` is not set.
    #[error("ln.root is not set")]
    NoRoot,
    /// The root does not exist.
    #[error(
        "ln.root {root:?} does not exist: start without [ln], create it (POST /v1/keys with \"spec\": \"bip32\", \"ln\": true), then enable [ln]"
    )]
    RootMissing {
        /// The root.
        root: String,
    },
    /// The root does not allow Lightning node seeds.
    #[error(
        "the root key {root:?} does not allow Lightning node seeds (usage DeriveNodeSeed, fixed when a key is made): \
         name a root made with \"ln\": true (POST /v1/keys or POST /v1/wallets) with ln.root"
    )]
    RootNotOptedIn {
        /// The root.
        root: String,
    },
    /// The HSM refused (the root is not a BIP32 root, or the keystore failed).
    #[error("ln.root: {0}")]
    Hsm(#[from] HsmError),
    /// The wallet whose policy the payments share does not exist.
    #[error("ln.wallet {wallet:?} does not exist: start without [ln], create it (POST /v1/wallets), then enable [ln]")]
    WalletMissing {
        /// The wallet.
        wallet: String,
    },
    /// The wallet could not be opened.
    #[error("ln.wallet {wallet:?}: {source}")]
    Wallet {
        /// The wallet.
        wallet: String,
        /// Why.
        source: anya_bitcoin::wallet::WalletError,
    },
    /// `bitcoind.url` does not name a host and port ldk-node can reach.
    #[error("bitcoind.url: {0}")]
    BitcoindUrl(String),
    /// bitcoind's cookie file could not be read.
    #[error("bitcoind.cookie_file: {0}")]
    Cookie(#[source] LightningError),
    /// bitcoind's password file could not be read.
    #[error("bitcoind.password_file: {0}")]
    PasswordFile(#[from] PassphraseError),
    /// `[bitcoind]` names neither a cookie file nor a user and password file.
    #[error("[bitcoind] needs cookie_file or user and password_file")]
    NoCredentials,
    /// The working directory could not be made.
    #[error("ln.work_dir {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// ldk-node refused the options, or the node seed could not be derived.
    #[error("building the Lightning node: {0}")]
    Build(#[source] LightningError),
    /// The node did not start (bitcoind unreachable, a listen address taken, …).
    #[error("starting the Lightning node: {0}")]
    Start(#[source] LightningError),
    /// The event thread could not be started.
    #[error("starting the Lightning event thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The node's Lightning node.
pub struct Ln {
    node: LightningNode,
    root: KeyId,
    wallet: Option<Label>,
    listen: Vec<SocketAddr>,
    alias: Option<String>,
    events: Events,
    stopping: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ln {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ln")
            .field("node", &self.node)
            .field("root", &self.root)
            .field("wallet", &self.wallet)
            .finish_non_exhaustive()
    }
}

impl Ln {
    /// The Lightning node. Pay through its `pay_*` methods (they ask the policy), never
    /// through its ldk-node `node()`.
    pub fn node(&self) -> &LightningNode {
        &self.node
    }

    /// The BIP32 root of the node seed.
    pub fn root(&self) -> &KeyId {
        &self.root
    }

    /// The wallet whose spending policy the payments share, if any.
    pub fn wallet(&self) -> Option<&Label> {
        self.wallet.as_ref()
    }

    /// Whether the node may open announced channels: it listens and has an alias (what
    /// ldk-node requires of a forwarding node).
    pub fn may_announce(&self) -> bool {
        !self.listen.is_empty() && self.alias.is_some()
    }

    /// Stops the event thread, then the node (its state is in the store). Later calls do
    /// nothing.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the Lightning event thread panicked");
            }
        }
        match self.node.stop() {
            Ok(()) => tracing::info!("Lightning node stopped"),
            Err(e) => tracing::warn!(error = %e, "stopping the Lightning node"),
        }
    }

    /// The bus event for an ldk-node event; `None` for those the node does not publish.
    fn event(&self, event: &LdkEvent) -> Option<Event> {
        let root = self.root.as_str().to_owned();
        let hex32 = |b: &[u8; 32]| b.to_lower_hex_string();
        Some(match event {
            LdkEvent::ChannelPending {
                channel_id,
                user_channel_id,
                counterparty_node_id,
                funding_txo,
                ..
            } => Event::LnChannelPending {
                root,
                channel_id: hex32(&channel_id.0),
                user_channel_id: user_channel_id.0.to_string(),
                counterparty_node_id: counterparty_node_id.to_string(),
                funding_txo: funding_txo.to_string(),
            },
            LdkEvent::ChannelReady {
                channel_id,
                user_channel_id,
                counterparty_node_id,
                ..
            } => Event::LnChannelReady {
                root,
                channel_id: hex32(&channel_id.0),
                user_channel_id: user_channel_id.0.to_string(),
                counterparty_node_id: counterparty_node_id.map(|n| n.to_string()),
            },
            LdkEvent::ChannelClosed {
                channel_id,
                user_channel_id,
                counterparty_node_id,
                reason,
            } => Event::LnChannelClosed {
                root,
                channel_id: hex32(&channel_id.0),
                user_channel_id: user_channel_id.0.to_string(),
                counterparty_node_id: counterparty_node_id.map(|n| n.to_string()),
                reason: reason.as_ref().map(ToString::to_string),
            },
            LdkEvent::PaymentReceived {
                payment_id,
                payment_hash,
                amount_msat,
                ..
            } => Event::LnPaymentReceived {
                root,
                payment_id: payment_id.map(|p| hex32(&p.0)),
                payment_hash: hex32(&payment_hash.0),
                amount_msat: *amount_msat,
            },
            LdkEvent::PaymentSuccessful {
                payment_id,
                payment_hash,
                fee_paid_msat,
                ..
            } => Event::LnPaymentSuccessful {
                root,
                payment_id: payment_id.map(|p| hex32(&p.0)),
                payment_hash: hex32(&payment_hash.0),
                amount_msat: payment_id
                    .and_then(|id| self.node.node().payment(&id))
                    .and_then(|p| p.amount_msat),
                fee_paid_msat: *fee_paid_msat,
            },
            LdkEvent::PaymentFailed {
                payment_id,
                payment_hash,
                reason,
            } => Event::LnPaymentFailed {
                root,
                payment_id: payment_id.map(|p| hex32(&p.0)),
                payment_hash: payment_hash.map(|h| hex32(&h.0)),
                reason: reason.map(|r| format!("{r:?}")),
            },
            LdkEvent::PaymentForwarded {
                prev_channel_id,
                next_channel_id,
                total_fee_earned_msat,
                outbound_amount_forwarded_msat,
                ..
            } => Event::LnPaymentForwarded {
                root,
                prev_channel_id: hex32(&prev_channel_id.0),
                next_channel_id: hex32(&next_channel_id.0),
                outbound_amount_forwarded_msat: *outbound_amount_forwarded_msat,
                total_fee_earned_msat: *total_fee_earned_msat,
            },
            // Only payments received for a hash given by the caller are claimable by hand
            // (the node makes none); splices are not offered.
            LdkEvent::PaymentClaimable { .. } | LdkEvent::SplicePending { .. } | LdkEvent::SpliceFailed { .. } => {
                return None
            }
        })
    }
}

/// Takes the node's events and publishes them until `ln` stops or is dropped.
fn run_events(ln: &Weak<Ln>) {
    loop {
        let Some(ln) = ln.upgrade() else { return };
        if ln.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(event) = ln.node.next_event_timeout(EVENT_POLL) else {
            continue;
        };
        tracing::debug!(event = ?event, "Lightning event");
        if let Some(published) = ln.event(&event) {
            ln.events.publish(published);
        }
        if let Err(e) = ln.node.event_handled() {
            // The event stays first in line and comes again: wait, not spin.
            tracing::warn!(error = %e, "marking a Lightning event handled");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// bitcoind's RPC host and port from `bitcoind.url` (`http://host:port`, a port by the
/// network's default when absent). ldk-node reaches bitcoind over plain HTTP, as Core serves
/// it. The URL is not repeated in errors: it could hold credentials.
pub fn rpc_host_port(url: &str, network: Network) -> Result<(String, u16), String> {
    if url.starts_with("https://") {
        return Err("ldk-node reaches bitcoind's RPC over plain http://".to_owned());
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| "an IPv6 host without its closing ']'".to_owned())?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| "text after the IPv6 host".to_owned())?,
                    ),
                ),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("the port {p:?} is not a port"))?,
        None => match network {
            Network::Bitcoin => 8332,
            Network::Testnet => 18332,
            Network::Testnet4 => 48332,
            Network::Signet => 38332,
            Network::Regtest => 18443,
        },
    };
    Ok((host.to_owned(), port))
}

/// ldk-node's view of `[bitcoind]`: host and port, and the cookie or the user and password
/// (read from its file; never logged).
fn rpc(b: &BitcoindConfig) -> Result<BitcoindRpc, LnStartError> {
    let (host, port) = rpc_host_port(&b.url, b.network).map_err(LnStartError::BitcoindUrl)?;
    match (&b.cookie_file, &b.user, &b.password_file) {
        (Some(cookie), _, _) => BitcoindRpc::from_cookie(&host, port, cookie).map_err(LnStartError::Cookie),
        (None, Some(user), Some(file)) => Ok(BitcoindRpc {
            host,
            port,
            user: user.clone(),
            password: read_secret_file(file)?,
        }),
        _ => Err(LnStartError::NoCredentials),
    }
}

/// What [`open`] needs of the node.
pub(crate) struct Parts<'a> {
    pub config: &'a NodeConfig,
    pub hsm: &'a Arc<dyn HsmProvider>,
    pub store: &'a Arc<dyn KvStore>,
    pub clock: &'a Arc<dyn Clock>,
    pub chain: &'a Chain,
    pub wallets: &'a Wallets,
    pub events: &'a Events,
}

/// The namespace `name`, a constant of this module.
fn namespace(name: &str) -> Namespace {
    Namespace::new(name).expect("a fixed namespace of this module, within the length limit")
}

/// Builds and starts the Lightning node `[ln]` describes, and its event thread.
pub(crate) fn open(parts: Parts<'_>) -> Result<Arc<Ln>, LnStartError> {
    let config = &parts.config.ln;
    let bitcoind = match (parts.chain.bitcoind(), &parts.config.bitcoind) {
        (Some(_), Some(b)) => b,
        _ => return Err(LnStartError::NotBitcoind),
    };
    let name = config.root.as_deref().ok_or(LnStartError::NoRoot)?;
    let root = Label::new(name).map_err(HsmError::from)?;
    match parts.hsm.key_info(&root) {
        Err(HsmError::KeyNotFound { .. }) => {
            return Err(LnStartError::RootMissing { root: name.to_owned() });
        }
        Err(e) => return Err(e.into()),
        Ok(info) if !info.policy.allowed.contains(Usage::DeriveNodeSeed) => {
            return Err(LnStartError::RootNotOptedIn { root: name.to_owned() });
        }
        Ok(_) => {}
    }
    let (policy, wallet) = match &config.wallet {
        Some(name) => {
            let wallet_error = |source| LnStartError::Wallet {
                wallet: name.clone(),
                source,
            };
            let wallet = Label::new(name.as_str()).map_err(HsmError::from)?;
            if !parts.wallets.list().map_err(wallet_error)?.contains(&wallet) {
                return Err(LnStartError::WalletMissing { wallet: name.clone() });
            }
            let handle = parts.wallets.get(&wallet).map_err(wallet_error)?;
            let policy = lock(&handle).policy().clone();
            (policy, Some(wallet))
        }
        None => (
            PolicyEngine::new(Arc::clone(parts.store), namespace(POLICY_NS), Arc::clone(parts.clock)),
            None,
        ),
    };
    let work_dir = parts.config.ln_work_dir();
    std::fs::create_dir_all(&work_dir).map_err(|source| LnStartError::WorkDir {
        path: work_dir.clone(),
        source,
    })?;
    let mut options = NodeOptions::new(bitcoind.network, work_dir, rpc(bitcoind)?);
    options.listen = config.listen.clone();
    options.alias = config.alias.clone();
    options.index = config.index;
    let node = LightningNode::build(
        Arc::clone(parts.hsm),
        &root,
        Arc::clone(parts.store),
        namespace(LN_NS),
        policy,
        &options,
    )
    .map_err(LnStartError::Build)?;
    node.start().map_err(LnStartError::Start)?;
    tracing::info!(
        node_id = %node.node_id(),
        root = %root,
        wallet = wallet.as_ref().map(Label::as_str),
        listen = ?config.listen,
        channels = node.channels().len(),
        "Lightning node started"
    );
    let ln = Arc::new(Ln {
        node,
        root,
        wallet,
        listen: config.listen.clone(),
        alias: config.alias.clone(),
        events: parts.events.clone(),
        stopping: AtomicBool::new(false),
        thread: Mutex::new(None),
    });
    let weak = Arc::downgrade(&ln);
    let thread = std::thread::Builder::new()
        .name("anya-ln-events".to_owned())
        .spawn(move || run_events(&weak));
    match thread {
        Ok(thread) => {
            *ln.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
            Ok(ln)
        }
        Err(e) => {
            ln.stop();
            Err(LnStartError::Thread(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpc_host_and_port_come_from_the_url() {
        let ok = |url: &str| rpc_host_port(url, Network::Regtest).expect(url);
        assert_eq!(ok("http://127.0.0.1:18443"), ("127.0.0.1".to_owned(), 18443));
        assert_eq!(ok("http://127.0.0.1:18443/"), ("127.0.0.1".to_owned(), 18443));
        assert_eq!(ok("http://node.example/wallet/x"), ("node.example".to_owned(), 18443));
        assert_eq!(ok("127.0.0.1:1"), ("127.0.0.1".to_owned(), 1));
        assert_eq!(ok("http://[::1]:8332"), ("::1".to_owned(), 8332));
        assert_eq!(ok("http://[::1]"), ("::1".to_owned(), 18443));
        assert_eq!(ok("http://user:secret@host:2"), ("host".to_owned(), 2));
        assert_eq!(
            rpc_host_port("http://h", Network::Bitcoin).expect("mainnet"),
            ("h".to_owned(), 8332)
        );
        for bad in [
            "https://h:1",
            "http://",
            "http://:1",
            "http://h:x",
            "http://h:70000",
            "http://[::1",
        ] {
            let err = rpc_host_port(bad, Network::Regtest).expect_err(bad);
            assert!(!err.contains("secret"), "{err}");
        }
        let err = rpc_host_port("http://user:secret@host:x", Network::Regtest).expect_err("bad port");
        assert!(!err.contains("secret"), "the URL's credentials are not repeated: {err}");
    }
}
