//! A Lightning node on ldk-node whose keys come from anya-hsm and whose state lives in anya's
//! store.
//!
//! [`LightningNode::build`] derives the node's 64-byte seed inside the HSM from a BIP32 root
//! ([`HsmProvider::derive_node_seed`], BIP85 at `83696968'/128169'/64'/index'`, an audited
//! operation that the root's policy must allow), hands it to ldk-node in zeroizing memory, and
//! builds the node on an [`LdkStore`] in the given anya namespace, with bitcoind's RPC as its
//! chain source and fee estimator. Nothing about the node is written outside the store except
//! its log-free working directory (ldk-node's `storage_dir_path`, which holds no keys: the seed
//! comes from the HSM and every record goes to the store). See ADR 0007 for what stays in
//! process memory.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anya_bitcoin::policy::{PaymentSummary, PolicyEngine, PolicyError};
use anya_hsm::{HsmError, HsmProvider, KeyId, SecretString};
use anya_storage::{KvStore, Namespace};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::PublicKey;
use bitcoin::Network;
use ldk_node::lightning::blinded_path::IntroductionNode;
use ldk_node::lightning::ln::channelmanager::PaymentId;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::offers::offer::{Amount as OfferAmount, Offer};
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::lightning_invoice::{Bolt11Invoice, ParseOrSemanticError};
use ldk_node::lightning_types::payment::PaymentPreimage;
use ldk_node::logger::{LogLevel, LogRecord, LogWriter};
use ldk_node::payment::PaymentStatus;
use ldk_node::{Builder, ChannelDetails, DynStore, Event, Node, NodeError, UserChannelId};
use zeroize::Zeroizing;

use super::store::LdkStore;

/// Where the node reaches bitcoind's RPC.
pub struct BitcoindRpc {
    /// Host name or address.
    pub host: String,
    /// RPC port.
    pub port: u16,
    /// RPC user (for a cookie: `__cookie__`).
    pub user: String,
    /// RPC password (for a cookie: the part after the colon).
    pub password: SecretString,
}

impl Clone for BitcoindRpc {
    fn clone(&self) -> Self {
        Self {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: SecretString::from(self.password.expose()),
        }
    }
}

impl BitcoindRpc {
    /// bitcoind at `host:port`, authenticated with the cookie in `cookie_file` (what
    /// `bitcoind` writes to `<datadir>/<network>/.cookie` when no RPC password is set).
    pub fn from_cookie(host: &str, port: u16, cookie_file: &std::path::Path) -> Result<Self, LightningError> {
        let cookie = |reason: String| LightningError::Cookie {
            path: cookie_file.to_owned(),
            reason,
        };
        let text = Zeroizing::new(std::fs::read_to_string(cookie_file).map_err(|e| cookie(e.to_string()))?);
        let (user, password) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| cookie("not user:password".to_owned()))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            password: SecretString::from(password),
        })
    }
}

impl fmt::Debug for BitcoindRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BitcoindRpc")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// How to build a [`LightningNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The chain the node runs on.
    pub network: Network,
    /// ldk-node's working directory (`storage_dir_path`). It holds no keys and no channel
    /// state (those are in the HSM and the store); it must exist or be creatable.
    pub work_dir: PathBuf,
    /// Addresses to accept peer connections on; empty: none.
    pub listen: Vec<SocketAddr>,
    /// The node's public alias, if it announces itself.
    pub alias: Option<String>,
    /// Which node of the root this is: the last step of the BIP85 path of its seed.
    pub index: u32,
    /// The chain source.
    pub bitcoind: BitcoindRpc,
}

impl NodeOptions {
    /// Node 0 of its root on `network`, working in `work_dir`, chained to `bitcoind`; not
    /// listening and without an alias until those fields are set.
    pub fn new(network: Network, work_dir: PathBuf, bitcoind: BitcoindRpc) -> Self {
        Self {
            network,
            work_dir,
            listen: Vec::new(),
            alias: None,
            index: 0,
            bitcoind,
        }
    }
}

