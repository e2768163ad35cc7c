//! The daemons' command line and lifecycle (feature `daemon`): `anya-node` and `anya-oracle`
//! are each a one-line `main` over [`main`].
//!
//! The configuration is a TOML file (`--config`), overridden by `ANYA_*` environment variables,
//! overridden by the flags. The passphrase comes from `hsm.passphrase_file`, `ANYA_PASSPHRASE`
//! or a prompt on the terminal, never from an argument. SIGHUP (or `POST /v1/admin/reload`)
//! reloads the configuration; SIGTERM or SIGINT stops gracefully.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a daemon reports its start and its fatal errors"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{ChainKind, ConfigError, HsmKind, LogFormat};
use crate::{Node, NodeConfig, Reloader};
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

/// Which daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `anya-node`: every service the configuration enables.
    Node,
    /// `anya-oracle`: the DLC oracle alone (`oracle.enabled` and `oracle.only` forced on);
    /// the wallet, key and PSBT routes answer 404.
    Oracle,
}

/// The anya daemon: keys, wallets, PSBTs, policy, the audit chain and the DLC oracle over HTTP
/// and WebSocket.
#[derive(Debug, Clone, Parser)]
#[command(name = "anya-node", version, about)]
struct Args {
    /// A TOML configuration file (see docs/anya-node.example.toml); reread on SIGHUP.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory (store, cookie); overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store: `sqlite:PATH`, `rocksdb:PATH` or `postgres://…`; overrides `store`.
    #[arg(long)]
    store: Option<String>,
    /// Where to listen (`127.0.0.1:0` picks a free port and prints it); overrides `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve the in-process regtest chain (the embedded default); overrides `chain`.
    #[arg(long)]
    regtest: bool,
    /// A `tracing` filter (`info`, `debug`, `anya_node=debug`); overrides `log.level`.
    #[arg(long)]
    log_level: Option<String>,
    /// `pretty` or `json`; overrides `log.format`.
    #[arg(long)]
    log_format: Option<String>,
    /// Without a command, the daemon runs.
    #[command(subcommand)]
    command: Option<Command>,
    /// Which daemon this is (not a flag: set by the binary).
    #[arg(skip = Role::Node)]
    role: Role,
}

