#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod verify;

pub use verify::{verify_input, verify_transaction, ScriptFailure, TransactionVerifier, VerifyError, VerifyFlags};
