//! PSBT (BIP174 / BIP371) decoding with typed errors.
//!
//! Version 0 only: a PSBTv2 (BIP370) is refused with [`PsbtError::UnsupportedVersion`], and a
//! version 0 PSBT carrying BIP370's version-2-only fields with [`PsbtError::V2FieldInV0`].
//! rust-bitcoin 0.32 reads no version 2 PSBT, and a hand-written reader for the signing path
//! is not worth its risk until one does; the BIP370 vectors are checked against these errors.
//!
//! Outside bytes reach anya as a PSBT in one of three spellings: raw binary (starting with the
//! magic `psbt\xff`), base64 (the form Core's RPC and most wallets use) or hex. [`decode`]
//! accepts any of them and returns a [`bitcoin::Psbt`] or a [`PsbtError`] that says which rule
//! the input broke; it never panics on any input.
//!
//! The other BIP174 roles work on a decoded [`Psbt`]: [`inspect`] reads what it does (inputs,
//! outputs, fee, which key signs what), [`combine`] merges signatures from several signers,
//! [`finalize`] builds the final scripts with miniscript, and [`extract_verified`] returns the
//! network transaction only after Bitcoin Core's script interpreter accepted every input.

use std::collections::BTreeMap;
use std::fmt;

use bitcoin::bip32::{DerivationPath, Fingerprint, KeySource};
use bitcoin::psbt::{self, Psbt};
use bitcoin::secp256k1::{PublicKey as SecpPublicKey, Secp256k1};
use bitcoin::taproot::TapLeafHash;
use bitcoin::{
    absolute, Address, Amount, FeeRate, Network, OutPoint, Script, ScriptBuf, Sequence, Transaction, TxOut, Txid,
    XOnlyPublicKey,
};
use miniscript::psbt::PsbtExt;

use crate::signer::prevout;
use crate::verify::{check_transaction, verify_transaction, CheckError, VerifyError, VerifyFlags};

/// The PSBT magic bytes (`psbt` followed by `0xff`).
pub const MAGIC: [u8; 5] = *b"psbt\xff";

/// Largest PSBT accepted, in raw bytes (Core's default `-maxtxfee`-bounded PSBTs are far
/// smaller; this bound keeps a hostile input from allocating without limit).
pub const MAX_PSBT_BYTES: usize = 16 * 1024 * 1024;

/// Why bytes are not a PSBT anya accepts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PsbtError {
    /// The input is longer than [`MAX_PSBT_BYTES`].
    #[error("PSBT of {len} bytes is over the {MAX_PSBT_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Nothing (or only whitespace) was given.
    #[error("not a PSBT: the input is empty")]
    Empty,
    /// Text that is neither base64 nor hex of a PSBT.
    #[error("not a PSBT: the text is neither base64 nor hex")]
    Encoding,
    /// The bytes broke a BIP174/BIP371 rule (bad magic, duplicate key, unsigned transaction with
    /// script data, a key of the wrong length, …).
    #[error("invalid PSBT: {0}")]
    Invalid(#[from] psbt::Error),
    /// Two PSBTs to combine are for different unsigned transactions.
    #[error("cannot combine PSBTs of different transactions ({left} and {right})")]
    DifferentTransactions {
        /// The first one's txid.
        left: Txid,
        /// The second one's txid.
        right: Txid,
    },
    /// Some inputs could not be finalized, or are not final yet.
    #[error("inputs not finalized: {}", failures(inputs))]
    NotFinalized {
        /// Each failing input and why.
        inputs: Vec<InputFailure>,
    },
    /// An input lacks the previous output (`witness_utxo` / `non_witness_utxo`) that
    /// verification needs.
    #[error("input {index} has no witness_utxo or non_witness_utxo")]
    MissingPrevout {
        /// The input.
        index: usize,
    },
    /// The transaction could not be extracted (a missing input value, outputs over inputs, an
    /// absurd fee rate).
    #[error("extracting the transaction: {0}")]
    Extract(#[source] Box<psbt::ExtractTxError>),
    /// Bitcoin Core's script interpreter rejected an input of the extracted transaction.
    #[error("consensus verification: {0}")]
    Verify(#[from] VerifyError),
    /// The transaction breaks one of Core's context-free rules ([`check_transaction`]).
    #[error("consensus check: {0}")]
    Check(#[from] CheckError),
    /// The PSBT has a different number of input maps than its unsigned transaction has inputs.
    #[error("the PSBT has {maps} input maps for {inputs} transaction inputs")]
    InputCountMismatch {
        /// Input maps in the PSBT.
        maps: usize,
        /// Inputs of the unsigned transaction.
        inputs: usize,
    },
    /// The PSBT has a different number of output maps than its unsigned transaction has
    /// outputs.
    #[error("the PSBT has {maps} output maps for {outputs} transaction outputs")]
    OutputCountMismatch {
        /// Output maps in the PSBT.
        maps: usize,
        /// Outputs of the unsigned transaction.
        outputs: usize,
    },
    /// An input's `non_witness_utxo` is not the transaction the input spends: its txid differs
    /// from the input's previous txid, so its amounts and scripts cannot be trusted.
    #[error("input {index}: non_witness_utxo has txid {found}, but the input spends {expected}")]
    NonWitnessUtxoMismatch {
        /// The input.
        index: usize,
        /// The txid the input spends.
        expected: Txid,
        /// The txid of the transaction given as `non_witness_utxo`.
        found: Txid,
    },
    /// The PSBT's `PSBT_GLOBAL_VERSION` is not 0: anya reads version 0 PSBTs only (see the
    /// [module docs](self)).
    #[error("PSBT version {version} is not supported (only version 0, BIP174)")]
    UnsupportedVersion {
        /// The version the PSBT declares.
        version: u32,
    },
    /// Bytes follow the PSBT's last map (Core: "extra data after PSBT").
    #[error("{len} bytes follow the end of the PSBT")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// A version 0 PSBT holds a field that BIP370 defines for version 2 only, which BIP370
    /// (and Core) forbid: a signer reading it one way and the coordinator the other would not
    /// agree on the transaction.
    #[error("the {map} map of a version 0 PSBT holds the PSBTv2-only field type {key_type:#04x}")]
    V2FieldInV0 {
        /// Where.
        map: PsbtMap,
        /// The field's key type.
        key_type: u8,
    },
    /// An input spends an output no transaction can spend (its script starts with `OP_RETURN`
    /// or is over 10,000 bytes), so the PSBT can never become a valid transaction.
    #[error("input {index} spends an unspendable output")]
    UnspendablePrevout {
        /// The input.
        index: usize,
    },
    /// An input spends an output index that its `non_witness_utxo` does not have.
    #[error("input {index}: spends output {vout}, but its non_witness_utxo has {outputs} outputs")]
    PrevoutIndexOutOfRange {
        /// The input.
        index: usize,
        /// The output index it spends.
        vout: u32,
        /// How many outputs the `non_witness_utxo` has.
        outputs: usize,
    },
    /// An input's `witness_utxo` is not the output its `non_witness_utxo` holds at the spent
    /// index.
    #[error("input {index}: witness_utxo differs from the spent output of its non_witness_utxo")]
    WitnessUtxoMismatch {
        /// The input.
        index: usize,
    },
    /// An amount is above the 21,000,000 BTC money limit ([`Amount::MAX_MONEY`]).
    #[error("{at}: {} sat is over the money limit of 21,000,000 BTC", value.to_sat())]
    AmountOutOfRange {
        /// Where the amount is.
        at: AmountAt,
        /// The amount.
        value: Amount,
    },
    /// The amounts on one side of the transaction add up to more than the money limit
    /// ([`Amount::MAX_MONEY`]).
    #[error("the {side} add up to more than the money limit of 21,000,000 BTC")]
    AmountOverflow {
        /// Which side.
        side: AmountSide,
    },
}

/// Where in a PSBT an amount is (for [`PsbtError::AmountOutOfRange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmountAt {
    /// An output of the unsigned transaction.
    Output {
        /// Its index.
        index: usize,
    },
    /// An input's `witness_utxo`.
    WitnessUtxo {
        /// The input.
        index: usize,
    },
    /// An output of an input's `non_witness_utxo`.
    NonWitnessUtxo {
        /// The input.
        index: usize,
        /// The output of the `non_witness_utxo`.
        vout: usize,
    },
}

impl fmt::Display for AmountAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountAt::Output { index } => write!(f, "output {index}"),
            AmountAt::WitnessUtxo { index } => write!(f, "input {index}: witness_utxo"),
            AmountAt::NonWitnessUtxo { index, vout } => write!(f, "input {index}: non_witness_utxo output {vout}"),
        }
    }
}

