//! Descriptor wallets whose keys live in anya-hsm and whose state lives in anya-storage.
//!
//! An [`AnyaWallet`] is a [`bdk_wallet::Wallet`] (descriptors, address derivation, coin
//! selection, change, dust rules, RBF) with three things wired in:
//!
//! - **keys**: the account xpubs in its descriptors come from an [`HsmProvider`] and every
//!   signature is made there by an [`HsmSigner`]; the wallet never holds a private key;
//! - **state**: every change is persisted through a [`KvPersister`] into a [`KvStore`], so the
//!   same wallet reloads from SQLite, RocksDB or PostgreSQL;
//! - **control**: [`AnyaWallet::sign`] runs the wallet's [`SpendPolicy`](crate::policy::SpendPolicy)
//!   before asking for any signature and records the decision in the HSM's audit chain, and
//!   [`AnyaWallet::finalize`] returns a transaction only after Bitcoin Core's script interpreter
//!   has verified every input.
//!
//! Several wallets (accounts) share one keystore and one store; each has its own name and
//! namespace (`anya/wallet/<name>`).
//!
//! [`AnyaWallet::load_watch_only`] opens a wallet without any HSM, for what needs no key
//! (balance, addresses, history, sync); signing on it is [`WalletError::WatchOnly`].

pub mod persist;
mod shared;

use std::sync::Arc;

use anya_core_types::{Clock, Label};
use anya_hsm::{HsmError, HsmProvider, KeyId};
use anya_storage::{KvStore, Namespace, Scan, StoreError};
use bdk_wallet::chain::BlockId;
use bdk_wallet::error::{BuildFeeBumpError, CreateTxError};
use bdk_wallet::{
    AddressInfo, Balance, CreateWithPersistError, KeychainKind, LoadWithPersistError, PersistedWallet, SignOptions,
    Wallet,
};
use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Block, FeeRate, Network, NetworkKind, OutPoint, ScriptBuf, Transaction, TxOut, Txid, Weight};

pub use bdk_wallet::descriptor::policy::Condition;
pub use persist::{KvPersister, PersistError};

