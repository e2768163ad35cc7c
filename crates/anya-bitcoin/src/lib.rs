#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod policy;
pub mod psbt;
pub mod regtest;
pub mod rpc;
pub mod signer;
pub mod verify;
pub mod wallet;

pub use verify::{
    check_transaction, verify_input, verify_transaction, CheckError, ScriptFailure, TransactionVerifier, VerifyError,
    VerifyFlags,
};
