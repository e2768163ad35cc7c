//! A regtest `bitcoind` for one test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::{Address, BlockHash, Network};
use bitcoincore_rpc::RpcApi;
use jsonrpc::simple_http::SimpleHttpTransport;
use serde::de::DeserializeOwned;

use crate::env::require_env;

/// How long a node may take to answer its first RPC call.
const STARTUP: Duration = Duration::from_secs(60);
/// How many times a start is tried with new ports when the node exits early (another process
/// took a port between the probe and the bind).
const START_ATTEMPTS: u32 = 5;

/// Extra settings for [`Bitcoind::start_with`].
#[derive(Debug, Clone, Default)]
pub struct BitcoindOptions {
    /// More `-name=value` arguments, after the helper's own (so they win).
    pub args: Vec<String>,
}

/// A regtest `bitcoind` in a temporary data directory, listening on free loopback ports, with
/// cookie authentication. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct Bitcoind {
    // Fields drop in order: the process stops before its data directory is removed.
    _process: Process,
    client: bitcoincore_rpc::Client,
    rpc_port: u16,
    p2p_port: u16,
    exe: PathBuf,
    dir: tempfile::TempDir,
}

/// Kills the child when dropped, also during a panic.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The path in `BITCOIND_EXE`; `None` outside CI when it is unset.
pub(crate) fn bitcoind_exe() -> Option<PathBuf> {
    require_env(
        "BITCOIND_EXE",
        "build one with `export BITCOIND_EXE=$(scripts/bitcoind)`; .ci/run does",
    )
    .map(PathBuf::from)
}

impl Bitcoind {
    /// Starts a node with the default settings (`-txindex`, peers only from loopback); `None`
    /// outside CI when `BITCOIND_EXE` is unset. Panics when the node cannot be started.
    pub fn start() -> Option<Self> {
        Self::start_with(BitcoindOptions::default())
    }