/// Why a node could not be built or did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LightningError {
    /// The HSM refused or failed to derive the node seed.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// ldk-node refused the configuration or could not build the node.
    #[error("building the node: {0:?}")]
    Build(ldk_node::BuildError),
    /// ldk-node refused or failed a call.
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// An option is unusable.
    #[error("invalid option: {0}")]
    Option(String),
    /// bitcoind's cookie file could not be read, or does not hold `user:password`.
    #[error("bitcoind cookie {}: {reason}", path.display())]
    Cookie {
        /// The cookie file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The spending policy refused the payment (nothing was sent), or could not decide.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A BOLT11 invoice does not parse or breaks BOLT11's rules.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(#[from] ParseOrSemanticError),
    /// A BOLT12 offer does not parse or breaks BOLT12's rules.
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    /// A peer address is not `<node id>@<host>:<port>`.
    #[error("invalid peer address: {0}")]
    InvalidPeer(String),
    /// A well-formed invoice or offer this node will not pay; nothing was sent.
    #[error("invoice not payable: {0}")]
    Unpayable(String),
}

impl From<ldk_node::BuildError> for LightningError {
    fn from(e: ldk_node::BuildError) -> Self {
        LightningError::Build(e)
    }
}

/// A Lightning node: ldk-node on anya's HSM-derived seed and store, its outgoing payments
/// under anya's spending policy.
pub struct LightningNode {
    node: Node,
    store: LdkStore,
    network: Network,
    hsm: Arc<dyn HsmProvider>,
    root: KeyId,
    policy: PolicyEngine,
}

/// What to pay for an invoice or offer (`what`) asking `asked`, when the user gives `given`:
/// the amount given (at least the one asked), else the one asked; never nothing or 0.
fn amount_to_pay(asked: Option<u64>, given: Option<u64>, what: &str) -> Result<u64, LightningError> {
    let amount = match (asked, given) {
        (None, None) => {
            return Err(LightningError::Unpayable(format!(
                "the {what} has no amount and none was given"
            )))
        }
        (Some(asked), Some(given)) if given < asked => {
            return Err(LightningError::Unpayable(format!(
                "{given} msat is less than the {asked} msat the {what} asks"
            )))
        }
        (_, Some(given)) => given,
        (Some(asked), None) => asked,
    };
    if amount == 0 {
        return Err(LightningError::Unpayable("an amount of 0".into()));
    }
    Ok(amount)
}

/// The routing fee limit a payment gets unless one is given: 1% of the amount plus 50
/// satoshis (LDK's own default, made explicit so that the policy counts what can be spent).
pub fn default_max_fee_msat(amount_msat: u64) -> u64 {
    (amount_msat / 100).saturating_add(50_000)
}