/// A side of a transaction whose amounts are summed (for [`PsbtError::AmountOverflow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmountSide {
    /// The outputs the inputs spend.
    Inputs,
    /// The transaction's outputs.
    Outputs,
}

impl fmt::Display for AmountSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AmountSide::Inputs => "spent outputs",
            AmountSide::Outputs => "outputs",
        })
    }
}

/// Checks what a signer, a policy or a report would otherwise take on trust from a PSBT.
///
/// Every PSBT from outside passes this before anything reads it ([`decode`], [`inspect`],
/// [`combine`], [`finalize`], [`extract_verified`], the HSM signer and the wallet's policy
/// check call it). The rules, each a [`PsbtError`] naming the input:
/// - one input map per transaction input and one output map per output (BIP174; rust-bitcoin's
///   parser ensures it, but a [`Psbt`]'s fields are public);
/// - an input's `non_witness_utxo`, when present, is the transaction the input spends (its txid
///   is the input's previous txid) and has the spent output index: otherwise its amounts are a
///   lie told to the signer, and upstream code indexes past its end;
/// - when both are present, `witness_utxo` is the spent output of `non_witness_utxo`;
/// - every amount (the unsigned transaction's outputs, the spent outputs) is at most
///   [`Amount::MAX_MONEY`], and so is each side's sum (checked: no overflow);
/// - no input spends an unspendable output (`OP_RETURN`, or a script over 10,000 bytes), which
///   Core's `analyzepsbt` also refuses;
/// - a version 0 PSBT holds none of BIP370's version-2-only fields ([`PsbtError::V2FieldInV0`]).
///
/// An input without either UTXO field passes: a creator's PSBT may not carry them yet, and
/// whatever needs them reports [`PsbtError::MissingPrevout`].
pub fn validate(psbt: &Psbt) -> Result<(), PsbtError> {
    let tx = &psbt.unsigned_tx;
    if psbt.version == 0 {
        reject_v2_fields(psbt)?;
    }
    if psbt.inputs.len() != tx.input.len() {
        return Err(PsbtError::InputCountMismatch {
            maps: psbt.inputs.len(),
            inputs: tx.input.len(),
        });
    }
    if psbt.outputs.len() != tx.output.len() {
        return Err(PsbtError::OutputCountMismatch {
            maps: psbt.outputs.len(),
            outputs: tx.output.len(),
        });
    }
    let mut spent = Vec::with_capacity(tx.input.len());
    for (index, (input, txin)) in psbt.inputs.iter().zip(&tx.input).enumerate() {
        if let Some(out) = checked_prevout(index, input, txin)? {
            if out.script_pubkey.is_op_return() || out.script_pubkey.len() > MAX_SCRIPT_SIZE {
                return Err(PsbtError::UnspendablePrevout { index });
            }
            spent.push(out.value);
        }
    }
    for (index, out) in tx.output.iter().enumerate() {
        in_range(out.value, AmountAt::Output { index })?;
    }
    checked_total(spent, AmountSide::Inputs)?;
    checked_total(tx.output.iter().map(|o| o.value), AmountSide::Outputs)?;
    Ok(())
}

