//! Code shared by the whole-process tests and their child binaries.

pub mod dlc;
