//! Bitcoin Core's context-free transaction checks (`CheckTransaction`, consensus/tx_check.cpp).
//!
//! These are the rules a node applies to a transaction by itself, before it looks at the coins
//! it spends or runs a script: a transaction that fails one can never be in a valid block, so
//! nothing should sign, hand out or mine it.

use std::collections::HashSet;

use bitcoin::{Amount, OutPoint, Transaction, Weight};

/// The largest block weight (BIP141). Core refuses a transaction whose size without witness,
/// times four, is above it.
pub const MAX_BLOCK_WEIGHT: Weight = Weight::MAX_BLOCK;

/// Smallest coinbase scriptSig Core accepts, in bytes.
pub const MIN_COINBASE_SCRIPT_SIG: usize = 2;
/// Largest coinbase scriptSig Core accepts, in bytes.
pub const MAX_COINBASE_SCRIPT_SIG: usize = 100;

/// Which of Core's `CheckTransaction` rules a transaction breaks. Each variant's
/// [`reject_reason`](CheckError::reject_reason) is the reason Core reports (e.g. in
/// `testmempoolaccept`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// `bad-txns-vin-empty`: the transaction has no inputs.
    #[error("bad-txns-vin-empty: transaction has no inputs")]
    NoInputs,
    /// `bad-txns-vout-empty`: the transaction has no outputs.
    #[error("bad-txns-vout-empty: transaction has no outputs")]
    NoOutputs,
    /// `bad-txns-oversize`: the size without witness, times four, is over [`MAX_BLOCK_WEIGHT`].
    #[error("bad-txns-oversize: {stripped_size} bytes without witness is more than a block holds")]
    Oversize {
        /// The transaction's size without witness data, in bytes.
        stripped_size: usize,
    },
    /// `bad-txns-vout-negative`: Core reads an output value as a signed 64-bit number; a value
    /// with the top bit set is negative there.
    #[error("bad-txns-vout-negative: output {index} is worth {value_sat} sat, negative as core reads it")]
    OutputNegative {
        /// The output.
        index: usize,
        /// Its value as encoded, in satoshis.
        value_sat: u64,
    },
    /// `bad-txns-vout-toolarge`: an output is worth more than [`Amount::MAX_MONEY`].
    #[error("bad-txns-vout-toolarge: output {index} is worth {value}, more than the money supply")]
    OutputTooLarge {
        /// The output.
        index: usize,
        /// Its value.
        value: Amount,
    },
    /// `bad-txns-txouttotal-toolarge`: the outputs up to `index` sum to more than
    /// [`Amount::MAX_MONEY`].
    #[error("bad-txns-txouttotal-toolarge: outputs up to {index} sum to more than the money supply")]
    OutputTotalTooLarge {
        /// The output at which the running sum left the money range.
        index: usize,
    },
    /// `bad-txns-inputs-duplicate`: two inputs spend the same output (CVE-2018-17144).
    #[error("bad-txns-inputs-duplicate: input {index} spends {outpoint}, which an earlier input spends")]
    DuplicateInput {
        /// The second input spending it.
        index: usize,
        /// The output spent twice.
        outpoint: OutPoint,
    },
    /// `bad-cb-length`: a coinbase scriptSig must be 2 to 100 bytes.
    #[error("bad-cb-length: coinbase scriptSig is {len} bytes, not 2 to 100")]
    CoinbaseLength {
        /// Its length.
        len: usize,
    },
    /// `bad-txns-prevout-null`: an input of a transaction that is not a coinbase spends the
    /// null outpoint.
    #[error("bad-txns-prevout-null: input {index} of a non-coinbase transaction has a null prevout")]
    NullPrevout {
        /// The input.
        index: usize,
    },
}