/// Core's `MAX_SCRIPT_SIZE`: a longer output script can never be spent.
const MAX_SCRIPT_SIZE: usize = 10_000;

/// BIP370's version-2-only key types, by map: global `PSBT_GLOBAL_TX_VERSION`,
/// `_FALLBACK_LOCKTIME`, `_INPUT_COUNT`, `_OUTPUT_COUNT`, `_TX_MODIFIABLE`; input
/// `PSBT_IN_PREVIOUS_TXID`, `_OUTPUT_INDEX`, `_SEQUENCE`, `_REQUIRED_TIME_LOCKTIME`,
/// `_REQUIRED_HEIGHT_LOCKTIME`; output `PSBT_OUT_AMOUNT`, `_SCRIPT`. rust-bitcoin keeps them as
/// unknown fields of a version 0 PSBT.
const V2_GLOBAL: [u8; 5] = [0x02, 0x03, 0x04, 0x05, 0x06];
const V2_INPUT: [u8; 5] = [0x0e, 0x0f, 0x10, 0x11, 0x12];
const V2_OUTPUT: [u8; 2] = [0x03, 0x04];

/// A map of a PSBT, for errors that name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PsbtMap {
    /// The global map.
    Global,
    /// An input's map.
    Input(usize),
    /// An output's map.
    Output(usize),
}

impl fmt::Display for PsbtMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PsbtMap::Global => f.write_str("global"),
            PsbtMap::Input(i) => write!(f, "input {i}"),
            PsbtMap::Output(i) => write!(f, "output {i}"),
        }
    }
}

fn reject_v2_fields(psbt: &Psbt) -> Result<(), PsbtError> {
    let first = |keys: &mut dyn Iterator<Item = &psbt::raw::Key>, forbidden: &[u8]| {
        keys.map(|k| k.type_value).find(|t| forbidden.contains(t))
    };
    if let Some(key_type) = first(&mut psbt.unknown.keys(), &V2_GLOBAL) {
        return Err(PsbtError::V2FieldInV0 {
            map: PsbtMap::Global,
            key_type,
        });
    }
    for (i, input) in psbt.inputs.iter().enumerate() {
        if let Some(key_type) = first(&mut input.unknown.keys(), &V2_INPUT) {
            return Err(PsbtError::V2FieldInV0 {
                map: PsbtMap::Input(i),
                key_type,
            });
        }
    }
    for (i, output) in psbt.outputs.iter().enumerate() {
        if let Some(key_type) = first(&mut output.unknown.keys(), &V2_OUTPUT) {
            return Err(PsbtError::V2FieldInV0 {
                map: PsbtMap::Output(i),
                key_type,
            });
        }
    }
    Ok(())
}

/// The output input `index` spends, from its UTXO fields, once they pass [`validate`]'s rules
/// for one input; `None` if the PSBT carries neither field.
pub(crate) fn checked_prevout<'a>(
    index: usize,
    input: &'a psbt::Input,
    txin: &bitcoin::TxIn,
) -> Result<Option<&'a TxOut>, PsbtError> {
    let Some(prev_tx) = &input.non_witness_utxo else {
        if let Some(out) = &input.witness_utxo {
            in_range(out.value, AmountAt::WitnessUtxo { index })?;
        }
        return Ok(input.witness_utxo.as_ref());
    };
    let expected = txin.previous_output.txid;
    let found = prev_tx.compute_txid();
    if found != expected {
        return Err(PsbtError::NonWitnessUtxoMismatch { index, expected, found });
    }
    // A transaction whose txid matches is the one on chain, so an output over the limit can
    // only come from a forged one; refusing it keeps the rule simple.
    for (vout, out) in prev_tx.output.iter().enumerate() {
        in_range(out.value, AmountAt::NonWitnessUtxo { index, vout })?;
    }
    let vout = txin.previous_output.vout;
    let out =
        usize::try_from(vout)
            .ok()
            .and_then(|v| prev_tx.output.get(v))
            .ok_or(PsbtError::PrevoutIndexOutOfRange {
                index,
                vout,
                outputs: prev_tx.output.len(),
            })?;
    if input.witness_utxo.as_ref().is_some_and(|w| w != out) {
        return Err(PsbtError::WitnessUtxoMismatch { index });
    }
    Ok(Some(out))
}

fn in_range(value: Amount, at: AmountAt) -> Result<(), PsbtError> {
    if value > Amount::MAX_MONEY {
        return Err(PsbtError::AmountOutOfRange { at, value });
    }
    Ok(())
}

/// The sum of `values`, or [`PsbtError::AmountOverflow`] if it passes [`Amount::MAX_MONEY`]
/// (never a wrap or a panic, whatever the values).
pub fn checked_total(values: impl IntoIterator<Item = Amount>, side: AmountSide) -> Result<Amount, PsbtError> {
    values
        .into_iter()
        .try_fold(Amount::ZERO, |sum, v| {
            sum.checked_add(v).filter(|s| *s <= Amount::MAX_MONEY)
        })
        .ok_or(PsbtError::AmountOverflow { side })
}

/// Decodes a PSBT given as raw bytes, base64 or hex (surrounding whitespace ignored). A PSBT
/// that parses but breaks a rule of [`validate`] is refused with that rule's error.
pub fn decode(input: &[u8]) -> Result<Psbt, PsbtError> {
    if input.len() > MAX_PSBT_BYTES * 2 {
        return Err(PsbtError::TooLarge { len: input.len() });
    }
    if input.starts_with(&MAGIC) {
        return decode_binary(input);
    }
    let text = std::str::from_utf8(input).map_err(|_| PsbtError::Encoding)?.trim();
    if text.is_empty() {
        return Err(PsbtError::Empty);
    }
    if let Ok(bytes) = <Vec<u8> as bitcoin::hex::FromHex>::from_hex(text) {
        return decode_binary(&bytes);
    }
    // Base64 is decoded here, not by `Psbt::from_str`, so that all three spellings meet the
    // same byte-level checks of `decode_binary`.
    use bitcoin::base64::Engine;
    let bytes = bitcoin::base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| PsbtError::Encoding)?;
    decode_binary(&bytes)
}

