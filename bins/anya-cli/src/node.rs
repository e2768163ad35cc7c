//! Which `bitcoind` to talk to and how to log in, found the way `bitcoin-cli` finds it, and
//! checked (reachable, credentials accepted, same chain as the wallet) before anything is
//! signed.

use std::path::PathBuf;

use anya_bitcoin::rpc::{network_of_genesis, BitcoindChain, FeeEstimate, FeeSource, RpcAuth, RpcConfig, RpcError};
use anya_hsm::SecretString;
use bitcoin::{FeeRate, Network};
use clap::Args;

use crate::onchain::{chain, show_rate};
use crate::CliError;

pub(crate) const CONNECTION_HELP: &str = "\
bitcoind is found as bitcoin-cli finds it: --rpcconnect (default 127.0.0.1), --rpcport \
(default: the wallet network's, 8332 main, 18332 testnet, 48332 testnet4, 38332 signet, 18443 \
regtest), and the cookie file <datadir>/<network>/.cookie (regtest/, signet/, testnet3/, \
testnet4/; none for main), where <datadir> is --datadir (bitcoind's -datadir, default ~/.bitcoin; \
not anya's --data-dir). --rpccookiefile names the cookie file itself; --rpcuser with \
--rpcpassword (or ANYA_RPC_PASSWORD) logs in with a password instead. --rpc-url \
http://HOST:PORT (the older spelling) is used when neither --rpcconnect nor --rpcport is given. \
Each option can also come from the environment variable shown beside it.

Before anything is signed the node is asked for its genesis block: a node that cannot be \
reached, refuses the credentials or follows another chain than the wallet stops the command.

Examples:
  anya wallet sync savings                                   # local node, ~/.bitcoin cookie
  anya wallet sync savings --datadir /srv/bitcoin --rpcport 18443
  anya wallet sync savings --rpcconnect 10.0.0.5 --rpcuser anya   # ANYA_RPC_PASSWORD=…";

/// How to reach `bitcoind`; the defaults follow `bitcoin-cli`.
#[derive(Debug, Args)]
#[command(next_help_heading = "bitcoind connection (as bitcoin-cli)")]
pub(crate) struct RpcArgs {
    /// bitcoind's RPC host (bitcoin-cli's -rpcconnect); HOST:PORT also works.
    #[arg(long, value_name = "HOST", env = "ANYA_RPCCONNECT")]
    rpcconnect: Option<String>,
    /// bitcoind's RPC port [default: the wallet network's: 8332, 18332, 48332, 38332 or 18443].
    #[arg(long, value_name = "PORT", env = "ANYA_RPCPORT")]
    rpcport: Option<u16>,
    /// The whole RPC URL (`http://HOST:PORT`), used when neither --rpcconnect nor --rpcport
    /// is given.
    #[arg(long, value_name = "URL", env = "ANYA_RPC_URL")]
    rpc_url: Option<String>,
    /// bitcoind's data directory, where its cookie file is (`<DIR>/<network>/.cookie`)
    /// [default: ~/.bitcoin]. Not anya's --data-dir.
    #[arg(long = "datadir", value_name = "DIR", env = "ANYA_BITCOIN_DATADIR")]
    bitcoin_datadir: Option<PathBuf>,
    /// bitcoind's cookie file, instead of the one in --datadir.
    #[arg(long, visible_alias = "rpc-cookie", value_name = "FILE", env = "ANYA_RPC_COOKIE")]
    rpccookiefile: Option<PathBuf>,
    /// Log in as this user (bitcoind's -rpcuser or an -rpcauth entry) instead of with the
    /// cookie in --datadir; --rpccookiefile, when given, wins.
    #[arg(long, visible_alias = "rpc-user", value_name = "USER", env = "ANYA_RPC_USER")]
    rpcuser: Option<String>,
    /// The password of --rpcuser; prefer ANYA_RPC_PASSWORD, which other users cannot see in
    /// the process list.
    #[arg(long, value_name = "PASS", env = "ANYA_RPC_PASSWORD", hide_env_values = true)]
    rpcpassword: Option<String>,
}

