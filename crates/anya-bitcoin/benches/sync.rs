//! Wallet sync from genesis over 1,000 regtest blocks holding 5,000 wallet transactions, against
//! a real `bitcoind` (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`): anya's
//! `BitcoindChain::sync_wallet` bringing a fresh `AnyaWallet` (stored in a fresh SQLite file)
//! to the tip, beside `bdk_bitcoind_rpc`'s `Emitter` over a plain `bitcoincore_rpc::Client`
//! driving a bare in-memory `bdk_wallet::Wallet` with the same BIP86 descriptors. Issue goal:
//! anya >= 0.9x raw's speed.
//!
//! The chain: 105 coinbases to a key the bench holds, one block fanning five of them out into
//! 5,000 coins, then 894 blocks holding 5,000 transactions, each paying the next receive address
//! of the wallet (index 0 to 4,999), so a fresh wallet finds every one through its lookahead (25
//! scripts past the last used one, BDK's default) as a wallet restored from its descriptors
//! does. Neither wallet reveals an address before the sync; both end with the same 5,000
//! transactions, balance and tip, checked after every timed sync (outside the timing).
//!
//! After criterion's figures the bench prints a breakdown (`sync breakdown:` lines on stderr):
//! the RPC alone, BDK's block application alone, anya's `apply_block` (application plus a
//! durable store write per block), the write split into JSON encoding and the store commit,
//! what persisting every 100 blocks or once at the end would cost, and alternating
//! anya/raw sync pairs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anya_bitcoin::rpc::{BitcoindChain, RpcAuth, RpcConfig};
use anya_bitcoin::wallet::{AnyaWallet, KvPersister, Template};
use anya_core_types::{Label, SystemClock};
use anya_hsm::HsmProvider;
use anya_storage::{KvStore, Namespace, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::chain::BlockId;
use bdk_wallet::{KeychainKind, PersistedWallet, Wallet};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, Block, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use bitcoincore_rpc::{Auth, Client, RpcApi};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use secp256k1::{Message, Secp256k1, SecretKey};

/// Blocks mined to the funding key before the fan-out; coinbases 1 to 5 are mature in the next.
const FUNDING_BLOCKS: u32 = 105;
const CHAIN_HEIGHT: u32 = 1_000;
const WALLET_TXS: usize = 5_000;
const FANOUT_TXS: usize = 5;
const COIN: Amount = Amount::from_sat(4_900_000);
const FEE: Amount = Amount::from_sat(1_000);
/// Repetitions of each breakdown measurement (the median is printed).
const REPS: usize = 3;
/// Alternating anya/raw sync pairs after the breakdown (the shared machine drifts; pairs run
/// back to back see the same conditions).
const PAIRS: usize = 3;

/// The key the bench mines to and spends from (P2WPKH, signed with rust-bitcoin and secp256k1;
/// the node has no wallet).
struct Funder {
    secp: Secp256k1<secp256k1::All>,
    key: SecretKey,
    public: secp256k1::PublicKey,
    script: ScriptBuf,
    address: Address,
}

impl Funder {
    fn new() -> Self {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[0x11; 32]).expect("constant in the curve order");
        let public = key.public_key(&secp);
        let address = Address::p2wpkh(&CompressedPublicKey(public), Network::Regtest);
        Self {
            secp,
            key,
            public,
            script: address.script_pubkey(),
            address,
        }
    }

    /// A one-input transaction spending `coin` (worth `value`, paid to this key) to `outputs`.
    fn spend(&self, coin: OutPoint, value: Amount, outputs: Vec<TxOut>) -> Transaction {
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: outputs,
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &self.script, value, EcdsaSighashType::All)
            .expect("the funding script is P2WPKH");
        let signature = bitcoin::ecdsa::Signature {
            signature: self
                .secp
                .sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &self.key),
            sighash_type: EcdsaSighashType::All,
        };
        tx.input[0].witness = Witness::p2wpkh(&signature, &self.public);
        tx
    }
}

/// The node with its chain built, the HSM holding the wallet's root, and the wallet's public
/// descriptors.
struct Fixture {
    node: Bitcoind,
    _hsm_dir: tempfile::TempDir,
    hsm: Arc<dyn HsmProvider>,
    template: Template,
    external: String,
    internal: String,
}