    /// [`start`](Self::start) with extra arguments.
    pub fn start_with(options: BitcoindOptions) -> Option<Self> {
        let exe = bitcoind_exe()?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&exe, &options) {
                Ok(node) => return Some(node),
                Err(why) => last = why,
            }
        }
        panic!("bitcoind at {} did not start: {last}", exe.display());
    }

    fn try_start(exe: &Path, options: &BitcoindOptions) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("anya-bitcoind.")
            .tempdir()
            .map_err(|e| format!("no temp dir: {e}"))?;
        let rpc_port = free_port();
        let p2p_port = free_port();
        let mut process = Process(
            Command::new(exe)
                .arg("-regtest")
                .arg(format!("-datadir={}", dir.path().display()))
                .arg(format!("-rpcport={rpc_port}"))
                .arg(format!("-port={p2p_port}"))
                .arg(format!("-bind=127.0.0.1:{p2p_port}"))
                .args([
                    "-listen=1",
                    "-dnsseed=0",
                    "-fixedseeds=0",
                    "-server=1",
                    "-txindex=1",
                    "-rpcbind=127.0.0.1",
                    "-rpcallowip=127.0.0.1",
                    "-printtoconsole=0",
                    "-debuglogfile=debug.log",
                    "-rpcworkqueue=64",
                    "-rpcthreads=8",
                ])
                .args(&options.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", exe.display()))?,
        );
        let url = format!("http://127.0.0.1:{rpc_port}");
        let cookie = dir.path().join("regtest").join(".cookie");
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = process.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = process.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(format!("exited with {status}: {}", stderr.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!("no RPC answer within {STARTUP:?}"));
            }
            if let Ok(text) = std::fs::read_to_string(&cookie) {
                if let Some((user, pass)) = text.trim().split_once(':') {
                    let client = client(&url, user, pass);
                    // -28 (warming up) and refused connections both mean "not yet".
                    if client.get_block_count().is_ok() {
                        return Ok(Self {
                            _process: process,
                            client,
                            rpc_port,
                            p2p_port,
                            exe: exe.to_path_buf(),
                            dir,
                        });
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The RPC URL, `http://127.0.0.1:<port>`.
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// The RPC port.
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// The peer-to-peer port, bound on loopback (another test node can `addnode` it; with no
    /// seeds the node makes no other connection).
    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// The data directory given with `-datadir` (the chain's files are in its `regtest/`).
    pub fn datadir(&self) -> &Path {
        self.dir.path()
    }

    /// The cookie file, `<datadir>/regtest/.cookie`.
    pub fn cookie_file(&self) -> PathBuf {
        self.dir.path().join("regtest").join(".cookie")
    }

    /// The `bitcoind` binary.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The `bitcoin-cli` next to `bitcoind`, if there is one.
    pub fn cli_exe(&self) -> Option<PathBuf> {
        let cli = self.exe.with_file_name("bitcoin-cli");
        cli.exists().then_some(cli)
    }

    /// A `bitcoincore_rpc` client authenticated with the cookie.
    pub fn client(&self) -> &bitcoincore_rpc::Client {
        &self.client
    }

    /// Calls `method`; panics with the method's name and Core's error when it fails.
    pub fn rpc<T: DeserializeOwned>(&self, method: &str, params: &[serde_json::Value]) -> T {
        self.client
            .call(method, params)
            .unwrap_or_else(|e| panic!("bitcoind {method} {params:?}: {e}"))
    }

    /// The height of the best chain.
    pub fn height(&self) -> u32 {
        self.rpc("getblockcount", &[])
    }

    /// Mines `blocks` blocks paying their coinbase to `to`; returns their hashes once the
    /// transaction index has caught up with them (it is built in the background, so without
    /// the wait `getrawtransaction` could still miss, or under-count the confirmations of,
    /// what the blocks hold).
    pub fn mine(&self, blocks: u32, to: &Address) -> Vec<BlockHash> {
        let hashes: Vec<BlockHash> = self.rpc("generatetoaddress", &[blocks.into(), to.to_string().into()]);
        self.wait_for_txindex();
        hashes
    }

    /// Waits until `-txindex` covers the best chain (`getindexinfo`); at most 30 seconds.
    pub fn wait_for_txindex(&self) {
        #[derive(serde::Deserialize)]
        struct Index {
            synced: bool,
            best_block_height: u32,
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tip = self.height();
            let info: std::collections::HashMap<String, Index> = self.rpc("getindexinfo", &[]);
            match info.get("txindex") {
                None => return,
                Some(i) if i.synced && i.best_block_height >= tip => return,
                Some(_) if Instant::now() > deadline => panic!("the transaction index did not catch up in 30 s"),
                Some(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Mines a block holding exactly `txs` (raw hex or txids of mempool transactions), paying
    /// the coinbase to `to` (`generateblock`); returns its hash.
    pub fn mine_with(&self, to: &Address, txs: &[String]) -> BlockHash {
        #[derive(serde::Deserialize)]
        struct Generated {
            hash: BlockHash,
        }
        let generated: Generated = self.rpc("generateblock", &[to.to_string().into(), serde_json::json!(txs)]);
        self.wait_for_txindex();
        generated.hash
    }

    /// A fresh regtest address nobody holds the key of (its witness program is a hash of a
    /// counter), for coinbases and payments that must not reach a wallet under test. Each call
    /// returns a new one, so blocks mined after an `invalidateblock` differ from the ones they
    /// replace.
    pub fn new_burn_address(&self) -> Address {
        use bitcoin::hashes::{sha256, Hash};
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = format!("anya-testkit burn {} {n}", self.rpc_port);
        let program = sha256::Hash::hash(seed.as_bytes());
        let script = bitcoin::ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array(program.to_byte_array()));
        Address::from_script(&script, Network::Regtest).expect("a P2WSH script has an address")
    }

    /// The node's `debug.log`, for a failing test to print.
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("regtest").join("debug.log")).unwrap_or_default()
    }
}

fn client(url: &str, user: &str, pass: &str) -> bitcoincore_rpc::Client {
    let transport = SimpleHttpTransport::builder()
        .url(url)
        .expect("a loopback URL")
        .timeout(Duration::from_secs(30))
        .auth(user, Some(pass))
        .build();
    bitcoincore_rpc::Client::from_jsonrpc(jsonrpc::Client::with_transport(transport))
}
