//! Errors of transaction verification.

use super::VerifyFlags;

/// Why Bitcoin Core's interpreter refused an input.
///
/// libbitcoinkernel's script API reports a pass/fail verdict and a few setup errors, not Core's
/// detailed `ScriptError` code; this is all the reason the kernel gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScriptFailure {
    /// The scripts (scriptSig, witness, scriptPubKey) do not satisfy the rules in force.
    Invalid,
    /// The kernel needed the spent outputs (Taproot) and did not get them.
    SpentOutputsRequired,
}

impl core::fmt::Display for ScriptFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "script evaluation failed",
            Self::SpentOutputsRequired => "spent outputs required",
        })
    }
}

/// An error of [`verify_transaction`](super::verify_transaction),
/// [`verify_input`](super::verify_input) or [`TransactionVerifier`](super::TransactionVerifier).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// One spent output is needed per input, in input order.
    #[error("transaction has {inputs} inputs but {spent_outputs} spent outputs were given")]
    SpentOutputsMismatch {
        /// Inputs of the transaction.
        inputs: usize,
        /// Spent outputs supplied.
        spent_outputs: usize,
    },
    /// The input index does not exist.
    #[error("input index {index} is out of range for a transaction with {inputs} inputs")]
    InputIndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// Inputs of the transaction.
        inputs: usize,
    },
    /// The interpreter takes amounts as a signed 64-bit number of satoshis.
    #[error("spent output of input {index} is worth {value_sat} sat, more than the interpreter accepts")]
    AmountOutOfRange {
        /// The input whose spent output is too large.
        index: usize,
        /// Its value in satoshis.
        value_sat: u64,
    },
    /// The kernel refuses this flag combination (Core requires `P2SH` with `WITNESS`).
    #[error("invalid verification flag combination {flags}")]
    InvalidFlags {
        /// The flags given.
        flags: VerifyFlags,
    },
    /// Bitcoin Core's interpreter rejected the input.
    #[error("input {index} failed verification: {reason}")]
    Script {
        /// The failing input.
        index: usize,
        /// The kernel's reason.
        reason: ScriptFailure,
    },
    /// The kernel could not load the transaction or a spent output's script (e.g. a transaction
    /// without inputs, whose encoding Core reads as a segwit marker).
    #[error("libbitcoinkernel rejected the {what}")]
    Kernel {
        /// What was being handed to the kernel.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: bitcoinkernel::KernelError,
    },
}
