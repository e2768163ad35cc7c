//! Two Lightning nodes on a real regtest bitcoind (`BITCOIND_EXE`, required in CI), each on its
//! own software HSM and anya store: the node seed comes from the HSM (audited), a channel is
//! funded from the opener's on-chain wallet, a BOLT11 payment goes through, and a node moved
//! to a fresh working directory on the same database and keystore, on every backend, carries
//! on with the channel.

mod common;
#[path = "common/ln.rs"]
mod ln;

use std::sync::Arc;

use anya_bitcoin::policy::{PolicyError, SpendPolicy};
use anya_hsm::Operation;
use anya_layer2::lightning::ldk_node::lightning::ln::channelmanager::PaymentId;
use anya_layer2::lightning::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use anya_layer2::lightning::ldk_node::Event;
use anya_layer2::lightning::LightningError;
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::hashes::Hash;
use bitcoin::Amount;
use ln::LnParty;

const CHANNEL_SATS: u64 = 1_000_000;

fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn KvStore> {
    Arc::new(SqliteStore::open(dir.path().join("node.db"), SqliteOptions::default()).expect("sqlite"))
}

/// `a` funds its wallet with one coinbase per peer, opens a channel to each peer at once,
/// and waits until every channel is usable on both sides.
fn open_channels(chain: &Bitcoind, a: &LnParty, peers: &[&LnParty]) {
    let address = a.node.node().onchain_payment().new_address().expect("address");
    chain.mine(u32::try_from(peers.len()).expect("few"), &address);
    let all: Vec<&LnParty> = std::iter::once(a).chain(peers.iter().copied()).collect();
    LnParty::mine_and_sync(chain, 100, &all);
    a.wait_until("funded", |n| {
        n.node().list_balances().spendable_onchain_balance_sats > CHANNEL_SATS * peers.len() as u64
    });
    // One at a time, each funding confirmed before the next open: ldk-node's wallet may
    // otherwise fund an open from a coin an unconfirmed funding already spends, and that
    // transaction never reaches the mempool.
    for b in peers {
        a.node
            .node()
            .open_channel(b.node.node_id(), b.address().into(), CHANNEL_SATS, None, None)
            .expect("open");
        a.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
        b.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
        a.wait_funding_broadcast(chain);
        LnParty::mine_and_sync(chain, 1, &all);
    }
    LnParty::mine_and_sync(chain, 6, &all);
    for _ in peers {
        a.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    }
    for b in peers {
        b.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    }
    a.wait_until("usable", |n| {
        n.channels().iter().filter(|c| c.is_usable).count() == peers.len()
    });
}

/// `payer` pays a fresh invoice of `payee` for `msat`; both see it complete.
fn pay(payer: &LnParty, payee: &LnParty, msat: u64) {
    let description = Bolt11InvoiceDescription::Direct(Description::new("anya test".into()).expect("description"));
    let invoice = payee
        .node
        .node()
        .bolt11_payment()
        .receive(msat, &description, 3600)
        .expect("invoice");
    let id = payer.node.pay_invoice(&invoice, None, None).expect("send");
    completed(payer, payee, id, msat);
}

/// Waits until payment `id` of `msat` succeeded for `payer` and arrived at `payee`.
fn completed(payer: &LnParty, payee: &LnParty, id: PaymentId, msat: u64) {
    payer.wait_event(
        "PaymentSuccessful",
        |e| matches!(e, Event::PaymentSuccessful { payment_id: Some(p), .. } if *p == id),
    );
    payee.wait_event(
        "PaymentReceived",
        |e| matches!(e, Event::PaymentReceived { amount_msat, .. } if *amount_msat == msat),
    );
}

/// `payer` pays `msat` to `payee` by keysend.
fn keysend(payer: &LnParty, payee: &LnParty, msat: u64) {
    let id = payer
        .node
        .pay_keysend(payee.node.node_id(), msat, None)
        .expect("keysend");
    completed(payer, payee, id, msat);
}

