//! Consensus verification of transactions by Bitcoin Core's own script interpreter
//! (libbitcoinkernel through the `bitcoinkernel` crate).
//!
//! Transactions and scripts cross to the kernel as consensus bytes (rust-bitcoin's encoding), so
//! the kernel sees exactly what a node would.

mod check;
mod error;
mod flags;

pub use check::{
    check_transaction, check_tx_inputs, CheckError, MAX_BLOCK_WEIGHT, MAX_COINBASE_SCRIPT_SIG, MIN_COINBASE_SCRIPT_SIG,
};
pub use error::{ScriptFailure, VerifyError};
pub use flags::VerifyFlags;

use bitcoin::consensus::encode;
use bitcoin::{Transaction, TxOut};
use bitcoinkernel::{KernelError, PrecomputedTransactionData, ScriptVerifyError};

/// Verifies every input of `tx` against the outputs it spends (`spent[i]` for input `i`).
///
/// Returns the first failing input. To verify many inputs of one transaction with different
/// flags, build a [`TransactionVerifier`] once.
///
/// # Errors
/// [`VerifyError::Script`] with the input index when Core's interpreter rejects an input; the
/// other variants for malformed arguments.
pub fn verify_transaction(tx: &Transaction, spent: &[TxOut], flags: VerifyFlags) -> Result<(), VerifyError> {
    TransactionVerifier::new(tx, spent)?.verify_all(flags)
}

/// Verifies input `index` of `tx`. `spent` holds the outputs spent by *all* inputs, in input
/// order: Taproot signatures commit to every one of them.
///
/// # Errors
/// As [`verify_transaction`], plus [`VerifyError::InputIndexOutOfRange`].
pub fn verify_input(tx: &Transaction, index: usize, spent: &[TxOut], flags: VerifyFlags) -> Result<(), VerifyError> {
    TransactionVerifier::new(tx, spent)?.verify_input(index, flags)
}

/// A transaction and its spent outputs loaded into the kernel once, with the signature hashes
/// precomputed (no quadratic hashing), ready to verify any input under any flags.
pub struct TransactionVerifier {
    tx: bitcoinkernel::Transaction,
    scripts: Vec<bitcoinkernel::ScriptPubkey>,
    amounts: Vec<i64>,
    precomputed: PrecomputedTransactionData,
}

impl core::fmt::Debug for TransactionVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransactionVerifier")
            .field("inputs", &self.amounts.len())
            .finish_non_exhaustive()
    }
}

impl TransactionVerifier {
    /// Loads `tx` and the outputs its inputs spend (`spent[i]` for input `i`).
    ///
    /// # Errors
    /// [`VerifyError::SpentOutputsMismatch`], [`VerifyError::AmountOutOfRange`], or
    /// [`VerifyError::Kernel`] when the kernel cannot read the transaction.
    pub fn new(tx: &Transaction, spent: &[TxOut]) -> Result<Self, VerifyError> {
        if spent.len() != tx.input.len() {
            return Err(VerifyError::SpentOutputsMismatch {
                inputs: tx.input.len(),
                spent_outputs: spent.len(),
            });
        }
        let kernel_tx =
            bitcoinkernel::Transaction::new(&encode::serialize(tx)).map_err(|source| VerifyError::Kernel {
                what: "transaction",
                source,
            })?;
        let mut scripts = Vec::with_capacity(spent.len());
        let mut amounts = Vec::with_capacity(spent.len());
        let mut outputs = Vec::with_capacity(spent.len());
        for (index, out) in spent.iter().enumerate() {
            let value_sat = out.value.to_sat();
            let amount = i64::try_from(value_sat).map_err(|_| VerifyError::AmountOutOfRange { index, value_sat })?;
            let script = bitcoinkernel::ScriptPubkey::new(out.script_pubkey.as_bytes()).map_err(|source| {
                VerifyError::Kernel {
                    what: "spent output script",
                    source,
                }
            })?;
            outputs.push(bitcoinkernel::TxOut::new(&script, amount));
            scripts.push(script);
            amounts.push(amount);
        }
        let precomputed =
            PrecomputedTransactionData::new(&kernel_tx, &outputs).map_err(|source| VerifyError::Kernel {
                what: "spent outputs",
                source,
            })?;
        Ok(Self {
            tx: kernel_tx,
            scripts,
            amounts,
            precomputed,
        })
    }

    /// Number of inputs of the loaded transaction.
    pub fn input_count(&self) -> usize {
        self.amounts.len()
    }

    /// Verifies input `index` under `flags`.
    ///
    /// # Errors
    /// [`VerifyError::InputIndexOutOfRange`], [`VerifyError::InvalidFlags`], or
    /// [`VerifyError::Script`] when Core's interpreter rejects the input.
    pub fn verify_input(&self, index: usize, flags: VerifyFlags) -> Result<(), VerifyError> {
        let (Some(script), Some(&amount)) = (self.scripts.get(index), self.amounts.get(index)) else {
            return Err(VerifyError::InputIndexOutOfRange {
                index,
                inputs: self.input_count(),
            });
        };
        bitcoinkernel::verify(
            script,
            Some(amount),
            &self.tx,
            index,
            Some(flags.to_kernel()),
            &self.precomputed,
        )
        .map_err(|err| match err {
            KernelError::ScriptVerify(ScriptVerifyError::Invalid) => VerifyError::Script {
                index,
                reason: ScriptFailure::Invalid,
            },
            KernelError::ScriptVerify(ScriptVerifyError::SpentOutputsRequired) => VerifyError::Script {
                index,
                reason: ScriptFailure::SpentOutputsRequired,
            },
            KernelError::ScriptVerify(ScriptVerifyError::InvalidFlags | ScriptVerifyError::InvalidFlagsCombination) => {
                VerifyError::InvalidFlags { flags }
            }
            KernelError::ScriptVerify(ScriptVerifyError::TxInputIndex) => VerifyError::InputIndexOutOfRange {
                index,
                inputs: self.input_count(),
            },
            source => VerifyError::Kernel { what: "input", source },
        })
    }

    /// Verifies every input under `flags`, stopping at the first failure.
    ///
    /// # Errors
    /// As [`TransactionVerifier::verify_input`].
    pub fn verify_all(&self, flags: VerifyFlags) -> Result<(), VerifyError> {
        (0..self.input_count()).try_for_each(|index| self.verify_input(index, flags))
    }
}
