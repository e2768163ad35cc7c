//! The node as a DLC party (`[dlc]`): the contract service of `anya-layer2` on one of the
//! node's wallets, its HSM, its store and its bitcoind, with the configured oracles.
//!
//! Opening it runs the service's crash recovery (`resume`): reservations no live contract uses
//! are released, funding transactions a crash kept back are broadcast, and the last message
//! of each contract still waiting on its counterparty is kept to be published as a
//! `dlc_resend` event, which the application's transport must deliver.
//!
//! **Identity.** Parties name each other by a public key. The node's is the HSM public key of
//! the contract root at `m/4475971'/0'` (the DLC branch of `docs/adr/0006-dlc-contract-keys.md`,
//! then `0'`): derived inside the HSM, nothing exported, the same after every restart. It is a
//! name, not a signing key: nothing is signed with it, so the transport that carries messages
//! must authenticate the peer itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anya_core_types::{Clock, Label};
use anya_hsm::{ExportScope, HsmError, HsmProvider, KeyId, KeyRef, Usage};
use anya_layer2::dlc::client::{ClientError, OracleClient, RouteFamily};
use anya_layer2::dlc::contracts::{
    encode_message, AnyOracle, ContractSummary, DlcError, DlcParts, DlcService, HttpOracle, LocalOracle, Pending,
};
use anya_layer2::dlc::Oracle;
use anya_storage::KvStore;
use bitcoin::bip32::ChildNumber;
use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::{PublicKey, XOnlyPublicKey};
use serde::Serialize;

use crate::chain::Chain;
use crate::config::{DlcOracleKind, NodeConfig};
use crate::events::Event;
use crate::wallets::{lock, Wallets};

/// Why the DLC service did not start (the node does not start either).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlcStartError {
    /// `[dlc] enabled` without a bitcoind chain.
    #[error("DLC contracts need chain = \"bitcoind\"")]
    NotBitcoind,
    /// `dlc.wallet` is not set.
    #[error("dlc.wallet is not set")]
    NoWallet,
    /// The wallet does not exist.
    #[error(
        "dlc.wallet {wallet:?} does not exist: start without [dlc], create it (POST /v1/wallets with \"dlc\": true), then enable [dlc]"
    )]
    WalletMissing {
        /// The wallet.
        wallet: String,
    },
    /// The wallet could not be opened.
    #[error("dlc.wallet {wallet:?}: {source}")]
    Wallet {
        /// The wallet.
        wallet: String,
        /// Why.
        source: anya_bitcoin::wallet::WalletError,
    },
    /// No `dlc.root`, and the wallet does not have exactly one root.
    #[error("dlc.wallet {wallet:?} has {roots} BIP32 roots: name the contract keys' root with dlc.root")]
    RootAmbiguous {
        /// The wallet.
        wallet: String,
        /// How many roots it signs with.
        roots: usize,
    },
    /// The root does not allow DLC contract keys.
    #[error(
        "the root key {root:?} does not allow DLC contract keys (usage ExportDlcChild, fixed when a key is made): \
         fund contracts from a wallet whose root was made with \"dlc\": true (POST /v1/wallets or POST /v1/keys), \
         or name such a root with dlc.root (docs/adr/0006-dlc-contract-keys.md)"
    )]
    RootNotOptedIn {
        /// The root.
        root: String,
    },
    /// The HSM refused (the root is missing, or not a BIP32 root).
    #[error("dlc.root: {0}")]
    Hsm(#[from] HsmError),
    /// `local = true` without this node's oracle.
    #[error("[[dlc.oracles]] local = true needs [oracle] enabled")]
    NoLocalOracle,
    /// A remote oracle did not answer with its public key.
    #[error("oracle {url}: {source}")]
    Oracle {
        /// Its URL.
        url: String,
        /// Why.
        source: ClientError,
    },
    /// A remote oracle serves another key than the configured one.
    #[error("oracle {url} serves the public key {served}, not the configured {configured}")]
    OracleKey {
        /// Its URL.
        url: String,
        /// What it serves (hex).
        served: String,
        /// What `public_key` says (hex).
        configured: String,
    },
    /// Two configured oracles have the same key.
    #[error("two [[dlc.oracles]] have the public key {0}")]
    DuplicateOracle(String),
    /// The service's runtime could not be made.
    #[error("starting the DLC service: {0}")]
    Runtime(std::io::Error),
    /// The service did not open (its store, the node, or the crash recovery failed).
    #[error("opening the DLC service: {0}")]
    Service(#[from] DlcError),
}

/// A contract as the API and the events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ContractView {
    /// Its id (hex): the final id once accepted, the temporary id before.
    pub id: String,
    /// Its temporary id (hex), as the offer named it.
    pub temporary_id: String,
    /// `offered`, `accepted`, `signed`, `confirmed`, `preclosed` (a CET broadcast), `closed`,
    /// `refunded`, `failed-accept`, `failed-sign` or `rejected`.
    pub state: String,
    /// Whether this node offered it.
    pub is_offer_party: bool,
    /// The counterparty's DLC identity (hex public key).
    pub counterparty: String,
    /// The offer party's collateral.
    pub offer_collateral_sat: u64,
    /// The accepting party's collateral.
    pub accept_collateral_sat: u64,
    /// The funding transaction, once there is one.
    pub funding_txid: Option<String>,
    /// The closing transaction (CET or refund), once there is one.
    pub closing_txid: Option<String>,
    /// This node's profit or loss once closed: what the closing transaction pays it minus its
    /// collateral (fees not counted).
    pub pnl_sat: i64,
    /// The oracle events it settles on.
    pub events: Vec<String>,
}