/// A fresh anya wallet in a fresh SQLite file (the directory goes when it drops).
struct FreshAnya {
    wallet: AnyaWallet,
    _dir: tempfile::TempDir,
}

fn label(s: &str) -> Label {
    Label::new(s).expect("valid label")
}

fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn KvStore> {
    Arc::new(SqliteStore::open(dir.path().join("anya.db"), SqliteOptions::default()).expect("store"))
}

impl Fixture {
    fn new(node: Bitcoind) -> Self {
        let hsm_dir = tempfile::tempdir().expect("temp dir");
        let hsm = anya_hsm::conformance::software_on(sqlite_store(&hsm_dir));
        anya_hsm::conformance::generate_test_root(&hsm, &label("root"));
        let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
        let template = Template::Bip86 {
            root: label("root"),
            account: 0,
        };
        let mut fixture = Self {
            node,
            _hsm_dir: hsm_dir,
            hsm,
            template,
            external: String::new(),
            internal: String::new(),
        };
        let probe = fixture.fresh_anya();
        let bdk = probe.wallet.bdk();
        fixture.external = bdk.public_descriptor(KeychainKind::External).to_string();
        fixture.internal = bdk.public_descriptor(KeychainKind::Internal).to_string();
        let receive: Vec<ScriptBuf> = (0..WALLET_TXS as u32)
            .map(|i| bdk.peek_address(KeychainKind::External, i).script_pubkey())
            .collect();
        fixture.build_chain(&receive);
        fixture
    }

    fn fresh_anya(&self) -> FreshAnya {
        let dir = tempfile::tempdir().expect("temp dir");
        let wallet = AnyaWallet::create(
            sqlite_store(&dir),
            Arc::clone(&self.hsm),
            Arc::new(SystemClock),
            label("bench"),
            &self.template,
            Network::Regtest,
        )
        .expect("wallet created");
        FreshAnya { wallet, _dir: dir }
    }

    fn fresh_bdk(&self) -> Wallet {
        Wallet::create(self.external.clone(), self.internal.clone())
            .network(Network::Regtest)
            .create_wallet_no_persist()
            .expect("bdk wallet")
    }

    /// A bare BDK wallet persisting through anya's [`KvPersister`] into a fresh SQLite file.
    fn fresh_persisted_bdk(&self) -> (PersistedWallet<KvPersister>, KvPersister, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ns = Namespace::new("anya/wallet/bench").expect("namespace");
        let mut persister = KvPersister::new(sqlite_store(&dir), ns);
        let wallet = Wallet::create(self.external.clone(), self.internal.clone())
            .network(Network::Regtest)
            .create_wallet(&mut persister)
            .expect("persisted bdk wallet");
        (wallet, persister, dir)
    }

    fn client(&self) -> Client {
        Client::new(&self.node.rpc_url(), Auth::CookieFile(self.node.cookie_file())).expect("rpc client")
    }

    fn chain(&self) -> BitcoindChain {
        BitcoindChain::connect(RpcConfig::new(
            self.node.rpc_url(),
            RpcAuth::Cookie(self.node.cookie_file()),
        ))
        .expect("anya rpc client")
    }