/// Payments the policy refuses send nothing and are audited; the velocity window counts the
/// approved ones (amount plus fee limit).
fn refused_by_policy(name: &str, payer: &LnParty, payee: &LnParty) {
    let policy = payer.node.policy();
    let spent_before = policy.spent_last_24h().expect("window");
    assert!(spent_before > Amount::ZERO, "{name}: approved payments count");
    let description = Bolt11InvoiceDescription::Direct(Description::new("refused".into()).expect("description"));
    let invoice = payee
        .node
        .node()
        .bolt11_payment()
        .receive(1_000_000, &description, 3600)
        .expect("invoice");
    let audited = |outcome_nonzero: bool| {
        payer
            .hsm
            .audit_records(0, 100_000)
            .expect("audit")
            .iter()
            .filter(|r| r.operation == Operation::Decision && (r.outcome != 0) == outcome_nonzero)
            .filter(|r| r.input_hash == Some(invoice.payment_hash().to_byte_array()))
            .count()
    };
    let stranger = payer.node.node_id();
    let rules = [
        SpendPolicy {
            node_allowlist: Some(vec![stranger]),
            ..SpendPolicy::default()
        },
        SpendPolicy {
            max_per_tx: Some(Amount::from_sat(500)),
            ..SpendPolicy::default()
        },
        SpendPolicy {
            max_per_24h: Some(spent_before),
            ..SpendPolicy::default()
        },
    ];
    for (i, rule) in rules.iter().enumerate() {
        policy.set_rules(rule).expect("rules");
        let r = payer.node.pay_invoice(&invoice, None, None);
        assert!(
            matches!(r, Err(LightningError::Policy(PolicyError::PaymentRefused(_)))),
            "{name}: rule {i}: {r:?}"
        );
        assert_eq!(audited(true), i + 1, "{name}: every refusal is in the audit chain");
    }
    policy.set_rules(&SpendPolicy::default()).expect("rules");
    let hash = PaymentId(invoice.payment_hash().to_byte_array());
    assert!(payer.node.node().payment(&hash).is_none(), "{name}: nothing was sent");
    assert_eq!(policy.spent_last_24h().expect("window"), spent_before, "{name}");
    assert_eq!(audited(false), 0, "{name}");
}

#[test]
fn two_nodes_open_pay_and_restart_on_every_backend() {
    let Some(chain) = Bitcoind::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let a = LnParty::new("alice", &chain, tempfile::tempdir().expect("dir"), sqlite(&dir));
    // The seed left the HSM once, audited, for node 0 of the root.
    let seeds: Vec<_> = a
        .hsm
        .audit_records(0, 1000)
        .expect("audit")
        .into_iter()
        .filter(|r| r.operation == Operation::DeriveNodeSeed)
        .collect();
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].outcome, 0);
    assert_eq!(seeds[0].key_id.as_ref(), Some(&a.root));

    // One Bob per backend, each with a channel from Alice.
    let backends = common::backends("ln_node");
    let mut bobs: Vec<LnParty> = backends
        .iter()
        .map(|backend| {
            LnParty::new(
                backend.name,
                &chain,
                tempfile::tempdir().expect("dir"),
                Arc::clone(&backend.store),
            )
        })
        .collect();
    open_channels(&chain, &a, &bobs.iter().collect::<Vec<_>>());
    for b in &bobs {
        let name = b.name;
        pay(&a, b, 25_000_000);
        let stored = b
            .node
            .store()
            .store()
            .scan(b.node.store().namespace(), anya_storage::Scan::all());
        assert!(
            stored.expect("scan").iter().any(|e| e.key.starts_with(b"monitors/")),
            "{name}: the channel monitor is in anya's store"
        );
    }

    // Moved to a fresh working directory, its keystore opened again from the store (and on
    // PostgreSQL a new connection to the same database): the same node, the same channel,
    // still paying.
    for (b, backend) in bobs.iter_mut().zip(&backends) {
        let (name, id) = (b.name, b.node.node_id());
        b.restart(backend.connect_again());
        assert_eq!(b.node.node_id(), id, "{name}");
    }
    for b in &bobs {
        let (name, b_id) = (b.name, b.node.node_id());
        // Alice would reconnect by herself within a minute; a user who knows asks at once.
        a.node
            .node()
            .connect(b_id, b.address().into(), true)
            .expect("reconnect");
        b.wait_until("usable after the restart", |n| n.channels().iter().any(|c| c.is_usable));
        a.wait_until("reconnected", |n| {
            n.channels()
                .iter()
                .any(|c| c.counterparty_node_id == b_id && c.is_usable)
        });
        pay(&a, b, 15_000_000);
        keysend(&a, b, 5_000_000);
        refused_by_policy(name, &a, b);
        let channel = b
            .node
            .channels()
            .into_iter()
            .find(|c| c.counterparty_node_id == a.node.node_id())
            .expect("the channel");
        assert_eq!(channel.channel_value_sats, CHANNEL_SATS, "{name}");
        // Every payment is B's: the opener pays the commitment and anchor fees, and a direct
        // channel routes no fee.
        assert_eq!(
            b.node.node().list_balances().total_lightning_balance_sats,
            45_000,
            "{name}"
        );
    }
    for b in &bobs {
        b.node.stop().expect("stop");
    }
    a.node.stop().expect("stop");
    drop(bobs);
    drop(backends);
}