impl From<&ContractSummary> for ContractView {
    fn from(s: &ContractSummary) -> Self {
        Self {
            id: s.id.clone(),
            temporary_id: s.temporary_id.clone(),
            state: s.state.to_owned(),
            is_offer_party: s.is_offer_party,
            counterparty: s.counterparty.clone(),
            offer_collateral_sat: s.offer_collateral,
            accept_collateral_sat: s.accept_collateral,
            funding_txid: s.funding_txid.map(|t| t.to_string()),
            closing_txid: s.closing_txid.map(|t| t.to_string()),
            pnl_sat: s.pnl,
            events: s.events.clone(),
        }
    }
}

/// The path of the node's DLC identity below its contract root.
pub fn identity_path() -> [ChildNumber; 2] {
    [ExportScope::Dlc.branch(), ChildNumber::Hardened { index: 0 }]
}

/// The DLC identity of the contract root `root` in `hsm` (see the [module docs](self)).
pub fn identity(hsm: &dyn HsmProvider, root: &KeyId) -> Result<PublicKey, HsmError> {
    let path = identity_path();
    match hsm.public_key(KeyRef::Derived { root, path: &path })? {
        anya_hsm::PublicKey::Secp256k1(pk) => Ok(pk),
        // A BIP32 root derives secp256k1 keys only; a provider that answers otherwise holds
        // no root under that id.
        _ => Err(HsmError::WrongKeyType {
            id: root.clone(),
            spec: anya_hsm::KeySpec::Bip32Root,
            usage: Usage::DeriveXpub,
        }),
    }
}

/// The node's DLC party.
pub struct Dlc {
    service: DlcService,
    /// The oracles, to read announcements before an offer.
    oracles: Vec<Arc<AnyOracle>>,
    wallet: Label,
    root: KeyId,
    identity: PublicKey,
    /// The `dlc_resend` events of the start, until a subscriber may see them.
    resend: Mutex<Vec<Event>>,
}