    /// Mines the chain: funding coinbases, the fan-out, then `WALLET_TXS` payments to
    /// `receive[0..]` spread over the blocks up to `CHAIN_HEIGHT`.
    fn build_chain(&self, receive: &[ScriptBuf]) {
        let node = &self.node;
        let funder = Funder::new();
        let funded = node.mine(FUNDING_BLOCKS, &funder.address);
        let burn = node.new_burn_address();
        let per_fanout = WALLET_TXS / FANOUT_TXS;
        let mut coins = Vec::with_capacity(WALLET_TXS);
        let mut fanouts = Vec::with_capacity(FANOUT_TXS);
        for hash in &funded[..FANOUT_TXS] {
            let block = node.client().get_block(hash).expect("funding block");
            let coinbase = &block.txdata[0];
            assert_eq!(coinbase.output[0].script_pubkey, funder.script);
            let outputs = vec![
                TxOut {
                    value: COIN,
                    script_pubkey: funder.script.clone(),
                };
                per_fanout
            ];
            let tx = funder.spend(
                OutPoint::new(coinbase.compute_txid(), 0),
                coinbase.output[0].value,
                outputs,
            );
            let txid = tx.compute_txid();
            coins.extend((0..per_fanout as u32).map(|vout| OutPoint::new(txid, vout)));
            fanouts.push(serialize_hex(&tx));
        }
        node.mine_with(&burn, &fanouts);
        let blocks = (CHAIN_HEIGHT - node.height()) as usize;
        let mut next = 0;
        for block in 0..blocks {
            let end = WALLET_TXS * (block + 1) / blocks;
            let txs: Vec<String> = (next..end)
                .map(|i| {
                    let pay = TxOut {
                        value: COIN - FEE,
                        script_pubkey: receive[i].clone(),
                    };
                    serialize_hex(&funder.spend(coins[i], COIN, vec![pay]))
                })
                .collect();
            next = end;
            node.mine_with(&burn, &txs);
        }
        assert_eq!(next, WALLET_TXS);
        assert_eq!(node.height(), CHAIN_HEIGHT);
    }

    /// What every synced wallet must hold.
    fn check(&self, wallet: &Wallet, who: &str) {
        let tip = wallet.latest_checkpoint();
        assert_eq!(tip.height(), CHAIN_HEIGHT, "{who}: tip height");
        assert_eq!(
            tip.hash(),
            self.node.client().get_best_block_hash().expect("tip"),
            "{who}: tip hash"
        );
        assert_eq!(wallet.transactions().count(), WALLET_TXS, "{who}: transactions");
        let expected = (COIN - FEE) * WALLET_TXS as u64;
        assert_eq!(wallet.balance().confirmed, expected, "{who}: confirmed balance");
        assert_eq!(wallet.balance().total(), expected, "{who}: total balance");
    }
}

/// The raw path: the `Emitter` feeds every block to the wallet, then the mempool.
fn raw_sync(client: &Client, wallet: &mut Wallet) -> u32 {
    let unconfirmed: Vec<Arc<Transaction>> = wallet
        .transactions()
        .filter(|tx| !tx.chain_position.is_confirmed())
        .map(|tx| Arc::clone(&tx.tx_node.tx))
        .collect();
    let mut emitter = Emitter::new(client, wallet.latest_checkpoint(), 0, unconfirmed);
    let mut blocks = 0;
    while let Some(event) = emitter.next_block().expect("next block") {
        wallet
            .apply_block_connected_to(&event.block, event.block_height(), event.connected_to())
            .expect("block connects");
        blocks += 1;
    }
    let mempool = emitter.mempool().expect("mempool");
    wallet.apply_unconfirmed_txs(mempool.update);
    wallet.apply_evicted_txs(mempool.evicted);
    blocks
}

/// Blocks applied between two persists in the batched variant of [`time_batched`].
const PERSIST_EVERY: u32 = 100;

/// The fix proposed for anya's sync, measured without touching it: the `Emitter` over the same
/// client feeding a BDK wallet that persists through anya's [`KvPersister`] into SQLite every
/// [`PERSIST_EVERY`] blocks and once at the tip, then the mempool (persisted too).
fn time_batched(fx: &Fixture, client: &Client) -> Duration {
    let (mut wallet, mut persister, _dir) = fx.fresh_persisted_bdk();
    let start = Instant::now();
    let mut emitter = Emitter::new(
        client,
        wallet.latest_checkpoint(),
        0,
        bdk_bitcoind_rpc::NO_EXPECTED_MEMPOOL_TXS,
    );
    while let Some(event) = emitter.next_block().expect("next block") {
        let height = event.block_height();
        wallet
            .apply_block_connected_to(&event.block, height, event.connected_to())
            .expect("block connects");
        if height % PERSIST_EVERY == 0 {
            wallet.persist(&mut persister).expect("persisted");
        }
    }
    wallet.persist(&mut persister).expect("persisted");
    let mempool = emitter.mempool().expect("mempool");
    wallet.apply_unconfirmed_txs(mempool.update);
    wallet.apply_evicted_txs(mempool.evicted);
    wallet.persist(&mut persister).expect("persisted");
    let elapsed = start.elapsed();
    fx.check(&wallet, "batched");
    elapsed
}

