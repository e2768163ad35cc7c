#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod clock;
mod label;

pub use bitcoin::{Amount, FeeRate, Network, SignedAmount};
pub use clock::{Clock, SystemClock, UnixTime};
pub use label::{Label, LabelError, MAX_LABEL_LEN};