impl CheckError {
    /// The reject reason Bitcoin Core gives for this rule (`bad-txns-vin-empty`, …).
    pub fn reject_reason(&self) -> &'static str {
        match self {
            Self::NoInputs => "bad-txns-vin-empty",
            Self::NoOutputs => "bad-txns-vout-empty",
            Self::Oversize { .. } => "bad-txns-oversize",
            Self::OutputNegative { .. } => "bad-txns-vout-negative",
            Self::OutputTooLarge { .. } => "bad-txns-vout-toolarge",
            Self::OutputTotalTooLarge { .. } => "bad-txns-txouttotal-toolarge",
            Self::DuplicateInput { .. } => "bad-txns-inputs-duplicate",
            Self::CoinbaseLength { .. } => "bad-cb-length",
            Self::NullPrevout { .. } => "bad-txns-prevout-null",
        }
    }
}

/// Checks `tx` by Bitcoin Core's context-free rules (`CheckTransaction`), in Core's order, so
/// that the first rule broken is the one Core would report.
///
/// It needs no chain: the spent coins, their amounts and the scripts are checked elsewhere
/// ([`verify_transaction`](super::verify_transaction) for scripts).
///
/// # Errors
/// The first [`CheckError`] rule `tx` breaks.
pub fn check_transaction(tx: &Transaction) -> Result<(), CheckError> {
    if tx.input.is_empty() {
        return Err(CheckError::NoInputs);
    }
    if tx.output.is_empty() {
        return Err(CheckError::NoOutputs);
    }
    // Without witness: the witness is not yet known to be unmalleated when Core checks this.
    let stripped_size = tx.base_size();
    let too_big = stripped_size
        .checked_mul(4)
        .is_none_or(|w| w as u64 > MAX_BLOCK_WEIGHT.to_wu());
    if too_big {
        return Err(CheckError::Oversize { stripped_size });
    }
    // Core sums as it goes and stops at the first output that leaves the money range
    // (CVE-2010-5139); a checked sum keeps our u64 from wrapping where Core's int64 would not.
    let mut total = Amount::ZERO;
    for (index, out) in tx.output.iter().enumerate() {
        let value_sat = out.value.to_sat();
        if i64::try_from(value_sat).is_err() {
            return Err(CheckError::OutputNegative { index, value_sat });
        }
        if out.value > Amount::MAX_MONEY {
            return Err(CheckError::OutputTooLarge {
                index,
                value: out.value,
            });
        }
        total = total
            .checked_add(out.value)
            .filter(|t| *t <= Amount::MAX_MONEY)
            .ok_or(CheckError::OutputTotalTooLarge { index })?;
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for (index, input) in tx.input.iter().enumerate() {
        if !seen.insert(input.previous_output) {
            return Err(CheckError::DuplicateInput {
                index,
                outpoint: input.previous_output,
            });
        }
    }
    if tx.is_coinbase() {
        let len = tx.input.first().map_or(0, |i| i.script_sig.len());
        if !(MIN_COINBASE_SCRIPT_SIG..=MAX_COINBASE_SCRIPT_SIG).contains(&len) {
            return Err(CheckError::CoinbaseLength { len });
        }
    } else if let Some(index) = tx.input.iter().position(|i| i.previous_output.is_null()) {
        return Err(CheckError::NullPrevout { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{absolute, transaction, ScriptBuf, Sequence, TxIn, TxOut, Txid, Witness};

    fn tx() -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array([1; 32]), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1000),
                script_pubkey: ScriptBuf::new(),
            }],
        }
    }

    #[test]
    fn a_plain_transaction_passes() {
        assert_eq!(check_transaction(&tx()), Ok(()));
    }

    #[test]
    fn money_limit_is_inclusive() {
        let mut t = tx();
        t.output[0].value = Amount::MAX_MONEY;
        assert_eq!(check_transaction(&t), Ok(()));
        t.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new(),
        });
        assert_eq!(check_transaction(&t), Ok(()));
    }

    #[test]
    fn u64_max_outputs_do_not_wrap() {
        let mut t = tx();
        t.output[0].value = Amount::from_sat(u64::MAX);
        assert_eq!(
            check_transaction(&t).map_err(|e| e.reject_reason()),
            Err("bad-txns-vout-negative")
        );
    }
}