fn time_anya(fx: &Fixture, chain: &BitcoindChain) -> Duration {
    let mut fresh = fx.fresh_anya();
    let start = Instant::now();
    let report = chain.sync_wallet(&mut fresh.wallet).expect("anya synced");
    let elapsed = start.elapsed();
    assert_eq!(report.blocks, CHAIN_HEIGHT);
    fx.check(fresh.wallet.bdk(), "anya");
    elapsed
}

fn time_raw(fx: &Fixture, client: &Client) -> Duration {
    let mut wallet = fx.fresh_bdk();
    let start = Instant::now();
    let blocks = raw_sync(client, &mut wallet);
    let elapsed = start.elapsed();
    assert_eq!(blocks, CHAIN_HEIGHT);
    fx.check(&wallet, "raw");
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every block from genesis's successor to the tip, as the `Emitter` hands them out.
fn fetch_blocks(client: &Client, genesis: &Wallet) -> Vec<(Block, u32, BlockId)> {
    let mut emitter = Emitter::new(
        client,
        genesis.latest_checkpoint(),
        0,
        bdk_bitcoind_rpc::NO_EXPECTED_MEMPOOL_TXS,
    );
    let mut blocks = Vec::with_capacity(CHAIN_HEIGHT as usize);
    while let Some(event) = emitter.next_block().expect("next block") {
        let (height, connected_to) = (event.block_height(), event.connected_to());
        blocks.push((event.block, height, connected_to));
    }
    blocks
}

/// Where a sync's time goes, measured outside criterion (medians of `REPS` runs).
#[allow(clippy::print_stderr, reason = "the breakdown is the bench's report")]
fn breakdown(fx: &Fixture, chain: &BitcoindChain, client: &Client) {
    let line = |what: &str, d: Duration| eprintln!("sync breakdown: {what:<58} {:>9.1} ms", ms(d));

    let rpc = median(
        (0..REPS)
            .map(|_| {
                let genesis = fx.fresh_bdk();
                let start = Instant::now();
                black_box(fetch_blocks(client, &genesis));
                start.elapsed()
            })
            .collect(),
    );
    line("RPC only: Emitter fetching 1,000 blocks", rpc);
    let blocks = fetch_blocks(client, &fx.fresh_bdk());
    assert_eq!(blocks.len(), CHAIN_HEIGHT as usize);

    let bdk_apply = median(
        (0..REPS)
            .map(|_| {
                let mut wallet = fx.fresh_bdk();
                let start = Instant::now();
                for (block, height, connected_to) in &blocks {
                    wallet
                        .apply_block_connected_to(block, *height, *connected_to)
                        .expect("connects");
                }
                let elapsed = start.elapsed();
                fx.check(&wallet, "bdk apply");
                elapsed
            })
            .collect(),
    );
    line("bdk_wallet apply_block_connected_to, in memory", bdk_apply);

    let anya_apply = median(
        (0..REPS)
            .map(|_| {
                let mut fresh = fx.fresh_anya();
                let start = Instant::now();
                for (block, height, _) in &blocks {
                    fresh.wallet.apply_block(block, *height).expect("applied");
                }
                let elapsed = start.elapsed();
                fx.check(fresh.wallet.bdk(), "anya apply");
                elapsed
            })
            .collect(),
    );
    line("AnyaWallet::apply_block (apply + durable write per block)", anya_apply);

    // The same work split: bdk_wallet with anya's persister, one record per block.
    let mut apply = Vec::new();
    let mut encode = Vec::new();
    let mut persist = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..REPS {
        let (mut wallet, mut persister, _dir) = fx.fresh_persisted_bdk();
        let (mut a, mut e, mut p) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        bytes = 0;
        for (block, height, connected_to) in &blocks {
            let t0 = Instant::now();
            wallet
                .apply_block_connected_to(block, *height, *connected_to)
                .expect("connects");
            let t1 = Instant::now();
            let json = serde_json::to_vec(wallet.staged().expect("a block stages a change")).expect("json");
            let t2 = Instant::now();
            wallet.persist(&mut persister).expect("persisted");
            let t3 = Instant::now();
            bytes += json.len();
            a += t1 - t0;
            e += t2 - t1;
            p += t3 - t2;
        }
        fx.check(&wallet, "bdk + KvPersister");
        apply.push(a);
        encode.push(e);
        persist.push(p);
    }
    let (apply, encode, persist) = (median(apply), median(encode), median(persist));
    line("  split: apply", apply);
    line("  split: JSON encoding of the change set", encode);
    line("  split: KvPersister::persist (encode again + SQLite commit)", persist);
    line(
        "  split: SQLite commit alone (persist - encode)",
        persist.saturating_sub(encode),
    );
    eprintln!(
        "sync breakdown: {:<58} {:>9.1} KiB in {} records",
        "  records written",
        bytes as f64 / 1024.0,
        blocks.len()
    );

    for every in [100usize, CHAIN_HEIGHT as usize] {
        let total = median(
            (0..REPS)
                .map(|_| {
                    let (mut wallet, mut persister, _dir) = fx.fresh_persisted_bdk();
                    let start = Instant::now();
                    for (n, (block, height, connected_to)) in blocks.iter().enumerate() {
                        wallet
                            .apply_block_connected_to(block, *height, *connected_to)
                            .expect("connects");
                        if (n + 1) % every == 0 {
                            wallet.persist(&mut persister).expect("persisted");
                        }
                    }
                    wallet.persist(&mut persister).expect("persisted");
                    let elapsed = start.elapsed();
                    fx.check(&wallet, "bdk + KvPersister batched");
                    elapsed
                })
                .collect(),
        );
        line(&format!("apply + KvPersister::persist every {every} blocks"), total);
    }

    // Pairs in alternating order, each followed by the batched variant.
    let mut ratios = Vec::new();
    let mut batched_ratios = Vec::new();
    for pair in 0..PAIRS {
        let (anya, raw) = if pair % 2 == 0 {
            let anya = time_anya(fx, chain);
            (anya, time_raw(fx, client))
        } else {
            let raw = time_raw(fx, client);
            (time_anya(fx, chain), raw)
        };
        let batched = time_batched(fx, client);
        let ratio = raw.as_secs_f64() / anya.as_secs_f64();
        let batched_ratio = raw.as_secs_f64() / batched.as_secs_f64();
        eprintln!(
            "sync breakdown: pair {pair}: anya {:.1} ms, raw {:.1} ms, anya speed vs raw {ratio:.3}x; \
             persist every {PERSIST_EVERY} blocks {:.1} ms, {batched_ratio:.3}x",
            ms(anya),
            ms(raw),
            ms(batched),
        );
        ratios.push(ratio);
        batched_ratios.push(batched_ratio);
    }
    ratios.sort_by(f64::total_cmp);
    batched_ratios.sort_by(f64::total_cmp);
    eprintln!(
        "sync breakdown: median over the pairs: anya speed vs raw {:.3}x; persisting every {PERSIST_EVERY} blocks {:.3}x",
        ratios[PAIRS / 2],
        batched_ratios[PAIRS / 2]
    );
}

#[allow(clippy::print_stderr, reason = "says why the bench measured nothing")]
fn bench(c: &mut Criterion) {
    let Some(node) = Bitcoind::start() else {
        eprintln!("sync bench skipped: BITCOIND_EXE unset");
        return;
    };
    let setup = Instant::now();
    let fx = Fixture::new(node);
    eprintln!(
        "sync bench: chain of {CHAIN_HEIGHT} blocks with {WALLET_TXS} wallet transactions built in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let chain = fx.chain();
    let client = fx.client();

    let mut group = c.benchmark_group("wallet_sync_1000_blocks_5000_txs");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("anya_bitcoind_chain_sqlite", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| time_anya(&fx, &chain)).sum())
    });
    group.bench_function("bdk_emitter_in_memory", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| time_raw(&fx, &client)).sum())
    });
    group.finish();

    breakdown(&fx, &chain, &client);
}

criterion_group!(benches, bench);
criterion_main!(benches);