/// Decodes raw PSBT bytes; the PSBT must pass [`validate`].
pub fn decode_binary(bytes: &[u8]) -> Result<Psbt, PsbtError> {
    if bytes.len() > MAX_PSBT_BYTES {
        return Err(PsbtError::TooLarge { len: bytes.len() });
    }
    if let Some(version) = declared_version(bytes).filter(|v| *v != 0) {
        return Err(PsbtError::UnsupportedVersion { version });
    }
    // `Psbt::deserialize` stops after the last output map and ignores what follows; Core
    // refuses such bytes, and so does anya.
    let mut rest = bytes;
    let psbt = Psbt::deserialize_from_reader(&mut rest)?;
    if !rest.is_empty() {
        return Err(PsbtError::TrailingBytes { len: rest.len() });
    }
    validate(&psbt)?;
    Ok(psbt)
}

/// The `PSBT_GLOBAL_VERSION` of the raw PSBT `bytes`, read from its global map (rust-bitcoin
/// refuses a version above 0 with an untyped message, and a PSBTv2, which has no unsigned
/// transaction, with another). `None` when the field is absent or the framing is broken, which
/// the full parser then reports.
fn declared_version(bytes: &[u8]) -> Option<u32> {
    use bitcoin::consensus::Decodable;
    let mut rest = bytes.strip_prefix(&MAGIC)?;
    let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let len = usize::try_from(bitcoin::VarInt::consensus_decode(rest).ok()?.0).ok()?;
        let (item, tail) = (rest.get(..len)?, rest.get(len..)?);
        let item = item.to_vec();
        *rest = tail;
        Some(item)
    };
    loop {
        let key = take(&mut rest)?;
        if key.is_empty() {
            return None;
        }
        let value = take(&mut rest)?;
        if key == [PSBT_GLOBAL_VERSION] {
            return Some(u32::from_le_bytes(value.get(..4)?.try_into().ok()?));
        }
    }
}

/// BIP174's key type of the global version field.
const PSBT_GLOBAL_VERSION: u8 = 0xfb;

/// The base64 form of `psbt`, as Core's RPC prints it.
pub fn encode_base64(psbt: &Psbt) -> String {
    psbt.to_string()
}

/// Why a PSBT could not be combined, finalized or extracted.
///
/// (These are variants of [`PsbtError`]; the failing inputs of a finalization are listed
/// with their reasons.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFailure {
    /// The input's index.
    pub index: usize,
    /// Why it failed, as miniscript's finalizer or the extractor says.
    pub reason: String,
}

impl fmt::Display for InputFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input {}: {}", self.index, self.reason)
    }
}

fn failures(list: &[InputFailure]) -> String {
    list.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Merges the signatures and metadata of two PSBTs of the same unsigned transaction (the
/// BIP174 combiner). A PSBT for another transaction is [`PsbtError::DifferentTransactions`].
/// Both, and the result, must pass [`validate`]: the merge can pair one side's `witness_utxo`
/// with the other's `non_witness_utxo`.
pub fn combine(mut a: Psbt, b: Psbt) -> Result<Psbt, PsbtError> {
    validate(&a)?;
    validate(&b)?;
    if a.unsigned_tx != b.unsigned_tx {
        return Err(PsbtError::DifferentTransactions {
            left: a.unsigned_tx.compute_txid(),
            right: b.unsigned_tx.compute_txid(),
        });
    }
    a.combine(b)?;
    validate(&a)?;
    Ok(a)
}

/// Finalizes every input that is not final yet (the BIP174 finalizer), with miniscript's
/// non-malleable satisfier: a P2PKH, P2SH, P2WPKH, P2WSH or P2TR input whose script miniscript
/// understands and whose signatures are present gets its `final_script_sig` /
/// `final_script_witness`. Inputs that were already final are kept as they are. If any input
/// cannot be finalized, the error lists each with its reason; the inputs that could be
/// finalized are finalized in `psbt` all the same. A PSBT that breaks a rule of [`validate`]
/// is refused before any input is touched (miniscript's finalizer indexes the previous
/// transaction by the input's output index, and would panic on a hostile one).
pub fn finalize(psbt: &mut Psbt) -> Result<(), PsbtError> {
    validate(psbt)?;
    let secp = Secp256k1::verification_only();
    psbt.finalize_mut(&secp).map_err(|errors| PsbtError::NotFinalized {
        inputs: errors
            .into_iter()
            .map(|e| match e {
                miniscript::psbt::Error::InputError(inner, index) => InputFailure {
                    index,
                    reason: inner.to_string(),
                },
                other => InputFailure {
                    index: 0,
                    reason: other.to_string(),
                },
            })
            .collect(),
    })
}

/// Extracts the network transaction of a finalized PSBT (the BIP174 extractor) and verifies
/// every input against the output it spends with Bitcoin Core's script interpreter
/// ([`verify_transaction`], consensus flags), after Core's context-free rules
/// ([`check_transaction`], [`PsbtError::Check`]). The spent outputs come from each input's
/// `witness_utxo` or `non_witness_utxo`; rust-bitcoin's extractor also refuses a fee rate over
/// 25,000 sat/vB ([`bitcoin::psbt::ExtractTxError::AbsurdFeeRate`]). The PSBT must pass
/// [`validate`] first.
pub fn extract_verified(psbt: &Psbt) -> Result<Transaction, PsbtError> {
    validate(psbt)?;
    let open: Vec<InputFailure> = psbt
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, i)| i.final_script_sig.is_none() && i.final_script_witness.is_none())
        .map(|(index, _)| InputFailure {
            index,
            reason: "not finalized".to_owned(),
        })
        .collect();
    if !open.is_empty() {
        return Err(PsbtError::NotFinalized { inputs: open });
    }
    let spent = (0..psbt.inputs.len())
        .map(|index| prevout(psbt, index).map_err(|_| PsbtError::MissingPrevout { index }))
        .collect::<Result<Vec<TxOut>, _>>()?;
    let tx = psbt.clone().extract_tx().map_err(|e| PsbtError::Extract(Box::new(e)))?;
    // Core checks these before any script runs; a transaction that breaks one (duplicate
    // inputs, no outputs) can pass every input's script and still never be mined.
    check_transaction(&tx)?;
    verify_transaction(&tx, &spent, VerifyFlags::consensus())?;
    Ok(tx)
}

