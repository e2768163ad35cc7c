//! `anya-node`: the anya daemon. A thin `main` over this crate's library.
//!
//! ```text
//! ANYA_PASSPHRASE=… anya-node --regtest --data-dir DIR --listen 127.0.0.1:8470
//! ```
//!
//! The configuration is a TOML file (`--config`), overridden by `ANYA_*` environment variables,
//! overridden by these flags. The passphrase comes from `hsm.passphrase_file` or
//! `ANYA_PASSPHRASE`, never from an argument.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a daemon reports its start and its fatal errors"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anya_hsm::SecretString;
use anya_node::config::ChainKind;
use anya_node::{Node, NodeConfig};
use clap::Parser;

/// The anya daemon: keys, signing and the audit chain of a software keystore over HTTP.
#[derive(Debug, Parser)]
#[command(name = "anya-node", version, about)]
struct Args {
    /// A TOML configuration file (see docs/anya-node.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory (store, cookie); overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to listen (`127.0.0.1:0` picks a free port and prints it); overrides `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve the in-process regtest chain (the embedded default); overrides `chain`.
    #[arg(long)]
    regtest: bool,
    /// A `tracing` filter (`info`, `debug`, `anya_node=debug`); overrides `log.level`.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn passphrase(config: &NodeConfig) -> Result<SecretString, String> {
    if let Some(path) = &config.hsm.passphrase_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(format!("{} holds no passphrase", path.display()));
        }
        return Ok(SecretString::new(line.to_owned()));
    }
    std::env::var("ANYA_PASSPHRASE")
        .map(SecretString::new)
        .map_err(|_| "no passphrase: set ANYA_PASSPHRASE or hsm.passphrase_file".to_owned())
}

fn run(args: Args) -> Result<(), String> {
    let mut config =
        NodeConfig::load(args.config.as_deref(), |var| std::env::var(var).ok()).map_err(|e| e.to_string())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.regtest {
        config.chain = ChainKind::Regtest;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    if config.chain != ChainKind::Regtest {
        return Err("only the in-process regtest chain is served so far (chain = \"regtest\")".to_owned());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| format!("log.level: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let pass = passphrase(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (node, started) = tokio::task::spawn_blocking(move || Node::open(config, &pass))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if started.created_keystore {
            println!("created a keystore in {}", node.config().data_dir.display());
        }
        if let Some(token) = &started.admin_token {
            println!("admin token (shown once): {token}");
        }
        println!("cookie: {}", started.cookie.display());
        println!("listening on http://{addr}");
        anya_node::serve(Arc::new(node), listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
