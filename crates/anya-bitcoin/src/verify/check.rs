//! Bitcoin Core's context-free transaction checks (`CheckTransaction`, consensus/tx_check.cpp).
//!
//! These are the rules a node applies to a transaction by itself, before it looks at the coins
//! it spends or runs a script: a transaction that fails one can never be in a valid block, so
//! nothing should sign, hand out or mine it.

use std::collections::HashSet;

use bitcoin::{Amount, OutPoint, Transaction, TxOut, Weight};

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
    /// `bad-txns-inputs-missingorspent`: the spent outputs given do not cover every input
    /// ([`check_tx_inputs`] needs one per input, in input order).
    #[error("bad-txns-inputs-missingorspent: {inputs} inputs, but {spent} spent outputs known")]
    MissingInputs {
        /// The transaction's input count.
        inputs: usize,
        /// How many spent outputs were given.
        spent: usize,
    },
    /// `bad-txns-inputvalues-outofrange`: a spent output, or the spent outputs up to `index`
    /// together, are worth more than [`Amount::MAX_MONEY`].
    #[error("bad-txns-inputvalues-outofrange: inputs up to {index} are worth more than the money supply")]
    InputValuesOutOfRange {
        /// The input at which the running sum left the money range.
        index: usize,
    },
    /// `bad-txns-in-belowout`: the outputs are worth more than the coins spent.
    #[error("bad-txns-in-belowout: outputs worth {outputs} spend inputs worth {inputs}")]
    InputsBelowOutputs {
        /// What the inputs are worth.
        inputs: Amount,
        /// What the outputs are worth.
        outputs: Amount,
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
            Self::MissingInputs { .. } => "bad-txns-inputs-missingorspent",
            Self::InputValuesOutOfRange { .. } => "bad-txns-inputvalues-outofrange",
            Self::InputsBelowOutputs { .. } => "bad-txns-in-belowout",
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

/// Checks the value `tx` moves against the outputs it spends (`spent[i]` for input `i`), as
/// Bitcoin Core's `Consensus::CheckTxInputs` does once it has the coins: every spent output
/// known, the inputs' running sum within the money range, and value in at least value out.
/// Returns the fee. Sums are checked; nothing here can overflow or wrap.
///
/// The contextual part of Core's check (a coinbase spent before 100 confirmations) needs the
/// chain and is left to it. Call [`check_transaction`] first: this assumes the outputs passed it
/// and reports their sum leaving the money range as [`CheckError::OutputTotalTooLarge`].
///
/// # Errors
/// [`CheckError::MissingInputs`], [`CheckError::InputValuesOutOfRange`],
/// [`CheckError::InputsBelowOutputs`] or [`CheckError::OutputTotalTooLarge`].
pub fn check_tx_inputs(tx: &Transaction, spent: &[TxOut]) -> Result<Amount, CheckError> {
    if spent.len() != tx.input.len() {
        return Err(CheckError::MissingInputs {
            inputs: tx.input.len(),
            spent: spent.len(),
        });
    }
    let inputs =
        money_sum(spent.iter().map(|o| o.value)).map_err(|index| CheckError::InputValuesOutOfRange { index })?;
    let outputs =
        money_sum(tx.output.iter().map(|o| o.value)).map_err(|index| CheckError::OutputTotalTooLarge { index })?;
    inputs
        .checked_sub(outputs)
        .ok_or(CheckError::InputsBelowOutputs { inputs, outputs })
}

/// The sum of `values`, or the index at which it (or a value) leaves the money range.
fn money_sum(values: impl IntoIterator<Item = Amount>) -> Result<Amount, usize> {
    values
        .into_iter()
        .enumerate()
        .try_fold(Amount::ZERO, |sum, (index, v)| {
            sum.checked_add(v).filter(|s| *s <= Amount::MAX_MONEY).ok_or(index)
        })
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

    fn paying(sat: u64) -> TxOut {
        TxOut {
            value: Amount::from_sat(sat),
            script_pubkey: ScriptBuf::new(),
        }
    }

    #[test]
    fn check_tx_inputs_returns_the_fee() {
        assert_eq!(check_tx_inputs(&tx(), &[paying(1500)]), Ok(Amount::from_sat(500)));
        assert_eq!(check_tx_inputs(&tx(), &[paying(1000)]), Ok(Amount::ZERO));
    }

    #[test]
    fn check_tx_inputs_refuses_value_created() {
        assert_eq!(
            check_tx_inputs(&tx(), &[paying(999)]),
            Err(CheckError::InputsBelowOutputs {
                inputs: Amount::from_sat(999),
                outputs: Amount::from_sat(1000)
            })
        );
    }

    #[test]
    fn check_tx_inputs_needs_one_spent_output_per_input() {
        assert_eq!(
            check_tx_inputs(&tx(), &[]),
            Err(CheckError::MissingInputs { inputs: 1, spent: 0 })
        );
        assert_eq!(
            check_tx_inputs(&tx(), &[paying(1), paying(2)]),
            Err(CheckError::MissingInputs { inputs: 1, spent: 2 })
        );
    }

    #[test]
    fn check_tx_inputs_sums_inputs_in_the_money_range_without_wrapping() {
        let mut t = tx();
        t.input.push(t.input[0].clone());
        let max = Amount::MAX_MONEY.to_sat();
        assert_eq!(
            check_tx_inputs(&t, &[paying(max), paying(1)]),
            Err(CheckError::InputValuesOutOfRange { index: 1 })
        );
        assert_eq!(
            check_tx_inputs(&t, &[paying(u64::MAX), paying(u64::MAX)]),
            Err(CheckError::InputValuesOutOfRange { index: 0 })
        );
        assert_eq!(
            check_tx_inputs(&t, &[paying(max - 1000), paying(1000)]),
            Ok(Amount::MAX_MONEY - Amount::from_sat(1000))
        );
    }
}