/// The kind of script an output (or the output an input spends) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScriptType {
    /// Pay to public key hash.
    P2pkh,
    /// Pay to script hash (redeem script unknown or not a witness program).
    P2sh,
    /// P2WPKH nested in P2SH.
    P2shP2wpkh,
    /// P2WSH nested in P2SH.
    P2shP2wsh,
    /// Segwit v0 pay to witness public key hash.
    P2wpkh,
    /// Segwit v0 pay to witness script hash.
    P2wsh,
    /// Segwit v1 pay to Taproot.
    P2tr,
    /// A provably unspendable `OP_RETURN` output.
    OpReturn,
    /// Any other script (bare multisig, pay to public key, future witness versions, …).
    Other,
    /// The previous output is not in the PSBT.
    Unknown,
}

impl ScriptType {
    /// The type of `script`; `redeem` is the redeem script a PSBT gives for a P2SH.
    pub fn of(script: &Script, redeem: Option<&Script>) -> Self {
        if script.is_p2pkh() {
            ScriptType::P2pkh
        } else if script.is_p2sh() {
            match redeem {
                Some(r) if r.is_p2wpkh() => ScriptType::P2shP2wpkh,
                Some(r) if r.is_p2wsh() => ScriptType::P2shP2wsh,
                _ => ScriptType::P2sh,
            }
        } else if script.is_p2wpkh() {
            ScriptType::P2wpkh
        } else if script.is_p2wsh() {
            ScriptType::P2wsh
        } else if script.is_p2tr() {
            ScriptType::P2tr
        } else if script.is_op_return() {
            ScriptType::OpReturn
        } else {
            ScriptType::Other
        }
    }
}

impl fmt::Display for ScriptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScriptType::P2pkh => "p2pkh",
            ScriptType::P2sh => "p2sh",
            ScriptType::P2shP2wpkh => "p2sh-p2wpkh",
            ScriptType::P2shP2wsh => "p2sh-p2wsh",
            ScriptType::P2wpkh => "p2wpkh",
            ScriptType::P2wsh => "p2wsh",
            ScriptType::P2tr => "p2tr",
            ScriptType::OpReturn => "op_return",
            ScriptType::Other => "other",
            ScriptType::Unknown => "unknown",
        })
    }
}

/// A public key named in a PSBT map with its BIP32 origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OriginKey {
    /// A full public key (`bip32_derivation`), signing with ECDSA.
    Ecdsa(SecpPublicKey),
    /// An x-only key (`tap_key_origins`), signing with BIP340.
    XOnly(XOnlyPublicKey),
}

impl fmt::Display for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginKey::Ecdsa(k) => write!(f, "{k}"),
            OriginKey::XOnly(k) => write!(f, "{k}"),
        }
    }
}

/// What a key signs for in an input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyUse {
    /// An ECDSA signature (legacy, P2SH or segwit v0).
    Ecdsa,
    /// The Taproot key path (the key is the input's `tap_internal_key`), and possibly leaves.
    TaprootKeyPath {
        /// Leaves the key also appears in.
        leaves: Vec<TapLeafHash>,
    },
    /// Taproot script-path spends through these leaves.
    TaprootScript {
        /// The leaf hashes.
        leaves: Vec<TapLeafHash>,
    },
}

/// A key that signs an input, or that an output is derived from, with its BIP32 origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// The key.
    pub key: OriginKey,
    /// Fingerprint of the BIP32 root it derives from.
    pub fingerprint: Fingerprint,
    /// The derivation path below that root.
    pub path: DerivationPath,
    /// What it signs.
    pub key_use: KeyUse,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.to_string();
        let path = path.trim_start_matches('m').trim_start_matches('/');
        write!(f, "[{}", self.fingerprint)?;
        if !path.is_empty() {
            write!(f, "/{path}")?;
        }
        write!(f, "] {}", self.key)?;
        let leaves = |f: &mut fmt::Formatter<'_>, leaves: &[TapLeafHash]| -> fmt::Result {
            let list = leaves.iter().map(ToString::to_string).collect::<Vec<_>>();
            write!(f, "leaves {}", list.join(", "))
        };
        match &self.key_use {
            KeyUse::Ecdsa => f.write_str(" (ecdsa)"),
            KeyUse::TaprootKeyPath { leaves: l } if l.is_empty() => f.write_str(" (taproot key path)"),
            KeyUse::TaprootKeyPath { leaves: l } => {
                f.write_str(" (taproot key path; ")?;
                leaves(f, l)?;
                f.write_str(")")
            }
            KeyUse::TaprootScript { leaves: l } => {
                f.write_str(" (taproot script path: ")?;
                leaves(f, l)?;
                f.write_str(")")
            }
        }
    }
}

/// One input of an inspected PSBT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputInfo {
    /// The output it spends.
    pub outpoint: OutPoint,
    /// That output, if the PSBT carries it (`witness_utxo` or `non_witness_utxo`).
    pub prevout: Option<TxOut>,
    /// Its address on the network asked for, if the script has one.
    pub address: Option<Address>,
    /// Its script type.
    pub script_type: ScriptType,
    /// The input's nSequence.
    pub sequence: Sequence,
    /// Whether the sequence signals BIP125 replaceability.
    pub rbf: bool,
    /// Whether it has a `final_script_sig` or `final_script_witness`.
    pub finalized: bool,
    /// The keys that sign it, with their origins.
    pub keys: Vec<KeyOrigin>,
    /// ECDSA signatures present (`partial_sigs`).
    pub partial_sigs: usize,
    /// Whether a Taproot key-path signature is present (`tap_key_sig`).
    pub tap_key_sig: bool,
    /// Taproot script-path signatures present (`tap_script_sigs`).
    pub tap_script_sigs: usize,
}