/// The fee rate options of commands that build a transaction.
#[derive(Debug, Args)]
pub(crate) struct FeeArgs {
    /// The fee rate in sat/vB (decimals allowed, e.g. 1.5) [default: bitcoind's
    /// estimatesmartfee for --conf-target blocks, or 20 sat/vB when it has no estimate].
    #[arg(long, value_parser = crate::onchain::parse_fee_rate)]
    fee_rate: Option<FeeRate>,
    /// The confirmation target in blocks for the estimate (1 to 1008).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=1008))]
    conf_target: u16,
}

impl FeeArgs {
    /// Whether --fee-rate was given (so no estimate is needed).
    pub(crate) fn is_given(&self) -> bool {
        self.fee_rate.is_some()
    }

    /// --fee-rate, or else `node`'s estimate.
    pub(crate) fn resolve(&self, node: Option<&Node>) -> Result<FeeRate, CliError> {
        match (self.fee_rate, node) {
            (Some(rate), _) => Ok(rate),
            (None, Some(node)) => node.estimate_fee_rate(self.conf_target),
            (None, None) => Err(CliError::Usage(
                "no --fee-rate, and no node to estimate one: pass --fee-rate".to_owned(),
            )),
        }
    }
}

/// Bitcoin Core's default RPC port of `network`.
fn default_port(network: Network) -> u16 {
    match network {
        Network::Bitcoin => 8332,
        Network::Testnet => 18332,
        Network::Testnet4 => 48332,
        Network::Signet => 38332,
        Network::Regtest => 18443,
    }
}

/// The directory below `-datadir` where Bitcoin Core keeps `network`'s files (and cookie).
fn network_subdir(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "",
        Network::Testnet => "testnet3",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        Network::Regtest => "regtest",
    }
}

/// Bitcoin Core's default `-datadir`.
fn default_datadir() -> Result<PathBuf, CliError> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = if cfg!(windows) {
        from("LOCALAPPDATA").map(|d| d.join("Bitcoin"))
    } else if cfg!(target_os = "macos") {
        from("HOME").map(|h| h.join("Library").join("Application Support").join("Bitcoin"))
    } else {
        from("HOME").map(|h| h.join(".bitcoin"))
    };
    dir.ok_or_else(|| {
        CliError::Usage("no home directory to find ~/.bitcoin in: pass --datadir or --rpccookiefile".to_owned())
    })
}

/// Splits `host:port` (or `[v6]:port`); a bare host (or IPv6 address) has no port.
fn split_host_port(s: &str) -> (String, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (format!("[{host}]"), port);
        }
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host.to_owned(), Some(port)),
            Err(_) => (s.to_owned(), None),
        },
        _ if s.matches(':').count() > 1 => (format!("[{s}]"), None),
        _ => (s.to_owned(), None),
    }
}

/// How the CLI logged in, for error messages.
enum Login {
    Cookie(PathBuf),
    User(String),
}

/// A `bitcoind` that answered and follows the wallet's chain.
pub(crate) struct Node {
    pub(crate) chain: BitcoindChain,
    pub(crate) url: String,
}

impl RpcArgs {
    /// The URL and credentials for a wallet on `network`, without contacting the node; a
    /// missing cookie file fails here.
    fn resolve(&self, network: Network) -> Result<(String, RpcAuth, Login), CliError> {
        // Flags and environment variables look the same to the parser, so precedence is
        // decided here rather than by refusing combinations: the more specific setting wins.
        let url = match &self.rpc_url {
            Some(url) if self.rpcconnect.is_none() && self.rpcport.is_none() => {
                if url.contains("://") {
                    url.clone()
                } else {
                    format!("http://{url}")
                }
            }
            _ => {
                let (host, port_in_host) = split_host_port(self.rpcconnect.as_deref().unwrap_or("127.0.0.1"));
                let port = self.rpcport.or(port_in_host).unwrap_or_else(|| default_port(network));
                format!("http://{host}:{port}")
            }
        };
        if let (Some(user), None) = (&self.rpcuser, &self.rpccookiefile) {
            let pass = self.rpcpassword.clone().ok_or_else(|| {
                CliError::Usage(format!(
                    "--rpcuser {user} needs a password: set ANYA_RPC_PASSWORD (or pass --rpcpassword)"
                ))
            })?;
            let auth = RpcAuth::UserPass {
                user: user.clone(),
                pass: SecretString::new(pass),
            };
            return Ok((url, auth, Login::User(user.clone())));
        }
        let cookie = match &self.rpccookiefile {
            Some(file) => file.clone(),
            None => {
                let datadir = match &self.bitcoin_datadir {
                    Some(dir) => dir.clone(),
                    None => default_datadir()?,
                };
                datadir.join(network_subdir(network)).join(".cookie")
            }
        };
        if !cookie.is_file() {
            let how = if self.rpccookiefile.is_some() {
                "check --rpccookiefile".to_owned()
            } else {
                format!(
                    "is bitcoind running on {network} with this -datadir? Pass --datadir DIR, --rpccookiefile FILE, or --rpcuser USER"
                )
            };
            return Err(CliError::Message(format!(
                "no bitcoind cookie file at {} ({how})",
                cookie.display()
            )));
        }
        Ok((url, RpcAuth::Cookie(cookie.clone()), Login::Cookie(cookie)))
    }