impl fmt::Debug for LightningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightningNode")
            .field("node_id", &self.node.node_id())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl LightningNode {
    /// Builds (does not start) node `options.index` of `root`: its seed derived in `hsm`, its
    /// records in namespace `ns` of `store`. The same root, index and store give back the same
    /// node with its channels.
    ///
    /// Outgoing payments made through this type ask `policy` first and record each decision
    /// in `hsm`'s audit chain under `root`: give it the policy of the wallet whose 24-hour
    /// limit the node's payments should share.
    pub fn build(
        hsm: Arc<dyn HsmProvider>,
        root: &KeyId,
        store: Arc<dyn KvStore>,
        ns: Namespace,
        policy: PolicyEngine,
        options: &NodeOptions,
    ) -> Result<Self, LightningError> {
        let work_dir = options
            .work_dir
            .to_str()
            .ok_or_else(|| LightningError::Option("the working directory is not UTF-8".into()))?
            .to_owned();
        let mut builder = Builder::new();
        builder
            .set_network(options.network)
            .set_storage_dir_path(work_dir)
            .set_custom_logger(Arc::new(TracingLogWriter))
            .set_chain_source_bitcoind_rpc(
                options.bitcoind.host.clone(),
                options.bitcoind.port,
                options.bitcoind.user.clone(),
                options.bitcoind.password.expose().to_owned(),
            );
        if !options.listen.is_empty() {
            let addresses = options.listen.iter().map(|a| SocketAddress::from(*a)).collect();
            builder.set_listening_addresses(addresses)?;
        }
        if let Some(alias) = &options.alias {
            builder.set_node_alias(alias.clone())?;
        }
        {
            let derived = hsm.derive_node_seed(root, options.index)?;
            let mut seed = Zeroizing::new([0u8; anya_hsm::node_seed::NODE_SEED_LEN]);
            if derived.len() != seed.len() {
                return Err(LightningError::Option(format!(
                    "the HSM gave a {}-byte node seed",
                    derived.len()
                )));
            }
            seed.copy_from_slice(derived.expose());
            builder.set_entropy_seed_bytes(*seed);
        }
        let ldk_store = LdkStore::new(store, ns);
        let dyn_store: Arc<DynStore> = Arc::new(ldk_store.clone());
        let node = builder.build_with_store(dyn_store)?;
        Ok(Self {
            node,
            store: ldk_store,
            network: options.network,
            hsm,
            root: root.clone(),
            policy,
        })
    }

    /// Starts the node: connects to bitcoind, syncs, listens.
    pub fn start(&self) -> Result<(), LightningError> {
        Ok(self.node.start()?)
    }

    /// Stops the node; its state is in the store.
    pub fn stop(&self) -> Result<(), LightningError> {
        Ok(self.node.stop()?)
    }

    /// The node's public key.
    pub fn node_id(&self) -> PublicKey {
        self.node.node_id()
    }

    /// The node's channels.
    pub fn channels(&self) -> Vec<ChannelDetails> {
        self.node.list_channels()
    }

    /// The store the node's records live in.
    pub fn store(&self) -> &LdkStore {
        &self.store
    }

    /// The ldk-node node, for what this type does not wrap yet. Payments made through it do
    /// not pass anya's spending policy.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The spending policy the node's payments pass.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Opens a channel of `amount_sat` to `peer` at `address`, funded from the node's
    /// on-chain wallet, announced for forwarding when `announce` (the node then needs an
    /// alias and a listening address). A `push_msat` given to the peer at opening is a
    /// payment: it passes the spending policy first (refused: nothing opened) and its
    /// reservation is given back if the open fails at once. Funding moves the node's own
    /// coins into the channel and is not counted. Returns the channel's user id; the rest
    /// arrives as events.
    pub fn open_channel(
        &self,
        peer: PublicKey,
        address: SocketAddress,
        amount_sat: u64,
        push_msat: Option<u64>,
        announce: bool,
    ) -> Result<UserChannelId, LightningError> {
        let push = push_msat.filter(|p| *p > 0);
        let reservation = match push {
            Some(amount_msat) => {
                let key: [u8; 32] = rand::random();
                let summary = PaymentSummary {
                    payment_hash: key,
                    amount_msat,
                    max_fee_msat: 0,
                    destination: peer,
                };
                self.policy.approve_payment(&summary, &*self.hsm, &self.root)?;
                Some(key)
            }
            None => None,
        };
        let opened = if announce {
            self.node.open_announced_channel(peer, address, amount_sat, push, None)
        } else {
            self.node.open_channel(peer, address, amount_sat, push, None)
        };
        if let (Err(_), Some(key)) = (&opened, reservation) {
            self.release(key);
        }
        Ok(opened?)
    }

    /// Pays a BOLT11 invoice: `amount_msat` for an invoice without an amount, or at least
    /// the invoice's amount; the routing fee at most `max_fee_msat` (by default
    /// [`default_max_fee_msat`]). Refused before anything is sent when the invoice is for
    /// another network or expired, when a payment of its hash is pending or done, or when the
    /// spending policy says no (amount plus fee limit against the per-payment and 24-hour
    /// limits, the payee against the node allowlist). Returns the payment's id (its hash);
    /// the outcome arrives as an event.
    pub fn pay_invoice(
        &self,
        invoice: &Bolt11Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: Option<u64>,
    ) -> Result<PaymentId, LightningError> {
        if invoice.network() != self.network {
            return Err(LightningError::Unpayable(format!(
                "the invoice is for {}, this node runs on {}",
                invoice.network(),
                self.network
            )));
        }
        if invoice.is_expired() {
            return Err(LightningError::Unpayable("the invoice has expired".into()));
        }
        let amount_msat = amount_to_pay(invoice.amount_milli_satoshis(), amount_msat, "invoice")?;
        let payment_hash = invoice.payment_hash().to_byte_array();
        let max_fee_msat = max_fee_msat.unwrap_or_else(|| default_max_fee_msat(amount_msat));
        let summary = PaymentSummary {
            payment_hash,
            amount_msat,
            max_fee_msat,
            destination: invoice.get_payee_pub_key(),
        };
        let exact = invoice.amount_milli_satoshis() == Some(amount_msat);
        self.guarded_send(&summary, |route| {
            let payments = self.node.bolt11_payment();
            if exact {
                payments.send(invoice, Some(route))
            } else {
                payments.send_using_amount(invoice, amount_msat, Some(route))
            }
        })
    }

    /// Pays `amount_msat` to `node_id` by keysend (a spontaneous payment with a preimage made
    /// here), after the spending policy approved it as [`pay_invoice`](Self::pay_invoice)
    /// does. Returns the payment's id (its hash).
    pub fn pay_keysend(
        &self,
        node_id: PublicKey,
        amount_msat: u64,
        max_fee_msat: Option<u64>,
    ) -> Result<PaymentId, LightningError> {
        if amount_msat == 0 {
            return Err(LightningError::Unpayable("an amount of 0".into()));
        }
        let preimage = PaymentPreimage(rand::random());
        let payment_hash = sha256::Hash::hash(&preimage.0).to_byte_array();
        let summary = PaymentSummary {
            payment_hash,
            amount_msat,
            max_fee_msat: max_fee_msat.unwrap_or_else(|| default_max_fee_msat(amount_msat)),
            destination: node_id,
        };
        self.guarded_send(&summary, |route| {
            self.node
                .spontaneous_payment()
                .send_with_preimage(amount_msat, node_id, preimage, Some(route))
        })
    }

    /// Pays a BOLT12 offer: `amount_msat` for an offer without an amount (at least the
    /// offer's amount times `quantity` otherwise), `quantity` items where the offer sells
    /// several, the routing fee at most `max_fee_msat` (by default [`default_max_fee_msat`]).
    /// The node asks the offer's issuer for an invoice over onion messages and pays it; LDK
    /// checks that the invoice is signed for the offer and asks no more than requested.
    ///
    /// Refused before anything is sent when the offer is for another chain, expired, priced
    /// in a currency, or the quantity is not one it sells, or when the spending policy says
    /// no. For the node allowlist an offer's payee is its issuer signing key (an offer made
    /// behind blinded paths signs with a key of its own, not the node id: allowlist that
    /// key), or, for an offer without one, the introduction node of its first blinded path.
    /// Returns the payment's id, the key of its policy reservation.
    pub fn pay_offer(
        &self,
        offer: &Offer,
        amount_msat: Option<u64>,
        quantity: Option<u64>,
        payer_note: Option<String>,
        max_fee_msat: Option<u64>,
    ) -> Result<PaymentId, LightningError> {
        if !offer.supports_chain(self.network.chain_hash()) {
            return Err(LightningError::Unpayable(format!(
                "the offer is not for {}",
                self.network
            )));
        }
        if offer.is_expired() {
            return Err(LightningError::Unpayable("the offer has expired".into()));
        }
        if let Some(q) = quantity {
            if !offer.is_valid_quantity(q) {
                return Err(LightningError::Unpayable(format!("the offer does not sell {q} items")));
            }
        } else if offer.expects_quantity() {
            return Err(LightningError::Unpayable("the offer needs a quantity".into()));
        }
        let asked = match offer.amount() {
            None => None,
            Some(OfferAmount::Bitcoin { amount_msats }) => {
                Some(amount_msats.checked_mul(quantity.unwrap_or(1)).ok_or_else(|| {
                    LightningError::Unpayable("the offer's amount times the quantity overflows".into())
                })?)
            }
            Some(OfferAmount::Currency { .. }) => {
                return Err(LightningError::Unpayable(
                    "the offer is priced in a currency, not in bitcoin".into(),
                ))
            }
        };
        let amount_msat = amount_to_pay(asked, amount_msat, "offer")?;
        let destination = offer
            .issuer_signing_pubkey()
            .or_else(|| {
                offer.paths().first().and_then(|p| match p.introduction_node() {
                    IntroductionNode::NodeId(id) => Some(*id),
                    IntroductionNode::DirectedShortChannelId(..) => None,
                })
            })
            .ok_or_else(|| LightningError::Unpayable("the offer names no key to pay".into()))?;
        // ldk-node picks the payment's id when it sends: the reservation is made under a key
        // of ours, then moved to that id.
        let reservation: [u8; 32] = rand::random();
        let summary = PaymentSummary {
            payment_hash: reservation,
            amount_msat,
            max_fee_msat: max_fee_msat.unwrap_or_else(|| default_max_fee_msat(amount_msat)),
            destination,
        };
        let exact = asked == Some(amount_msat);
        let id = self.guarded_send(&summary, |route| {
            let payments = self.node.bolt12_payment();
            if exact {
                payments.send(offer, quantity, payer_note, Some(route))
            } else {
                payments.send_using_amount(offer, amount_msat, quantity, payer_note, Some(route))
            }
        })?;
        if let Err(e) = self.policy.rekey_payment(reservation, id.0) {
            // The reservation stays under our key: it counts until its window ends, and a
            // failure of the payment cannot give it back early.
            tracing::warn!(error = %e, "could not move a BOLT12 payment's policy reservation to its id");
        }
        Ok(id)
    }

    /// Asks the policy, then sends with the fee limit it approved; a send that fails at once
    /// gives the reservation back.
    fn guarded_send(
        &self,
        summary: &PaymentSummary,
        send: impl FnOnce(RouteParametersConfig) -> Result<PaymentId, NodeError>,
    ) -> Result<PaymentId, LightningError> {
        let id = PaymentId(summary.payment_hash);
        if let Some(existing) = self.node.payment(&id) {
            if existing.status != PaymentStatus::Failed {
                return Err(LightningError::Node(NodeError::DuplicatePayment));
            }
        }
        self.policy.approve_payment(summary, &*self.hsm, &self.root)?;
        let route = RouteParametersConfig {
            max_total_routing_fee_msat: Some(summary.max_fee_msat),
            ..RouteParametersConfig::default()
        };
        match send(route) {
            Ok(id) => Ok(id),
            // Another payment of this hash is under way: its reservation stays.
            Err(NodeError::DuplicatePayment) => Err(LightningError::Node(NodeError::DuplicatePayment)),
            Err(e) => {
                self.release(summary.payment_hash);
                Err(e.into())
            }
        }
    }

    fn release(&self, payment_hash: [u8; 32]) {
        if let Err(e) = self.policy.release_payment(payment_hash) {
            tracing::warn!(error = %e, "could not release the policy reservation of a failed payment");
        }
    }

    /// The next event, if any (see ldk-node's `Node::next_event`); call
    /// [`event_handled`](Self::event_handled) once it is dealt with. A failed outgoing
    /// payment's policy reservation is released before its event is returned (again if the
    /// event comes back after a restart, which changes nothing).
    pub fn next_event(&self) -> Option<Event> {
        let event = self.node.next_event()?;
        if let Event::PaymentFailed {
            payment_id,
            payment_hash,
            ..
        } = &event
        {
            // A BOLT11 or keysend payment is reserved under its hash (its id too); a BOLT12
            // payment under its id.
            let id = payment_id.map(|p| p.0);
            let hash = payment_hash.map(|h| h.0);
            for key in [id, hash.filter(|h| Some(*h) != id)].into_iter().flatten() {
                self.release(key);
            }
        }
        Some(event)
    }

    /// [`next_event`](Self::next_event), waiting up to `timeout` for one.
    pub fn next_event_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.next_event() {
                return Some(event);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Marks the event [`next_event`](Self::next_event) returned as handled, so that the next
    /// one comes.
    pub fn event_handled(&self) -> Result<(), LightningError> {
        Ok(self.node.event_handled()?)
    }
}

/// ldk-node's log records as `tracing` events (target `anya::ldk`).
struct TracingLogWriter;

impl LogWriter for TracingLogWriter {
    fn log(&self, record: LogRecord<'_>) {
        let module = record.module_path;
        match record.level {
            LogLevel::Error => tracing::error!(target: "anya::ldk", module, "{}", record.args),
            LogLevel::Warn => tracing::warn!(target: "anya::ldk", module, "{}", record.args),
            LogLevel::Info => tracing::info!(target: "anya::ldk", module, "{}", record.args),
            LogLevel::Debug => tracing::debug!(target: "anya::ldk", module, "{}", record.args),
            LogLevel::Trace | LogLevel::Gossip => tracing::trace!(target: "anya::ldk", module, "{}", record.args),
        }
    }
}