/// One output of an inspected PSBT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputInfo {
    /// Its value.
    pub value: Amount,
    /// Its script.
    pub script_pubkey: ScriptBuf,
    /// Its address on the network asked for, if the script has one.
    pub address: Option<Address>,
    /// Its script type.
    pub script_type: ScriptType,
    /// The key origins the PSBT gives for it: a wallet adds them to its own outputs, so an
    /// output that carries them looks like change (check the fingerprints are yours).
    pub keys: Vec<KeyOrigin>,
}

impl OutputInfo {
    /// Whether the output carries key origins (as change does).
    pub fn looks_like_change(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// What a PSBT does: [`inspect`]'s report. Its `Display` is a multi-line report for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsbtInfo {
    /// The unsigned transaction's txid (the final txid for segwit-only spends).
    pub txid: Txid,
    /// The network addresses are shown for.
    pub network: Network,
    /// Transaction version.
    pub version: i32,
    /// nLockTime.
    pub lock_time: absolute::LockTime,
    /// The inputs.
    pub inputs: Vec<InputInfo>,
    /// The outputs.
    pub outputs: Vec<OutputInfo>,
    /// Sum of the spent outputs; `None` if any input's previous output is unknown.
    pub input_value: Option<Amount>,
    /// Sum of the outputs.
    pub output_value: Amount,
    /// Inputs minus outputs; `None` if the input value is unknown or below the outputs.
    pub fee: Option<Amount>,
    /// Virtual size of the *unsigned* transaction (no signatures or witnesses).
    pub unsigned_vsize: u64,
    /// `fee` over `unsigned_vsize`. The signed transaction is larger, so the real fee rate is
    /// lower than this: read it as an upper bound.
    pub fee_rate: Option<FeeRate>,
}

impl PsbtInfo {
    /// Whether every input is finalized.
    pub fn is_finalized(&self) -> bool {
        self.inputs.iter().all(|i| i.finalized)
    }
}

fn address_of(script: &Script, network: Network) -> Option<Address> {
    Address::from_script(script, network).ok()
}

fn bip32_keys(map: &BTreeMap<SecpPublicKey, KeySource>) -> impl Iterator<Item = KeyOrigin> + '_ {
    map.iter().map(|(key, (fingerprint, path))| KeyOrigin {
        key: OriginKey::Ecdsa(*key),
        fingerprint: *fingerprint,
        path: path.clone(),
        key_use: KeyUse::Ecdsa,
    })
}

fn tap_keys<'a>(
    map: &'a BTreeMap<XOnlyPublicKey, (Vec<TapLeafHash>, KeySource)>,
    internal: Option<XOnlyPublicKey>,
) -> impl Iterator<Item = KeyOrigin> + 'a {
    map.iter().map(move |(key, (leaves, (fingerprint, path)))| KeyOrigin {
        key: OriginKey::XOnly(*key),
        fingerprint: *fingerprint,
        path: path.clone(),
        key_use: if internal == Some(*key) || leaves.is_empty() {
            KeyUse::TaprootKeyPath { leaves: leaves.clone() }
        } else {
            KeyUse::TaprootScript { leaves: leaves.clone() }
        },
    })
}

/// [`inspect`] for a PSBT that passes [`validate`]; any other is its [`PsbtError`], so that a
/// report never shows amounts the PSBT could not back.
pub fn try_inspect(psbt: &Psbt, network: Network) -> Result<PsbtInfo, PsbtError> {
    validate(psbt)?;
    Ok(inspect(psbt, network))
}

/// Reads what `psbt` does: per input the output it spends, its script type, sequence, whether
/// it is final, which keys sign it (with origins and key path or leaves) and which signatures
/// are present; per output value, script, address on `network` and key origins; the totals,
/// fee and fee rate (on the unsigned size, see [`PsbtInfo::fee_rate`]).
///
/// It reports any PSBT, even one that breaks a rule of [`validate`], but then shows the
/// previous output of an input whose UTXO fields break a rule as unknown, never the amounts
/// they claim. [`try_inspect`] refuses such a PSBT instead.
pub fn inspect(psbt: &Psbt, network: Network) -> PsbtInfo {
    let tx = &psbt.unsigned_tx;
    let empty_input = psbt::Input::default();
    let inputs: Vec<InputInfo> = tx
        .input
        .iter()
        .enumerate()
        .map(|(index, txin)| {
            let input = psbt.inputs.get(index).unwrap_or(&empty_input);
            // Only a previous output that passes validate's rules is shown: a forged
            // non_witness_utxo would otherwise put its amounts in the report.
            let prev = psbt
                .inputs
                .get(index)
                .and_then(|input| checked_prevout(index, input, txin).ok().flatten().cloned());
            let script_type = prev.as_ref().map_or(ScriptType::Unknown, |o| {
                ScriptType::of(&o.script_pubkey, input.redeem_script.as_deref())
            });
            let mut keys: Vec<KeyOrigin> = bip32_keys(&input.bip32_derivation).collect();
            keys.extend(tap_keys(&input.tap_key_origins, input.tap_internal_key));
            InputInfo {
                outpoint: txin.previous_output,
                address: prev.as_ref().and_then(|o| address_of(&o.script_pubkey, network)),
                prevout: prev,
                script_type,
                sequence: txin.sequence,
                rbf: txin.sequence.is_rbf(),
                finalized: input.final_script_sig.is_some() || input.final_script_witness.is_some(),
                keys,
                partial_sigs: input.partial_sigs.len(),
                tap_key_sig: input.tap_key_sig.is_some(),
                tap_script_sigs: input.tap_script_sigs.len(),
            }
        })
        .collect();
    let empty_output = psbt::Output::default();
    let outputs: Vec<OutputInfo> = tx
        .output
        .iter()
        .enumerate()
        .map(|(index, txout)| {
            let output = psbt.outputs.get(index).unwrap_or(&empty_output);
            let mut keys: Vec<KeyOrigin> = bip32_keys(&output.bip32_derivation).collect();
            keys.extend(tap_keys(&output.tap_key_origins, output.tap_internal_key));
            OutputInfo {
                value: txout.value,
                script_pubkey: txout.script_pubkey.clone(),
                address: address_of(&txout.script_pubkey, network),
                script_type: ScriptType::of(&txout.script_pubkey, output.redeem_script.as_deref()),
                keys,
            }
        })
        .collect();
    let input_value = inputs
        .iter()
        .try_fold(Amount::ZERO, |sum, i| sum.checked_add(i.prevout.as_ref()?.value));
    let output_value = tx
        .output
        .iter()
        .fold(Amount::ZERO, |sum, o| sum.checked_add(o.value).unwrap_or(Amount::MAX));
    let fee = input_value.and_then(|i| i.checked_sub(output_value));
    let weight = tx.weight();
    let fee_rate = fee.and_then(|fee| fee.div_by_weight_floor(weight));
    PsbtInfo {
        txid: tx.compute_txid(),
        network,
        version: tx.version.0,
        lock_time: tx.lock_time,
        inputs,
        outputs,
        input_value,
        output_value,
        fee,
        unsigned_vsize: tx.vsize() as u64,
        fee_rate,
    }
}