    /// Connects to the node for a wallet on `network` and checks that it answers, accepts the
    /// credentials and follows `network`'s chain (by its genesis block).
    pub(crate) fn connect(&self, network: Network) -> Result<Node, CliError> {
        let (url, auth, login) = self.resolve(network)?;
        let node =
            BitcoindChain::connect(RpcConfig::new(url.clone(), auth)).map_err(|e| rpc_error(&url, &login, &e))?;
        match node.check_network(network) {
            Ok(()) => {}
            Err(RpcError::NetworkMismatch { node_genesis, .. }) => {
                let theirs = network_of_genesis(&node_genesis).map_or_else(
                    || format!("an unknown chain (genesis {node_genesis})"),
                    |n| n.to_string(),
                );
                return Err(CliError::Message(format!(
                    "bitcoind at {url} is on {theirs}, but the wallet is on {network}: point --rpcport/--datadir at a {network} node"
                )));
            }
            Err(e) => return Err(rpc_error(&url, &login, &e)),
        }
        Ok(Node { chain: node, url })
    }
}

/// One line for a failure to talk to the node at `url`.
fn rpc_error(url: &str, login: &Login, e: &RpcError) -> CliError {
    CliError::Message(match e {
        RpcError::Transport { attempts, source } => format!(
            "cannot reach bitcoind at {url} ({}; {attempts} attempts): is it running? Check --rpcconnect/--rpcport",
            chain(&**source)
        ),
        RpcError::Auth { status } => {
            let who = match login {
                Login::Cookie(file) => format!("the cookie in {} (stale, or another node's?)", file.display()),
                Login::User(user) => format!("user {user} and its password"),
            };
            format!("bitcoind at {url} refused the credentials (http {status}): {who}")
        }
        _ => format!("bitcoind at {url}: {}", chain(e)),
    })
}

impl Node {
    /// The node's estimate for `target` blocks (or its fallback rate); says on stderr which.
    fn estimate_fee_rate(&self, target: u16) -> Result<FeeRate, CliError> {
        let FeeEstimate { fee_rate, source } = self.chain.estimate_fee(target).map_err(|e| self.error(&e))?;
        match source {
            FeeSource::Estimated { blocks } => eprintln!(
                "fee rate {} (bitcoind's estimatesmartfee for {blocks} blocks)",
                show_rate(fee_rate)
            ),
            _ => eprintln!(
                "fee rate {} (bitcoind has no estimate for {target} blocks: the fallback rate; choose one with --fee-rate)",
                show_rate(fee_rate)
            ),
        }
        Ok(fee_rate)
    }

    /// A failure of a call after the connection was checked.
    pub(crate) fn error(&self, e: &RpcError) -> CliError {
        CliError::Message(format!("bitcoind at {}: {}", self.url, chain(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_like_bitcoin_cli() {
        assert_eq!(split_host_port("127.0.0.1"), ("127.0.0.1".to_owned(), None));
        assert_eq!(split_host_port("node:18443"), ("node".to_owned(), Some(18443)));
        assert_eq!(split_host_port("[::1]:8332"), ("[::1]".to_owned(), Some(8332)));
        assert_eq!(split_host_port("::1"), ("[::1]".to_owned(), None));
    }

    #[test]
    fn ports_and_cookie_dirs_follow_core() {
        assert_eq!(default_port(Network::Regtest), 18443);
        assert_eq!(default_port(Network::Signet), 38332);
        assert_eq!(network_subdir(Network::Testnet), "testnet3");
        assert_eq!(network_subdir(Network::Bitcoin), "");
    }
}