/// Commands that work on the node's store without starting it (they may run beside it).
#[derive(Debug, Clone, clap::Subcommand)]
enum Command {
    /// API tokens: make, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
enum TokenCommand {
    /// Makes a token and prints it once.
    New {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// `read`, `sign` or `admin` (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Limit it to this key (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Limit it to this wallet (repeatable).
        #[arg(long = "wallet")]
        wallets: Vec<String>,
        /// Seconds until it expires.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Lists the tokens (never their secrets).
    List,
    /// Revokes a token by its id.
    Revoke {
        /// The id (the part after `anya_`).
        id: String,
    },
}

impl Args {
    /// The configuration: file, then environment, then these flags.
    fn load(&self) -> Result<NodeConfig, ConfigError> {
        let mut config = NodeConfig::load(self.config.as_deref(), |var| std::env::var(var).ok())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(store) = &self.store {
            config.store = Some(store.clone());
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.regtest {
            config.chain = ChainKind::Regtest;
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        match self.log_format.as_deref() {
            Some("json") => config.log.format = LogFormat::Json,
            Some("pretty") => config.log.format = LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log.format",
                    message: format!("{other:?}: pretty or json"),
                })
            }
            None => {}
        }
        if self.role == Role::Oracle {
            config.oracle.enabled = true;
            config.oracle.only = true;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Parses the command line and runs the daemon (or a token command) as `role`.
pub fn main(role: Role) -> ExitCode {
    let name = match role {
        Role::Node => "anya-node",
        Role::Oracle => "anya-oracle",
    };
    let matches = <Args as clap::CommandFactory>::command()
        .name(name)
        .bin_name(name)
        .get_matches();
    let mut args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    args.role = role;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Installs the log output; returns the handle that swaps its filter on reload.
fn logging(config: &NodeConfig) -> Result<FilterHandle, String> {
    let filter = EnvFilter::try_new(&config.log.level).map_err(|e| format!("log.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let output = match config.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(handle)
}

/// Runs a token command on the store of `config`.
fn token_command(config: &NodeConfig, command: &TokenCommand) -> Result<(), String> {
    use crate::auth::{Scope, TokenLimits, Tokens};
    let store = anya_storage::open_url(&config.store_url()).map_err(|e| e.to_string())?;
    let clock: Arc<dyn anya_core_types::Clock> = Arc::new(anya_core_types::SystemClock);
    let tokens = Tokens::new(store, Arc::clone(&clock)).map_err(|e| e.to_string())?;
    match command {
        TokenCommand::New {
            name,
            scopes,
            keys,
            wallets,
            expires_in,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| match s.as_str() {
                    "read" => Ok(Scope::Read),
                    "sign" => Ok(Scope::Sign),
                    "admin" => Ok(Scope::Admin),
                    other => Err(format!("unknown scope {other:?}: read, sign or admin")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let limits = TokenLimits {
                keys: (!keys.is_empty()).then(|| keys.clone()),
                wallets: (!wallets.is_empty()).then(|| wallets.clone()),
            };
            let expires = expires_in.map(|s| clock.now().as_secs().saturating_add(s));
            let (info, token) = tokens
                .create(name, scopes, limits, expires)
                .map_err(|e| e.to_string())?;
            println!("{token}");
            eprintln!("token {} ({}) made; it is shown once", info.id, info.name);
        }
        TokenCommand::List => {
            for t in tokens.list().map_err(|e| e.to_string())? {
                println!("{}", serde_json::to_string(&t).map_err(|e| e.to_string())?);
            }
        }
        TokenCommand::Revoke { id } => {
            if !tokens.revoke(id).map_err(|e| e.to_string())? {
                return Err(format!("no token {id}"));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let config = args.load().map_err(|e| e.to_string())?;
    if let Some(Command::Token(command)) = &args.command {
        return token_command(&config, command);
    }
    let filter = logging(&config)?;
    // A software keystore (the provider, or a failover secondary) is unlocked with the
    // passphrase; a token with its PIN.
    let pass = if config.hsm.provider == HsmKind::Software || config.hsm.failover.is_some() {
        let first_start = config.store.is_none() && !config.data_dir.join("anya.db").exists();
        anya_hsm::passphrase::read_passphrase(config.hsm.passphrase_file.as_deref(), first_start)
            .map_err(|e| e.to_string())?
    } else {
        // The token's PIN unlocks the keys (hsm.pkcs11.pin_file or ANYA_HSM_PIN).
        anya_hsm::SecretString::from_str_secret("")
    };
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
        let reload_args = args.clone();
        node.set_reloader(Reloader {
            load: Box::new(move || reload_args.load()),
            apply: Box::new(move |config| {
                let new = EnvFilter::try_new(&config.log.level).map_err(|e| format!("log.level: {e}"))?;
                filter.reload(new).map_err(|e| format!("log.level: {e}"))
            }),
        });
        if started.created_keystore {
            println!("created a keystore in {}", node.config().data_dir.display());
        }
        if let Some(token) = &started.admin_token {
            println!("admin token (shown once): {token}");
        }
        println!("cookie: {}", started.cookie.display());
        let scheme = if node.tls().is_some() {
            let config = node.config();
            let (cert, _) = crate::tls::paths(&config);
            let fingerprint = crate::tls::fingerprint(&config).map_err(|e| e.to_string())?;
            println!("tls certificate: {} (SHA-256 {fingerprint})", cert.display());
            "https"
        } else {
            "http"
        };
        println!("listening on {scheme}://{addr}");
        let node = Arc::new(node);
        tokio::spawn(reload_on_sighup(Arc::clone(&node)));
        crate::serve(node, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// Reloads the configuration on each SIGHUP; a refused reload is logged and the running
/// configuration stays.
async fn reload_on_sighup(node: Arc<Node>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let node = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || node.reload()).await {
            Ok(Ok(())) => tracing::info!("SIGHUP: configuration reloaded"),
            Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: reload refused; the running configuration stays"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
        }
    }
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