use crate::policy::{OutputRole, PolicyEngine, PolicyError, SpendOutput, SpendSummary, RELEASE_OUTCOME};
use crate::psbt::{checked_total, extract_verified, validate, AmountSide, PsbtError};
use crate::signer::{prevout, HsmSigner, SignError, SignReport};
use crate::verify::{check_transaction, VerifyError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const REGISTRY_NS: &str = "anya/wallets";
/// Key of the birthday height in the wallet's namespace (beside the persister's `cs/` records,
/// which it never scans).
const BIRTHDAY_KEY: &[u8] = b"birthday";

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// A wallet of this name already exists in the store.
    #[error("wallet {name} already exists")]
    AlreadyExists {
        /// Its name.
        name: Label,
    },
    /// No wallet of this name is in the store.
    #[error("no wallet named {name}")]
    NotFound {
        /// The name asked for.
        name: Label,
    },
    /// The descriptors are invalid, or do not match the stored wallet.
    #[error("descriptor: {0}")]
    Descriptor(#[source] BoxError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The wallet's records could not be read or written.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The HSM refused or failed.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The transaction could not be built (not enough funds, dust, …).
    #[error("building the transaction: {0}")]
    Build(#[source] BoxError),
    /// The spending policy refused, or could not decide.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] SignError),
    /// Some inputs still lack the signatures they need.
    #[error("inputs {inputs:?} are not fully signed")]
    NotFinalized {
        /// Their indexes.
        inputs: Vec<usize>,
    },
    /// The finalized transaction failed Bitcoin Core's verification.
    #[error("consensus verification: {0}")]
    Verify(#[from] VerifyError),
    /// The PSBT breaks a rule of [`validate`] (a forged or
    /// inconsistent previous output, an amount past the money limit): the policy never sees it.
    #[error(transparent)]
    InvalidPsbt(#[from] PsbtError),
    /// The PSBT is not one this wallet can work with.
    #[error("PSBT: {0}")]
    Psbt(String),
    /// A block does not connect to the wallet's chain.
    #[error("block does not connect: {0}")]
    Chain(#[source] BoxError),
    /// The wallet does not know this transaction.
    #[error("unknown transaction {txid}")]
    UnknownTransaction {
        /// The txid asked for.
        txid: Txid,
    },
    /// The wallet was opened without its HSM ([`AnyaWallet::load_watch_only`]); it cannot sign.
    #[error("wallet {name} is open watch-only; load it with its HSM to sign")]
    WatchOnly {
        /// The wallet.
        name: Label,
    },
    /// A payment is too small to relay: Bitcoin Core treats an output worth less than what
    /// spending it costs as dust.
    #[error(
        "output {index} pays {} sat, below the dust limit of {} sat for its script",
        value.to_sat(),
        min.to_sat()
    )]
    BelowDust {
        /// The payment's position among the recipients given to [`AnyaWallet::build`].
        index: usize,
        /// What it pays.
        value: Amount,
        /// The smallest value its script may carry ([`Script::minimal_non_dust`](bitcoin::Script::minimal_non_dust)).
        min: Amount,
    },
    /// Another transaction of the wallet spends the same inputs and took this one's place.
    #[error("transaction {txid} was already replaced by another; bump its replacement instead")]
    AlreadyReplaced {
        /// The replaced transaction.
        txid: Txid,
    },
    /// [`AnyaWallet::cpfp`] cannot compute the parent's fee: the wallet does not know every
    /// output the parent spends (someone else sent it).
    #[error("the fee of {txid} is unknown: the wallet does not know every output it spends; give it (from the node's mempool) to cpfp_with_parent_fee")]
    ParentFeeUnknown {
        /// The parent.
        txid: Txid,
    },
    /// The wallet's confirmed, unreserved coins do not reach the amount asked for.
    #[error("need {needed}, but the confirmed unreserved coins hold {available}")]
    InsufficientFunds {
        /// The amount asked for.
        needed: Amount,
        /// What the coins that could be chosen hold.
        available: Amount,
    },
    /// A sum of the values of a stored transaction (or a fee given for it) leaves the money
    /// range: the wallet's records are damaged, or the fee given is wrong.
    #[error("the values of transaction {txid} leave the money range")]
    ValueOutOfRange {
        /// The transaction.
        txid: Txid,
    },
    /// The transaction is in a block: it can no longer be replaced or released, nor given a
    /// child for its fee.
    #[error("transaction {txid} is already confirmed")]
    AlreadyConfirmed {
        /// The transaction.
        txid: Txid,
    },
    /// The wallet knows the transaction but no longer sees it in the mempool (it was evicted
    /// or released, or never reached the network); there is nothing to bump.
    #[error("transaction {txid} is not in the mempool; build a new payment instead")]
    NotInMempool {
        /// The transaction.
        txid: Txid,
    },
}

/// What the wallet's descriptors are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Template {
    /// BIP84 single-sig P2WPKH: `wpkh([fp/84'/coin'/account']xpub/<0;1>/*)`.
    Bip84 {
        /// The BIP32 root in the HSM.
        root: KeyId,
        /// The account number.
        account: u32,
    },
    /// BIP86 single-sig Taproot key path: `tr([fp/86'/coin'/account']xpub/<0;1>/*)`.
    Bip86 {
        /// The BIP32 root in the HSM.
        root: KeyId,
        /// The account number.
        account: u32,
    },
    /// Any descriptors (multisig `wsh(sortedmulti(…))`, Taproot `multi_a`, timelocked branches
    /// with `older`/`after`), with public keys only; `signers` are the HSM roots whose keys
    /// (by fingerprint) this wallet signs with. Build the keys with [`descriptor_key`].
    Descriptors {
        /// The receive descriptor.
        external: String,
        /// The change descriptor.
        internal: String,
        /// The HSM roots that sign.
        signers: Vec<KeyId>,
    },
}

/// `[fingerprint/path]xpub` for the account at `path` below `root`: a descriptor key whose
/// private half stays in the HSM.
pub fn descriptor_key(
    hsm: &dyn HsmProvider,
    root: &KeyId,
    path: &DerivationPath,
    network: Network,
) -> Result<String, HsmError> {
    let account = hsm.account_xpub(root, path, NetworkKind::from(network))?;
    let (fp, origin) = &account.origin;
    let origin = origin.to_string();
    let origin = origin.trim_start_matches('m').trim_start_matches('/');
    Ok(if origin.is_empty() {
        format!("[{fp}]{}", account.xpub)
    } else {
        format!("[{fp}/{origin}]{}", account.xpub)
    })
}

/// The BIP44-style account path `purpose'/coin'/account'` for `network`.
pub fn account_path(purpose: u32, network: Network, account: u32) -> Result<DerivationPath, WalletError> {
    let coin = if network == Network::Bitcoin { 0 } else { 1 };
    let step = |i| ChildNumber::from_hardened_idx(i).map_err(|e| WalletError::Descriptor(Box::new(e)));
    Ok(DerivationPath::from(vec![step(purpose)?, step(coin)?, step(account)?]))
}

impl Template {
    fn descriptors(
        &self,
        hsm: &dyn HsmProvider,
        network: Network,
    ) -> Result<(String, String, Vec<KeyId>), WalletError> {
        let single = |purpose: u32, root: &KeyId, account: u32, wrap: &str| -> Result<_, WalletError> {
            let key = descriptor_key(hsm, root, &account_path(purpose, network, account)?, network)?;
            Ok((
                format!("{wrap}({key}/0/*)"),
                format!("{wrap}({key}/1/*)"),
                vec![root.clone()],
            ))
        };
        match self {
            Template::Bip84 { root, account } => single(84, root, *account, "wpkh"),
            Template::Bip86 { root, account } => single(86, root, *account, "tr"),
            Template::Descriptors {
                external,
                internal,
                signers,
            } => {
                for descriptor in [external, internal] {
                    public_only(descriptor)?;
                }
                Ok((external.clone(), internal.clone(), signers.clone()))
            }
        }
    }
}

/// The output each input of `psbt` spends, once the PSBT passed [`validate`] (so no amount in
/// them is past the money limit, nor their sum).
fn prevouts(psbt: &Psbt) -> Result<Vec<TxOut>, WalletError> {
    validate(psbt)?;
    Ok((0..psbt.inputs.len())
        .map(|index| prevout(psbt, index))
        .collect::<Result<_, _>>()?)
}

/// Refuses a descriptor that holds private keys: keys belong in the HSM, never in the wallet.
/// (This also keeps away `xprv…/*h` hardened wildcards, on which rust-miniscript 12.3 panics
/// when deriving.)
fn public_only(descriptor: &str) -> Result<(), WalletError> {
    let secp = secp256k1::Secp256k1::signing_only();
    let (_, keys) = miniscript::Descriptor::<miniscript::DescriptorPublicKey>::parse_descriptor(&secp, descriptor)
        .map_err(|e| WalletError::Descriptor(Box::new(e)))?;
    if keys.is_empty() {
        Ok(())
    } else {
        Err(WalletError::Descriptor(
            "the descriptor holds private keys; import them into the HSM and use their xpubs".into(),
        ))
    }
}

/// A descriptor wallet signing through an HSM, persisted in a [`KvStore`], guarded by a
/// spending policy.
pub struct AnyaWallet {
    name: Label,
    store: Arc<dyn KvStore>,
    wallet: PersistedWallet<KvPersister>,
    persister: KvPersister,
    signers: Vec<HsmSigner>,
    /// `None` when opened watch-only.
    hsm: Option<Arc<dyn HsmProvider>>,
    policy: PolicyEngine,
    clock: Arc<dyn Clock>,
    birthday: Option<u32>,
}

impl std::fmt::Debug for AnyaWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyaWallet")
            .field("name", &self.name)
            .field("network", &self.wallet.network())
            .field("signers", &self.signers)
            .field("watch_only", &self.hsm.is_none())
            .finish_non_exhaustive()
    }
}