impl std::fmt::Debug for Dlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlc")
            .field("wallet", &self.wallet)
            .field("root", &self.root)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Dlc {
    /// The contract service.
    pub fn service(&self) -> &DlcService {
        &self.service
    }

    /// The wallet that funds contracts.
    pub fn wallet(&self) -> &Label {
        &self.wallet
    }

    /// The root of the contract keys.
    pub fn root(&self) -> &KeyId {
        &self.root
    }

    /// This node's DLC identity.
    pub fn identity(&self) -> PublicKey {
        self.identity
    }

    /// The oracles' public keys.
    pub fn oracles(&self) -> &[XOnlyPublicKey] {
        self.service.oracles()
    }

    /// The oracle with public key `key`, if configured.
    pub fn oracle(&self, key: &XOnlyPublicKey) -> Option<&Arc<AnyOracle>> {
        self.oracles.iter().find(|o| o.get_public_key() == *key)
    }

    /// The event for `summary`.
    pub fn event(&self, summary: &ContractSummary) -> Event {
        Event::DlcContract {
            wallet: self.wallet.as_str().to_owned(),
            contract: ContractView::from(summary),
        }
    }

    /// Takes the `dlc_resend` events the start left (once: to the first subscriber that may
    /// see them).
    pub fn take_resend(&self) -> Vec<Event> {
        std::mem::take(&mut *self.resend.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A remote oracle of `[[dlc.oracles]]`, connected (its public key read and checked).
fn remote_oracle(o: &crate::config::DlcOracleConfig, url: &str) -> Result<Arc<AnyOracle>, DlcStartError> {
    let family = match o.kind.unwrap_or(DlcOracleKind::Kormir) {
        DlcOracleKind::Kormir => RouteFamily::Kormir,
        DlcOracleKind::P2pd => RouteFamily::P2pDerivatives,
    };
    let timeout = Duration::from_millis(o.timeout_ms.unwrap_or(10_000));
    let client = OracleClient::connect(url, family, timeout).map_err(|source| DlcStartError::Oracle {
        url: url.to_owned(),
        source,
    })?;
    if let Some(configured) = o.public_key.as_deref().and_then(|k| k.parse::<XOnlyPublicKey>().ok()) {
        if client.public_key() != configured {
            return Err(DlcStartError::OracleKey {
                url: url.to_owned(),
                served: client.public_key().to_string(),
                configured: configured.to_string(),
            });
        }
    }
    tracing::info!(url, public_key = %client.public_key(), "DLC oracle");
    Ok(Arc::new(HttpOracle::new(client)))
}

/// What [`open`] needs of the node.
pub(crate) struct Parts<'a> {
    pub config: &'a NodeConfig,
    pub hsm: &'a Arc<dyn HsmProvider>,
    pub store: &'a Arc<dyn KvStore>,
    pub clock: &'a Arc<dyn Clock>,
    pub chain: &'a Chain,
    pub wallets: &'a Wallets,
    pub oracle: Option<&'a Arc<Oracle>>,
}

/// Opens the DLC party `[dlc]` describes and resumes what a previous process left.
pub(crate) fn open(parts: Parts<'_>) -> Result<Dlc, DlcStartError> {
    let config = &parts.config.dlc;
    let chain = parts.chain.bitcoind().ok_or(DlcStartError::NotBitcoind)?;
    let name = config.wallet.as_deref().ok_or(DlcStartError::NoWallet)?;
    let wallet_error = |source| DlcStartError::Wallet {
        wallet: name.to_owned(),
        source,
    };
    let wallet = Label::new(name).map_err(HsmError::from)?;
    if !parts.wallets.list().map_err(wallet_error)?.contains(&wallet) {
        return Err(DlcStartError::WalletMissing {
            wallet: name.to_owned(),
        });
    }
    let handle = parts.wallets.get(&wallet).map_err(wallet_error)?;
    let root = match &config.root {
        Some(root) => Label::new(root.as_str()).map_err(HsmError::from)?,
        None => {
            let w = lock(&handle);
            match w.signers() {
                [only] => only.root().clone(),
                signers => {
                    return Err(DlcStartError::RootAmbiguous {
                        wallet: name.to_owned(),
                        roots: signers.len(),
                    })
                }
            }
        }
    };
    let info = parts.hsm.key_info(&root)?;
    if !info.policy.allowed.contains(Usage::ExportDlcChild) {
        return Err(DlcStartError::RootNotOptedIn {
            root: root.as_str().to_owned(),
        });
    }
    let identity = identity(&**parts.hsm, &root)?;
    let mut oracles: Vec<Arc<AnyOracle>> = Vec::new();
    for o in &config.oracles {
        let oracle: Arc<AnyOracle> = match &o.url {
            None => Arc::new(LocalOracle::new(Arc::clone(
                parts.oracle.ok_or(DlcStartError::NoLocalOracle)?,
            ))),
            Some(url) => remote_oracle(o, url)?,
        };
        let key = oracle.get_public_key();
        if oracles.iter().any(|known| known.get_public_key() == key) {
            return Err(DlcStartError::DuplicateOracle(key.to_string()));
        }
        oracles.push(oracle);
    }
    let dlc_parts = DlcParts {
        store: Arc::clone(parts.store),
        hsm: Arc::clone(parts.hsm),
        root: root.clone(),
        wallet: handle,
        chain: Arc::clone(chain),
        network: parts.chain.network(),
        oracles: oracles.clone(),
        clock: Arc::clone(parts.clock),
    };
    // The service opens on a runtime of its own, on a thread of its own: `Node::open` is not
    // async and may be called from inside a runtime (the daemon calls it on the blocking pool).
    // Nothing the service keeps is bound to that runtime: later calls run on the caller's.
    let (service, resumed) = std::thread::scope(|s| {
        s.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DlcStartError::Runtime)?;
            runtime
                .block_on(DlcService::open(dlc_parts))
                .map_err(DlcStartError::from)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    tracing::info!(
        wallet = %wallet,
        root = %root,
        identity = %identity,
        oracles = service.oracles().len(),
        released = resumed.released.len(),
        rebroadcast = resumed.broadcast.len(),
        resend = resumed.messages.len(),
        failed = resumed.failed.len(),
        "DLC contracts resumed"
    );
    for p in &resumed.failed {
        if let Pending::Failed { contract, reason } = p {
            tracing::error!(
                contract = %contract.to_lower_hex_string(),
                %reason,
                "a DLC contract could not be resumed; the others were"
            );
        }
    }
    for txid in &resumed.broadcast {
        tracing::info!(%txid, "DLC funding transaction broadcast again after a restart");
    }
    for outpoint in &resumed.released {
        tracing::info!(%outpoint, "DLC coin reservation released: no live contract uses it");
    }
    let resend = resumed
        .messages
        .iter()
        .filter_map(|p| match p {
            Pending::Send { contract, to, message } => {
                let contract = contract.to_lower_hex_string();
                tracing::warn!(
                    %contract,
                    to = %to,
                    "a DLC message to deliver again: published as a dlc_resend event to the first /v1/events subscriber"
                );
                Some(Event::DlcResend {
                    wallet: wallet.as_str().to_owned(),
                    contract,
                    to: to.serialize().to_lower_hex_string(),
                    message: encode_message(message).to_lower_hex_string(),
                })
            }
            _ => None,
        })
        .collect();
    Ok(Dlc {
        service,
        oracles,
        wallet,
        root,
        identity,
        resend: Mutex::new(resend),
    })
}
