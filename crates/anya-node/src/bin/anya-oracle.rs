//! `anya-oracle`: `anya-node` serving the DLC oracle alone — kormir's and the p2pderivatives
//! oracle's routes, `/v1/oracle/…`, health, tokens, audit and metrics; no wallet, key or PSBT
//! route. The same configuration file and flags as `anya-node`.
//!
//! ```text
//! ANYA_PASSPHRASE=… anya-oracle --data-dir DIR --listen 127.0.0.1:8470
//! ```

fn main() -> std::process::ExitCode {
    anya_node::daemon::main(anya_node::daemon::Role::Oracle)
}