fn wallet_ns(name: &Label) -> Result<Namespace, StoreError> {
    Namespace::new(format!("anya/wallet/{name}"))
}

fn policy_ns(name: &Label) -> Result<Namespace, StoreError> {
    Namespace::new(format!("anya/wallet/{name}/policy"))
}

impl AnyaWallet {
    /// Creates the wallet `name` from `template`, with account keys from `hsm`, and stores it.
    pub fn create(
        store: Arc<dyn KvStore>,
        hsm: Arc<dyn HsmProvider>,
        clock: Arc<dyn Clock>,
        name: Label,
        template: &Template,
        network: Network,
    ) -> Result<Self, WalletError> {
        let mut persister = KvPersister::new(Arc::clone(&store), wallet_ns(&name)?);
        if persister.exists()? {
            return Err(WalletError::AlreadyExists { name });
        }
        let (external, internal, roots) = template.descriptors(&*hsm, network)?;
        let signers = roots
            .iter()
            .map(|root| HsmSigner::new(Arc::clone(&hsm), root.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let wallet = Wallet::create(external, internal)
            .network(network)
            .create_wallet(&mut persister)
            .map_err(|e| match e {
                CreateWithPersistError::Persist(e) => WalletError::Persist(e),
                CreateWithPersistError::DataAlreadyExists(_) => WalletError::AlreadyExists { name: name.clone() },
                CreateWithPersistError::Descriptor(e) => WalletError::Descriptor(Box::new(e)),
            })?;
        let meta = serde_json::to_vec(&roots.iter().map(Label::as_str).collect::<Vec<_>>())
            .map_err(|e| WalletError::Descriptor(Box::new(e)))?;
        store.put(&Namespace::new(REGISTRY_NS)?, name.as_str().as_bytes(), &meta)?;
        let policy = PolicyEngine::new(Arc::clone(&store), policy_ns(&name)?, Arc::clone(&clock));
        Ok(Self {
            name,
            store,
            wallet,
            persister,
            signers,
            hsm: Some(hsm),
            policy,
            clock,
            birthday: None,
        })
    }

    /// Loads the wallet `name` from `store`.
    pub fn load(
        store: Arc<dyn KvStore>,
        hsm: Arc<dyn HsmProvider>,
        clock: Arc<dyn Clock>,
        name: Label,
    ) -> Result<Self, WalletError> {
        Self::open(store, Some(hsm), clock, name)
    }

    /// Loads the wallet `name` from `store` without an HSM (no passphrase or token needed):
    /// balance, addresses, history and sync work; [`sign`](Self::sign),
    /// [`send`](Self::send) and [`release`](Self::release) return [`WalletError::WatchOnly`].
    /// Unsigned PSBTs can still be built, for signing elsewhere.
    pub fn load_watch_only(store: Arc<dyn KvStore>, clock: Arc<dyn Clock>, name: Label) -> Result<Self, WalletError> {
        Self::open(store, None, clock, name)
    }

    fn open(
        store: Arc<dyn KvStore>,
        hsm: Option<Arc<dyn HsmProvider>>,
        clock: Arc<dyn Clock>,
        name: Label,
    ) -> Result<Self, WalletError> {
        let meta = store
            .get(&Namespace::new(REGISTRY_NS)?, name.as_str().as_bytes())?
            .ok_or_else(|| WalletError::NotFound { name: name.clone() })?;
        let corrupt = |reason: String| PersistError::Corrupt {
            key: format!("{REGISTRY_NS}/{name}"),
            reason,
        };
        let roots: Vec<String> = serde_json::from_slice(&meta.value).map_err(|e| corrupt(e.to_string()))?;
        let roots = roots
            .iter()
            .map(|r| Label::new(r.as_str()).map_err(|e| corrupt(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let signers = match &hsm {
            Some(hsm) => roots
                .into_iter()
                .map(|root| HsmSigner::new(Arc::clone(hsm), root))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let ns = wallet_ns(&name)?;
        let birthday = match store.get(&ns, BIRTHDAY_KEY)? {
            None => None,
            Some(v) => Some(u32::from_be_bytes(v.value[..].try_into().map_err(|_| {
                PersistError::Corrupt {
                    key: format!("anya/wallet/{name}/birthday"),
                    reason: "not a 4-byte height".to_owned(),
                }
            })?)),
        };
        let mut persister = KvPersister::new(Arc::clone(&store), ns);
        let wallet = Wallet::load()
            .load_wallet(&mut persister)
            .map_err(|e| match e {
                LoadWithPersistError::Persist(e) => WalletError::Persist(e),
                LoadWithPersistError::InvalidChangeSet(e) => WalletError::Persist(PersistError::Corrupt {
                    key: format!("anya/wallet/{name}"),
                    reason: e.to_string(),
                }),
            })?
            .ok_or_else(|| WalletError::NotFound { name: name.clone() })?;
        let policy = PolicyEngine::new(Arc::clone(&store), policy_ns(&name)?, Arc::clone(&clock));
        Ok(Self {
            name,
            store,
            wallet,
            persister,
            signers,
            hsm,
            policy,
            clock,
            birthday,
        })
    }

    /// The names of every wallet in `store`.
    pub fn list(store: &dyn KvStore) -> Result<Vec<Label>, WalletError> {
        let ns = Namespace::new(REGISTRY_NS)?;
        store
            .scan(&ns, Scan::all())?
            .into_iter()
            .map(|e| {
                std::str::from_utf8(&e.key)
                    .ok()
                    .and_then(|s| Label::new(s).ok())
                    .ok_or_else(|| {
                        WalletError::Persist(PersistError::Corrupt {
                            key: REGISTRY_NS.to_owned(),
                            reason: "a wallet name is not a label".to_owned(),
                        })
                    })
            })
            .collect()
    }

    /// The wallet's name.
    pub fn name(&self) -> &Label {
        &self.name
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.wallet.network()
    }

    /// The BDK wallet underneath, for read-only queries.
    pub fn bdk(&self) -> &Wallet {
        &self.wallet
    }

    /// The spending policy engine (rules and history).
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// The signers (one per HSM root).
    pub fn signers(&self) -> &[HsmSigner] {
        &self.signers
    }

    /// The store the wallet lives in.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Whether the wallet was opened without its HSM ([`load_watch_only`](Self::load_watch_only)).
    pub fn is_watch_only(&self) -> bool {
        self.hsm.is_none()
    }

    /// The HSM and the key its policy decisions are audited under, or
    /// [`WalletError::WatchOnly`].
    fn signing(&self) -> Result<(&dyn HsmProvider, &KeyId), WalletError> {
        let hsm = self.hsm.as_deref().ok_or_else(|| WalletError::WatchOnly {
            name: self.name.clone(),
        })?;
        let key = self
            .signers
            .first()
            .map(HsmSigner::root)
            .ok_or_else(|| WalletError::Psbt("the wallet has no HSM signer".to_owned()))?;
        Ok((hsm, key))
    }

    /// The height below which the wallet holds no transactions, if one was set: a chain source
    /// starts a new wallet's scan there instead of at genesis.
    pub fn birthday(&self) -> Option<u32> {
        self.birthday
    }

    /// Stores `height` as the wallet's birthday (durably, beside its records). Blocks below it
    /// are never scanned while the wallet's chain is below it, so payments confirmed there
    /// stay invisible: set it to a height at or before the wallet's first address was handed
    /// out. It has no effect once the wallet has synced past it.
    pub fn set_birthday(&mut self, height: u32) -> Result<(), WalletError> {
        self.store
            .put(&wallet_ns(&self.name)?, BIRTHDAY_KEY, &height.to_be_bytes())?;
        self.birthday = Some(height);
        Ok(())
    }

    /// Writes what the wallet has staged since the last write, as one durable change set.
    pub(crate) fn persist(&mut self) -> Result<(), WalletError> {
        self.wallet.persist(&mut self.persister)?;
        Ok(())
    }

    /// Reveals (and stores) the next receive address.
    pub fn next_address(&mut self) -> Result<AddressInfo, WalletError> {
        let info = self.wallet.reveal_next_address(KeychainKind::External);
        self.persist()?;
        Ok(info)
    }

    /// Confirmed, pending and immature balances.
    pub fn balance(&self) -> Balance {
        self.wallet.balance()
    }

    /// Whether `script` is one of the wallet's (revealed or within its lookahead).
    pub fn is_mine(&self, script: &ScriptBuf) -> bool {
        self.wallet.is_mine(script.clone())
    }

    /// Applies a block at `height` (it must connect to the wallet's chain) and stores the
    /// result.
    pub fn apply_block(&mut self, block: &Block, height: u32) -> Result<(), WalletError> {
        self.wallet
            .apply_block(block, height)
            .map_err(|e| WalletError::Chain(Box::new(e)))?;
        self.persist()
    }

    /// Applies a block at `height` that connects to the wallet's chain at `connected_to` (a
    /// chain source that skipped heights, as a scan from a birthday does, names the block it
    /// connects through), without writing it: the change stays staged until
    /// [`persist`](Self::persist). A chain source applying many blocks writes them in groups,
    /// so that a sync costs one commit per group, not one per block.
    pub(crate) fn stage_block_connected_to(
        &mut self,
        block: &Block,
        height: u32,
        connected_to: BlockId,
    ) -> Result<(), WalletError> {
        self.wallet
            .apply_block_connected_to(block, height, connected_to)
            .map_err(|e| WalletError::Chain(Box::new(e)))
    }

    /// Adds unconfirmed transactions (this wallet's own broadcasts, or the mempool's) seen at
    /// `seen_at` (Unix seconds), and stores the result.
    pub fn apply_unconfirmed(&mut self, txs: Vec<Transaction>, seen_at: u64) -> Result<(), WalletError> {
        self.stage_unconfirmed(txs, seen_at);
        self.persist()
    }

    /// [`apply_unconfirmed`](Self::apply_unconfirmed) without the write.
    ///
    /// A transaction that spends an input an unconfirmed wallet transaction spends (a fee bump,
    /// or a double spend the mempool holds instead) takes that transaction's place at once: the
    /// replaced one is marked evicted when the new one is seen. Otherwise BDK would choose
    /// between the two by their seen-at seconds, and a replacement seen in the second its
    /// original was last seen could lose the tie. (BDK drops a transaction evicted at or after
    /// it was last seen; a later sight of it in a mempool brings it back.)
    pub(crate) fn stage_unconfirmed(&mut self, txs: Vec<Transaction>, seen_at: u64) {
        let new: std::collections::HashSet<Txid> = txs.iter().map(Transaction::compute_txid).collect();
        let spent: std::collections::HashSet<OutPoint> = txs
            .iter()
            .flat_map(|tx| tx.input.iter().map(|i| i.previous_output))
            .collect();
        let replaced: Vec<(Txid, u64)> = self
            .wallet
            .transactions()
            .filter(|c| !c.chain_position.is_confirmed() && !new.contains(&c.tx_node.txid))
            .filter(|c| c.tx_node.tx.input.iter().any(|i| spent.contains(&i.previous_output)))
            .map(|c| (c.tx_node.txid, seen_at.max(c.tx_node.last_seen.unwrap_or(0))))
            .collect();
        self.wallet
            .apply_unconfirmed_txs(txs.into_iter().map(|tx| (tx, seen_at)));
        if !replaced.is_empty() {
            self.wallet.apply_evicted_txs(replaced);
        }
    }

    /// Marks unconfirmed transactions as evicted from the mempool at the given Unix times (a
    /// chain source saw them dropped), so they stop counting as pending; stores the result.
    pub fn apply_evicted(&mut self, evicted: Vec<(Txid, u64)>) -> Result<(), WalletError> {
        self.stage_evicted(evicted);
        self.persist()
    }

    /// [`apply_evicted`](Self::apply_evicted) without the write.
    pub(crate) fn stage_evicted(&mut self, evicted: Vec<(Txid, u64)>) {
        self.wallet.apply_evicted_txs(evicted);
    }

    /// Builds an unsigned PSBT paying `recipients` at `fee_rate`, with coin selection, change
    /// to the wallet and RBF signalled.
    pub fn build(&mut self, recipients: &[(ScriptBuf, Amount)], fee_rate: FeeRate) -> Result<Psbt, WalletError> {
        self.build_with(recipients, fee_rate, None)
    }

    /// [`build`](Self::build) for descriptors with more than one way to spend (a multisig or
    /// a timelocked Taproot leaf beside the key path): `condition` is the timelock the chosen
    /// spending path needs (`Condition::default()` for none; find paths with
    /// [`Wallet::policies`] and `Policy::get_condition`). Without one, BDK refuses a
    /// descriptor whose policy needs a choice.
    pub fn build_with(
        &mut self,
        recipients: &[(ScriptBuf, Amount)],
        fee_rate: FeeRate,
        condition: Option<Condition>,
    ) -> Result<Psbt, WalletError> {
        // Coins set aside for a shared transaction (a DLC funding) are never spent here.
        let reserved = self.reserved()?;
        let mut builder = self.wallet.build_tx();
        builder.fee_rate(fee_rate);
        if !reserved.is_empty() {
            builder.unspendable(reserved);
        }
        if let Some(condition) = condition {
            builder.set_condition(condition);
        }
        for (script, amount) in recipients {
            builder.add_recipient(script.clone(), *amount);
        }
        let psbt = builder.finish().map_err(|e| build_error(e, recipients))?;
        self.persist()?;
        Ok(psbt)
    }

    /// Builds a replacement of the wallet's unconfirmed transaction `txid` paying `fee_rate`
    /// (BIP125: it spends the same inputs and pays more, taking the difference from change).
    ///
    /// A transaction that is confirmed, was replaced, or left the mempool cannot be bumped:
    /// [`WalletError::AlreadyConfirmed`], [`WalletError::AlreadyReplaced`],
    /// [`WalletError::NotInMempool`]; one the wallet never saw is
    /// [`WalletError::UnknownTransaction`].
    pub fn bump_fee(&mut self, txid: Txid, fee_rate: FeeRate) -> Result<Psbt, WalletError> {
        let mut builder = match self.wallet.build_fee_bump(txid) {
            Ok(builder) => builder,
            Err(e) => return Err(self.bump_error(e)),
        };
        builder.fee_rate(fee_rate);
        let psbt = builder.finish().map_err(|e| WalletError::Build(Box::new(e)))?;
        self.persist()?;
        Ok(psbt)
    }

    /// Says why BDK would not bump: it reports every transaction that is not in the wallet's
    /// current view as "not found", including those it knows were replaced or evicted.
    fn bump_error(&self, error: BuildFeeBumpError) -> WalletError {
        match error {
            BuildFeeBumpError::TransactionConfirmed(txid) => WalletError::AlreadyConfirmed { txid },
            BuildFeeBumpError::TransactionNotFound(txid) => match self.wallet.tx_graph().get_tx(txid) {
                None => WalletError::UnknownTransaction { txid },
                Some(tx) => {
                    let replaced = self.wallet.transactions().any(|c| {
                        c.tx_node.txid != txid
                            && c.tx_node
                                .tx
                                .input
                                .iter()
                                .any(|i| tx.input.iter().any(|o| o.previous_output == i.previous_output))
                    });
                    if replaced {
                        WalletError::AlreadyReplaced { txid }
                    } else {
                        WalletError::NotInMempool { txid }
                    }
                }
            },
            other => WalletError::Build(Box::new(other)),
        }
    }

    /// Builds a child that spends the wallet's output(s) of the unconfirmed `parent` back to the
    /// wallet, paying enough that parent and child together reach `package_fee_rate` (CPFP).
    ///
    /// The parent's fee is computed from the outputs it spends, which the wallet must know (a
    /// transaction the wallet sent). For a parent someone else sent (a stuck incoming payment)
    /// that is [`WalletError::ParentFeeUnknown`]: ask the node for its fee (e.g.
    /// [`BitcoindChain::mempool_fee`](crate::rpc::BitcoindChain::mempool_fee)) and use
    /// [`cpfp_with_parent_fee`](Self::cpfp_with_parent_fee).
    pub fn cpfp(&mut self, parent: Txid, package_fee_rate: FeeRate) -> Result<Psbt, WalletError> {
        let tx = self.unconfirmed_parent(parent)?;
        let parent_fee = self.fee_of(&tx)?;
        self.cpfp_paying(&tx, parent_fee, package_fee_rate)
    }

    /// [`cpfp`](Self::cpfp) for a parent whose fee the caller knows (from the node's mempool):
    /// the wallet need not know the outputs the parent spends.
    pub fn cpfp_with_parent_fee(
        &mut self,
        parent: Txid,
        parent_fee: Amount,
        package_fee_rate: FeeRate,
    ) -> Result<Psbt, WalletError> {
        let tx = self.unconfirmed_parent(parent)?;
        if parent_fee > Amount::MAX_MONEY {
            return Err(WalletError::ValueOutOfRange { txid: parent });
        }
        self.cpfp_paying(&tx, parent_fee, package_fee_rate)
    }

    /// The wallet's transaction `parent`, which must not be confirmed.
    fn unconfirmed_parent(&self, parent: Txid) -> Result<Transaction, WalletError> {
        let node = self
            .wallet
            .get_tx(parent)
            .ok_or(WalletError::UnknownTransaction { txid: parent })?;
        if node.chain_position.is_confirmed() {
            return Err(WalletError::AlreadyConfirmed { txid: parent });
        }
        Ok((*node.tx_node.tx).clone())
    }

    /// The fee `tx` pays, from the outputs it spends as the wallet knows them, with checked
    /// sums: the wallet's records come from the store, and a damaged store must give a typed
    /// error, not an overflow.
    fn fee_of(&self, tx: &Transaction) -> Result<Amount, WalletError> {
        let txid = tx.compute_txid();
        let graph = self.wallet.tx_graph();
        let spent = tx
            .input
            .iter()
            .map(|i| graph.get_txout(i.previous_output).map(|o| o.value))
            .collect::<Option<Vec<Amount>>>()
            .ok_or(WalletError::ParentFeeUnknown { txid })?;
        let inputs = checked_total(spent, AmountSide::Inputs).map_err(|_| WalletError::ValueOutOfRange { txid })?;
        let outputs = checked_total(tx.output.iter().map(|o| o.value), AmountSide::Outputs)
            .map_err(|_| WalletError::ValueOutOfRange { txid })?;
        inputs.checked_sub(outputs).ok_or(WalletError::ValueOutOfRange { txid })
    }

    fn cpfp_paying(
        &mut self,
        tx: &Transaction,
        parent_fee: Amount,
        package_fee_rate: FeeRate,
    ) -> Result<Psbt, WalletError> {
        let parent = tx.compute_txid();
        let ours: Vec<OutPoint> = tx
            .output
            .iter()
            .enumerate()
            .filter(|(_, o)| self.wallet.is_mine(o.script_pubkey.clone()))
            .map(|(vout, _)| OutPoint::new(parent, vout as u32))
            .collect();
        if ours.is_empty() {
            return Err(WalletError::Build("the parent pays nothing to this wallet".into()));
        }
        let change = self.wallet.next_unused_address(KeychainKind::Internal).script_pubkey();
        // First pass at the target rate finds the child's size; the second pays for both.
        let draft = self.cpfp_psbt(&ours, &change, None, package_fee_rate)?;
        let child_weight = self.signed_weight(&draft)?;
        let overflow = || WalletError::ValueOutOfRange { txid: parent };
        let package = tx.weight().checked_add(child_weight).ok_or_else(overflow)?;
        let total = package_fee_rate.checked_mul_by_weight(package).ok_or_else(overflow)?;
        let floor = FeeRate::BROADCAST_MIN
            .checked_mul_by_weight(child_weight)
            .ok_or_else(overflow)?;
        let child_fee = total.checked_sub(parent_fee).unwrap_or(Amount::ZERO).max(floor);
        let psbt = self.cpfp_psbt(&ours, &change, Some(child_fee), package_fee_rate)?;
        self.persist()?;
        Ok(psbt)
    }

    fn cpfp_psbt(
        &mut self,
        ours: &[OutPoint],
        change: &ScriptBuf,
        fee: Option<Amount>,
        rate: FeeRate,
    ) -> Result<Psbt, WalletError> {
        let mut builder = self.wallet.build_tx();
        builder
            .add_utxos(ours)
            .map_err(|e| WalletError::Build(Box::new(e)))?
            .manually_selected_only()
            .drain_to(change.clone());
        match fee {
            Some(fee) => builder.fee_absolute(fee),
            None => builder.fee_rate(rate),
        };
        builder.finish().map_err(|e| WalletError::Build(Box::new(e)))
    }

    /// The weight `psbt`'s transaction will have once signed: its unsigned weight plus, per
    /// input, the most a satisfaction of the wallet's descriptor can weigh (P2WPKH and P2TR
    /// key-path sizes for inputs the wallet does not own).
    pub fn signed_weight(&self, psbt: &Psbt) -> Result<Weight, WalletError> {
        self.signed_weight_of(psbt, &prevouts(psbt)?)
    }

    /// [`signed_weight`](Self::signed_weight) with the spent outputs already read.
    fn signed_weight_of(&self, psbt: &Psbt, spent: &[TxOut]) -> Result<Weight, WalletError> {
        let mut weight = psbt.unsigned_tx.weight();
        let mut segwit = false;
        // One satisfaction weight per keychain, computed when first needed.
        let mut per_keychain: [Option<Weight>; 2] = [None, None];
        for (index, out) in spent.iter().enumerate() {
            let satisfaction = match self.wallet.derivation_of_spk(out.script_pubkey.clone()) {
                Some((keychain, _)) => {
                    let slot = &mut per_keychain[keychain as usize];
                    match slot {
                        Some(w) => *w,
                        None => *slot.insert(
                            self.wallet
                                .public_descriptor(keychain)
                                .max_weight_to_satisfy()
                                .map_err(|e| WalletError::Descriptor(Box::new(e)))?,
                        ),
                    }
                }
                None if out.script_pubkey.is_p2tr() => Weight::from_wu(1 + 1 + 65),
                None if out.script_pubkey.is_p2wpkh() => Weight::from_wu(1 + 1 + 73 + 1 + 33),
                None => {
                    return Err(WalletError::Psbt(format!(
                        "input {index} is neither the wallet's nor P2WPKH/P2TR: its signed size is unknown"
                    )))
                }
            };
            segwit |= out.script_pubkey.is_witness_program();
            weight += satisfaction;
        }
        if segwit {
            weight += Weight::from_wu(2);
        }
        Ok(weight)
    }

    /// What `psbt` does, as the spending policy sees it: value in, each output's role, fee and
    /// fee rate on the signed size. A PSBT that breaks a rule of [`validate`] is
    /// [`WalletError::InvalidPsbt`]: the policy never judges amounts the PSBT cannot back.
    pub fn summarize(&self, psbt: &Psbt) -> Result<SpendSummary, WalletError> {
        let spent = prevouts(psbt)?;
        // Checked even though validate bounds both sums: these amounts came from outside.
        let input_value = checked_total(spent.iter().map(|o| o.value), AmountSide::Inputs)?;
        let fingerprints: Vec<Fingerprint> = self.signers.iter().map(HsmSigner::fingerprint).collect();
        let ours = |fp: &Fingerprint| fingerprints.contains(fp);
        let mut outputs = Vec::with_capacity(psbt.unsigned_tx.output.len());
        for (index, out) in psbt.unsigned_tx.output.iter().enumerate() {
            let claims_ours = psbt.outputs.get(index).is_some_and(|o| {
                o.bip32_derivation.values().any(|(fp, _)| ours(fp))
                    || o.tap_key_origins.values().any(|(_, (fp, _))| ours(fp))
            });
            let role = if self.is_mine(&out.script_pubkey) {
                OutputRole::Wallet
            } else if claims_ours {
                OutputRole::ForgedChange
            } else {
                OutputRole::External
            };
            outputs.push(SpendOutput {
                script_pubkey: out.script_pubkey.clone(),
                value: out.value,
                role,
            });
        }
        let output_value = checked_total(psbt.unsigned_tx.output.iter().map(|o| o.value), AmountSide::Outputs)?;
        let fee = input_value
            .checked_sub(output_value)
            .ok_or_else(|| WalletError::Psbt(format!("outputs {output_value} exceed inputs {input_value}")))?;
        let weight = self.signed_weight_of(psbt, &spent)?;
        Ok(SpendSummary {
            txid: psbt.unsigned_tx.compute_txid(),
            input_value,
            outputs,
            fee,
            fee_rate: fee / weight,
            inputs: psbt.unsigned_tx.input.iter().map(|i| i.previous_output).collect(),
        })
    }

    /// Checks `psbt` against the spending policy (recording the decision in the HSM's audit
    /// chain), then signs every input the wallet's HSM roots can sign. A refusal is
    /// [`WalletError::Policy`] naming every broken rule, and no signature is made.
    ///
    /// A watch-only wallet returns [`WalletError::WatchOnly`].
    pub fn sign(&self, psbt: &mut Psbt) -> Result<SignReport, WalletError> {
        let (hsm, key) = self.signing()?;
        let summary = self.summarize(psbt)?;
        self.policy.approve(&summary, hsm, key)?;
        let mut report = SignReport::default();
        for signer in &self.signers {
            // `summarize` validated the PSBT.
            let r = signer.sign_validated(psbt)?;
            report.ecdsa += r.ecdsa;
            report.taproot_key += r.taproot_key;
            report.taproot_script += r.taproot_script;
        }
        Ok(report)
    }

    /// Finalizes `psbt` (miniscript satisfaction of each input), extracts the transaction and
    /// verifies every input with Bitcoin Core's script interpreter before returning it.
    pub fn finalize(&self, psbt: &mut Psbt) -> Result<Transaction, WalletError> {
        // Before BDK's finalizer reads the UTXO fields: they come from outside.
        validate(psbt).map_err(WalletError::InvalidPsbt)?;
        // A transaction Core would refuse by itself (duplicate inputs, no outputs) is refused
        // before any finalizing work; extract_verified checks the final one again.
        check_transaction(&psbt.unsigned_tx).map_err(|e| WalletError::InvalidPsbt(PsbtError::Check(e)))?;
        let options = SignOptions {
            trust_witness_utxo: true,
            ..SignOptions::default()
        };
        let done = self
            .wallet
            .finalize_psbt(psbt, options)
            .map_err(|e| WalletError::Psbt(e.to_string()))?;
        if !done {
            let inputs = psbt
                .inputs
                .iter()
                .enumerate()
                .filter(|(_, i)| i.final_script_sig.is_none() && i.final_script_witness.is_none())
                .map(|(n, _)| n)
                .collect();
            return Err(WalletError::NotFinalized { inputs });
        }
        // BDK's finalizer keeps the UTXO fields, so the spent outputs are still there.
        extract_verified(psbt).map_err(|e| match e {
            PsbtError::Verify(e) => WalletError::Verify(e),
            e @ PsbtError::Check(_) => WalletError::InvalidPsbt(e),
            PsbtError::MissingPrevout { index } => WalletError::Sign(SignError::MissingPrevout { index }),
            other => WalletError::Psbt(other.to_string()),
        })
    }

    /// Builds, policy-checks, signs, finalizes and verifies a payment; the wallet records the
    /// transaction as unconfirmed (seen at `seen_at`) so it can be bumped or spent from.
    pub fn send(
        &mut self,
        recipients: &[(ScriptBuf, Amount)],
        fee_rate: FeeRate,
        seen_at: u64,
    ) -> Result<Transaction, WalletError> {
        // Before building: a build reveals a change address and stores it.
        self.signing()?;
        let mut psbt = self.build(recipients, fee_rate)?;
        self.complete(&mut psbt, seen_at)
    }

    /// The second half of [`send`](Self::send), for a PSBT built earlier (by
    /// [`build`](Self::build) or [`bump_fee`](Self::bump_fee), possibly on a
    /// [watch-only](Self::load_watch_only) copy of this wallet so that mistakes show before the
    /// HSM is unlocked): policy check, signatures, finalization and Core's verification, then
    /// the transaction is recorded as unconfirmed (seen at `seen_at`) so it can be bumped or
    /// spent from.
    pub fn complete(&mut self, psbt: &mut Psbt, seen_at: u64) -> Result<Transaction, WalletError> {
        self.sign(psbt)?;
        let tx = self.finalize(psbt)?;
        self.apply_unconfirmed(vec![tx.clone()], seen_at)?;
        Ok(tx)
    }

    /// Releases the spend `txid` that never reached the network (the node rejected it, or it
    /// was never broadcast): its spending-policy reservation is removed
    /// ([`PolicyEngine::release`]), the release is recorded in the HSM's audit chain
    /// ([`RELEASE_OUTCOME`]), and the wallet marks the transaction evicted now so that it
    /// stops counting as pending. Returns what the reservation counted (`None` if it counted
    /// nothing).
    ///
    /// Release only what certainly did not reach the network: a released transaction that
    /// confirms after all was never counted. A confirmed transaction is
    /// [`WalletError::AlreadyConfirmed`]; a watch-only wallet, [`WalletError::WatchOnly`]
    /// (the policy belongs to the signing side, and the release must reach its audit chain).
    pub fn release(&mut self, txid: Txid) -> Result<Option<Amount>, WalletError> {
        let (hsm, key) = self.signing()?;
        let last_seen = match self.wallet.get_tx(txid) {
            Some(tx) if tx.chain_position.is_confirmed() => return Err(WalletError::AlreadyConfirmed { txid }),
            Some(tx) => Some(tx.tx_node.last_seen.unwrap_or(0)),
            None => None,
        };
        let released = self.policy.release(txid)?;
        if released.is_some() {
            hsm.record_decision(Some(key), &txid.to_byte_array(), RELEASE_OUTCOME)?;
        }
        if let Some(last_seen) = last_seen {
            // BDK drops a transaction from its view only when evicted at or after it was last
            // seen, so a clock behind the seen-at time must not keep it pending.
            let now = self.clock.now().as_secs().max(last_seen);
            self.apply_evicted(vec![(txid, now)])?;
        }
        Ok(released)
    }
}

/// A builder error with what made it: BDK names a dust output only by its index.
fn build_error(error: CreateTxError, recipients: &[(ScriptBuf, Amount)]) -> WalletError {
    match error {
        CreateTxError::OutputBelowDustLimit(index) => match recipients.get(index) {
            Some((script, value)) => WalletError::BelowDust {
                index,
                value: *value,
                min: script.minimal_non_dust(),
            },
            None => WalletError::Build(Box::new(error)),
        },
        other => WalletError::Build(Box::new(other)),
    }
}