fn btc(amount: Amount) -> String {
    format!("{} BTC", amount.to_btc())
}

impl fmt::Display for PsbtInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "txid       {}", self.txid)?;
        writeln!(
            f,
            "version    {}   locktime {}   network {}",
            self.version, self.lock_time, self.network
        )?;
        let done = self.inputs.iter().filter(|i| i.finalized).count();
        writeln!(f, "finalized  {done}/{} inputs", self.inputs.len())?;
        writeln!(f, "inputs ({}):", self.inputs.len())?;
        for (n, input) in self.inputs.iter().enumerate() {
            write!(f, "  #{n} {}", input.outpoint)?;
            match &input.prevout {
                Some(out) => write!(f, "  {} sat  {}", out.value.to_sat(), input.script_type)?,
                None => f.write_str("  value unknown (no witness_utxo/non_witness_utxo)")?,
            }
            if let Some(address) = &input.address {
                write!(f, "  {address}")?;
            }
            writeln!(f)?;
            writeln!(
                f,
                "     sequence {:#010x}{}{}",
                input.sequence.to_consensus_u32(),
                if input.rbf { " (rbf)" } else { "" },
                if input.finalized { "  finalized" } else { "" }
            )?;
            writeln!(
                f,
                "     signatures: {} ecdsa, taproot key path {}, {} taproot script",
                input.partial_sigs,
                if input.tap_key_sig { "yes" } else { "no" },
                input.tap_script_sigs
            )?;
            for key in &input.keys {
                writeln!(f, "     signer {key}")?;
            }
        }
        writeln!(f, "outputs ({}):", self.outputs.len())?;
        for (n, output) in self.outputs.iter().enumerate() {
            write!(f, "  #{n} {} sat  {}", output.value.to_sat(), output.script_type)?;
            match &output.address {
                Some(address) => write!(f, "  {address}")?,
                None => write!(f, "  script {}", output.script_pubkey.to_hex_string())?,
            }
            if output.looks_like_change() {
                f.write_str("  (carries key origins: change?)")?;
            }
            writeln!(f)?;
            for key in &output.keys {
                writeln!(f, "     key {key}")?;
            }
        }
        match self.input_value {
            Some(v) => writeln!(f, "in         {}", btc(v))?,
            None => writeln!(f, "in         unknown (some previous outputs are missing)")?,
        }
        writeln!(f, "out        {}", btc(self.output_value))?;
        match (self.fee, self.input_value) {
            (Some(fee), _) => writeln!(f, "fee        {} sat", fee.to_sat())?,
            (None, Some(_)) => writeln!(f, "fee        negative: outputs exceed inputs")?,
            (None, None) => writeln!(f, "fee        unknown")?,
        }
        if let (Some(fee), true) = (self.fee, self.unsigned_vsize > 0) {
            #[allow(clippy::cast_precision_loss, reason = "a fee rate shown to people")]
            let rate = fee.to_sat() as f64 / self.unsigned_vsize as f64;
            write!(
                f,
                "fee rate   at most {rate:.2} sat/vB ({} vB unsigned; signatures add to it)",
                self.unsigned_vsize
            )?;
        } else {
            write!(f, "fee rate   unknown")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::consensus::serialize;
    use bitcoin::hex::{DisplayHex, FromHex};
    use serde_json::Value;

    use super::*;

    fn vectors() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/psbt/bip174_test_vectors.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        serde_json::from_str(&text).expect("vector file is JSON")
    }

    fn workflow(step: &str) -> Psbt {
        let v = vectors();
        let hex = v["workflow"][step]["result_hex"].as_str().expect("result_hex");
        decode(hex.as_bytes()).expect("workflow PSBT decodes")
    }

    #[test]
    fn combine_finalize_extract_replays_bip174_workflow() {
        let combined = combine(workflow("signer_1"), workflow("signer_2")).expect("same transaction");
        assert_eq!(combined, workflow("combiner"));
        let mut psbt = combined;
        finalize(&mut psbt).expect("both inputs have their signatures");
        assert_eq!(psbt, workflow("finalizer"));
        assert!(inspect(&psbt, Network::Testnet).is_finalized());
        let tx = extract_verified(&psbt).expect("core accepts both inputs");
        let v = vectors();
        let expected = v["workflow"]["extractor"]["result_tx_hex"].as_str().expect("tx hex");
        assert_eq!(serialize(&tx).to_lower_hex_string(), expected);
    }

    #[test]
    fn combine_refuses_another_transaction() {
        let other = decode(vectors()["valid"][0]["hex"].as_str().expect("hex").as_bytes()).expect("valid");
        let err = combine(workflow("signer_1"), other).expect_err("different transactions");
        assert!(matches!(err, PsbtError::DifferentTransactions { .. }), "{err}");
    }

    #[test]
    fn finalize_lists_each_unsigned_input() {
        let mut psbt = workflow("signer_1");
        let err = finalize(&mut psbt).expect_err("one signature of two per input");
        let PsbtError::NotFinalized { inputs } = &err else {
            panic!("{err}")
        };
        let indexes: Vec<usize> = inputs.iter().map(|f| f.index).collect();
        assert_eq!(indexes, [0, 1], "{err}");
        assert!(err.to_string().contains("input 0"), "{err}");
    }

    #[test]
    fn extract_refuses_unfinalized_and_bad_signatures() {
        let err = extract_verified(&workflow("combiner")).expect_err("not final");
        assert!(
            matches!(err, PsbtError::NotFinalized { ref inputs } if inputs.len() == 2),
            "{err}"
        );

        // Flip a byte inside input 1's witness signature: core must refuse it.
        let mut psbt = workflow("finalizer");
        let witness = psbt.inputs[1].final_script_witness.as_mut().expect("witness");
        let mut items: Vec<Vec<u8>> = witness.iter().map(<[u8]>::to_vec).collect();
        let sig = items.iter_mut().find(|i| i.len() > 64).expect("a signature");
        sig[10] ^= 1;
        *witness = bitcoin::Witness::from_slice(&items);
        let err = extract_verified(&psbt).expect_err("tampered signature");
        assert!(matches!(err, PsbtError::Verify(_)), "{err}");

        let mut psbt = workflow("finalizer");
        psbt.inputs[1].witness_utxo = None;
        let err = extract_verified(&psbt).expect_err("no prevout");
        assert!(matches!(err, PsbtError::MissingPrevout { index: 1 }), "{err}");
    }

    #[test]
    fn inspect_reports_inputs_outputs_fee_and_signers() {
        let psbt = workflow("signer_1");
        let info = inspect(&psbt, Network::Testnet);
        assert_eq!(info.txid, psbt.unsigned_tx.compute_txid());
        assert_eq!(info.inputs.len(), 2);
        assert_eq!(info.inputs[0].script_type, ScriptType::P2sh);
        assert_eq!(info.inputs[1].script_type, ScriptType::P2shP2wsh);
        for input in &info.inputs {
            assert!(!input.finalized);
            assert_eq!(input.partial_sigs, 1);
            assert_eq!(input.keys.len(), 2);
            assert!(input.keys.iter().all(|k| k.key_use == KeyUse::Ecdsa));
            assert!(input.prevout.is_some());
        }
        // BIP174's workflow: inputs 1.5 + 1.0 BTC, outputs 1.4999 + 1.0 BTC.
        assert_eq!(info.input_value, Some(Amount::from_sat(250_000_000)));
        assert_eq!(info.output_value, Amount::from_sat(249_990_000));
        assert_eq!(info.fee, Some(Amount::from_sat(10_000)));
        assert!(info.fee_rate.is_some());
        assert!(info.outputs.iter().all(|o| o.looks_like_change()));
        assert_eq!(info.outputs[0].script_type, ScriptType::P2wpkh);
        assert!(info.outputs[0].address.is_some());
        let text = info.to_string();
        for needle in [
            "txid",
            "inputs (2)",
            "outputs (2)",
            "fee        10000 sat",
            "p2sh-p2wsh",
            "(ecdsa)",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }

    #[test]
    fn inspect_unknown_prevouts_and_empty_transactions() {
        let mut psbt = workflow("signer_1");
        psbt.inputs[0].non_witness_utxo = None;
        let info = inspect(&psbt, Network::Testnet);
        assert_eq!(info.inputs[0].script_type, ScriptType::Unknown);
        assert_eq!((info.input_value, info.fee, info.fee_rate), (None, None, None));
        assert!(info.to_string().contains("value unknown"));

        for case in vectors()["valid"].as_array().expect("valid cases") {
            let psbt = decode(case["hex"].as_str().expect("hex").as_bytes()).expect("valid");
            let info = inspect(&psbt, Network::Bitcoin);
            assert_eq!(info.inputs.len(), psbt.unsigned_tx.input.len());
            assert!(!info.to_string().is_empty());
        }
    }

    #[test]
    fn taproot_keys_are_told_apart() {
        let v: Value = {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/vectors/psbt/bip371_test_vectors.json"
            );
            serde_json::from_str(&std::fs::read_to_string(path).expect("bip371 vectors")).expect("json")
        };
        let mut key_path = 0;
        let mut script_path = 0;
        let mut walk = vec![&v];
        while let Some(node) = walk.pop() {
            match node {
                Value::String(s) => {
                    let Ok(bytes) = Vec::<u8>::from_hex(s) else { continue };
                    let Ok(psbt) = decode(&bytes) else { continue };
                    for input in inspect(&psbt, Network::Testnet).inputs {
                        for key in input.keys {
                            match key.key_use {
                                KeyUse::TaprootKeyPath { .. } => key_path += 1,
                                KeyUse::TaprootScript { leaves } => {
                                    assert!(!leaves.is_empty());
                                    script_path += 1;
                                }
                                KeyUse::Ecdsa => {}
                            }
                        }
                    }
                }
                Value::Array(a) => walk.extend(a.iter()),
                Value::Object(o) => walk.extend(o.values()),
                _ => {}
            }
        }
        assert!(
            key_path > 0 && script_path > 0,
            "key path {key_path}, script path {script_path}"
        );
    }
}
