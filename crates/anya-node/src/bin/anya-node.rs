//! `anya-node`: the anya daemon. A thin `main` over this crate's library
//! ([`anya_node::daemon`]).
//!
//! ```text
//! ANYA_PASSPHRASE=… anya-node --regtest --data-dir DIR --listen 127.0.0.1:8470
//! ```

fn main() -> std::process::ExitCode {
    anya_node::daemon::main(anya_node::daemon::Role::Node)
}
