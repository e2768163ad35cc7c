//! Three Lightning nodes on a real regtest bitcoind (`BITCOIND_EXE`, required in CI), each on
//! its own software HSM and SQLite store: A–B and B–C channels funded from the openers'
//! on-chain wallets; BOLT11, BOLT12 and keysend payments from A to C routed through B, and
//! one that A's spending policy refuses; a cooperative close of A–B
//! and a force close of B–C whose delayed output B sweeps after the CSV delay. Every balance
//! is checked to the satoshi, with routing and on-chain fees taken from the events and from
//! Bitcoin Core's blocks.

mod common;
#[path = "common/ln.rs"]
mod ln;

use anya_bitcoin::policy::{PolicyError, SpendPolicy, Violation};
use anya_layer2::lightning::ldk_node::lightning::ln::channelmanager::PaymentId;
use anya_layer2::lightning::ldk_node::lightning::routing::gossip::NodeId;
use anya_layer2::lightning::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use anya_layer2::lightning::ldk_node::{ChannelDetails, Event, LightningBalance, PendingSweepBalance};
use anya_layer2::lightning::LightningError;
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::Bitcoind;
use bitcoin::Txid;
use ln::LnParty;
use serde_json::Value;
use std::sync::Arc;

const CHANNEL_SATS: u64 = 1_000_000;
/// Under the 10 % of the channel that a peer lets be in flight at once (LDK's default); whole
/// satoshis, so that balances in satoshis add up exactly.
const PAYMENT_MSAT: u64 = 50_000_000;
const OFFER_MSAT: u64 = 30_000_000;
const KEYSEND_MSAT: u64 = 20_000_000;

/// Waits until payment `id` of `msat` from `a` to `c` through `b` succeeded for `a`, was
/// forwarded by `b` for the fee `a` paid, and reached `c`; returns the fee, in msat.
fn routed(a: &LnParty, b: &LnParty, c: &LnParty, id: PaymentId, msat: u64) -> u64 {
    // Its failure ends the wait at once, with LDK's reason.
    let fee_paid_msat = match a.wait_event("PaymentSuccessful", |e| {
        matches!(
            e,
            Event::PaymentSuccessful { payment_id: Some(p), .. }
                | Event::PaymentFailed { payment_id: Some(p), .. } if *p == id
        )
    }) {
        Event::PaymentSuccessful { fee_paid_msat, .. } => fee_paid_msat,
        failed => panic!("{}: payment {id} failed: {failed:?}", a.name),
    };
    let fee = fee_paid_msat.expect("the fee is known");
    let Event::PaymentForwarded {
        total_fee_earned_msat, ..
    } = b.wait_event("PaymentForwarded", |e| matches!(e, Event::PaymentForwarded { .. }))
    else {
        unreachable!("matched above")
    };
    assert_eq!(total_fee_earned_msat, Some(fee), "what A paid is what B earned");
    assert_eq!(
        fee % 1000,
        0,
        "B's fee is whole satoshis (1 sat base, no proportional part)"
    );
    c.wait_event(
        "PaymentReceived",
        |e| matches!(e, Event::PaymentReceived { amount_msat, .. } if *amount_msat == msat),
    );
    fee
}

fn party(name: &'static str, chain: &Bitcoind) -> LnParty {
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.path().join("node.db"), SqliteOptions::default()).expect("sqlite"));
    LnParty::new(name, chain, dir, store)
}

/// `p`'s channel with `peer`.
fn channel_with(p: &LnParty, peer: &LnParty) -> ChannelDetails {
    p.node
        .channels()
        .into_iter()
        .find(|ch| ch.counterparty_node_id == peer.node.node_id())
        .unwrap_or_else(|| panic!("{} has no channel with {}", p.name, peer.name))
}

fn onchain(p: &LnParty) -> u64 {
    p.node.node().list_balances().total_onchain_balance_sats
}

fn lightning(p: &LnParty) -> u64 {
    p.node.node().list_balances().total_lightning_balance_sats
}

/// Every transaction of the blocks above `from` that spends an output of `txid`, with its
/// fee (getblock verbosity 2 gives each transaction's fee).
fn spenders_of(chain: &Bitcoind, txid: &Txid, from: u32) -> Vec<Value> {
    let mut out = Vec::new();
    for height in from + 1..=chain.height() {
        let hash: String = chain.rpc("getblockhash", &[height.into()]);
        let block: Value = chain.rpc("getblock", &[hash.into(), 2.into()]);
        for tx in block["tx"].as_array().expect("txs") {
            let spends = tx["vin"]
                .as_array()
                .expect("vin")
                .iter()
                .any(|i| i["txid"].as_str() == Some(&txid.to_string()));
            if spends {
                out.push(tx.clone());
            }
        }
    }
    out
}

#[test]
fn three_nodes_route_close_and_force_close_to_the_satoshi() {
    let Some(chain) = Bitcoind::start() else {
        return;
    };
    let (a, b, c) = (party("alice", &chain), party("bob", &chain), party("carol", &chain));
    let all = [&a, &b, &c];
    for funded in [&a, &b] {
        let address = funded.node.node().onchain_payment().new_address().expect("address");
        chain.mine(1, &address);
    }
    LnParty::mine_and_sync(&chain, 100, &all);
    for (opener, peer) in [(&a, &b), (&b, &c)] {
        opener.wait_until("funded", |n| {
            n.node().list_balances().spendable_onchain_balance_sats > CHANNEL_SATS
        });
        opener
            .node
            .node()
            .open_announced_channel(peer.node.node_id(), peer.address().into(), CHANNEL_SATS, None, None)
            .expect("open");
        opener.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
        peer.wait_event("ChannelPending", |e| matches!(e, Event::ChannelPending { .. }));
        opener.wait_funding_broadcast(&chain);
    }
    LnParty::mine_and_sync(&chain, 6, &all);
    for p in all {
        p.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    }
    b.wait_event("ChannelReady", |e| matches!(e, Event::ChannelReady { .. }));
    b.wait_until("both channels usable", |n| {
        n.channels().iter().filter(|c| c.is_usable).count() == 2
    });
    a.wait_until("usable", |n| n.channels().iter().any(|c| c.is_usable));
    // C's invoice hints the route over the unannounced B–C channel only once C knows B's fees
    // for it (B's channel_update).
    c.wait_until("told B's fees", |n| {
        n.channels()
            .iter()
            .any(|c| c.is_usable && c.counterparty_forwarding_info_fee_base_msat.is_some())
    });

    // A pays C through B, three ways; B earns a routing fee on each. `to_c` is what C
    // received, `fees` what A paid B, both in msat.
    let (a0, b0) = (lightning(&a), lightning(&b));
    assert_eq!(lightning(&c), 0);
    let (mut to_c, mut fees) = (0u64, 0u64);

    // BOLT11: C's invoice carries a route hint over B–C (fewer than 7 confirmations: not yet
    // in anyone's graph).
    let description = Bolt11InvoiceDescription::Direct(Description::new("routed".into()).expect("description"));
    let invoice = c
        .node
        .node()
        .bolt11_payment()
        .receive(PAYMENT_MSAT, &description, 3600)
        .expect("invoice");
    let id = a.node.pay_invoice(&invoice, None, None).expect("pay");
    fees += routed(&a, &b, &c, id, PAYMENT_MSAT);
    to_c += PAYMENT_MSAT;

    // The rest needs the graphs to hold B–C and the node announcements (their onion message
    // support), gossiped once the channels had 6 confirmations: A routes the invoice request
    // and the payment to C through B, and C builds the offer's paths and the reply through B.
    // C's blinded payment path starts at C (LDK introduces it at a peer only if that peer has
    // three channels or more), and keysend has no path at all: A routes over B–C from its
    // graph, with B's update of it.
    for (p, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        for other in others {
            let id = NodeId::from_pubkey(&other.node.node_id());
            p.wait_until(&format!("told of {}", other.name), |n| {
                n.node()
                    .network_graph()
                    .node(&id)
                    .is_some_and(|info| info.announcement_info.is_some())
            });
        }
    }
    a.wait_channel_update(&b, &c);

    // BOLT12: A asks C's offer for an invoice over onion messages and pays it.
    let offer = c
        .node
        .node()
        .bolt12_payment()
        .receive(OFFER_MSAT, "routed offer", None, None)
        .expect("offer");
    let offer = anya_layer2::lightning::parse_offer(&offer.to_string()).expect("the offer reads back");
    let id = a
        .node
        .pay_offer(&offer, None, None, Some("from A".into()), None)
        .expect("pay the offer");
    fees += routed(&a, &b, &c, id, OFFER_MSAT);
    to_c += OFFER_MSAT;

    // Keysend: no invoice, so A routes from its own graph.
    let id = a
        .node
        .pay_keysend(c.node.node_id(), KEYSEND_MSAT, None)
        .expect("keysend");
    fees += routed(&a, &b, &c, id, KEYSEND_MSAT);
    to_c += KEYSEND_MSAT;

    // Refused by A's policy (C is not on the node allowlist): nothing leaves A.
    let before = a.node.node().list_payments().len();
    a.node
        .policy()
        .set_rules(&SpendPolicy {
            node_allowlist: Some(vec![b.node.node_id()]),
            ..SpendPolicy::default()
        })
        .expect("rules");
    let invoice = c
        .node
        .node()
        .bolt11_payment()
        .receive(PAYMENT_MSAT, &description, 3600)
        .expect("invoice");
    match a.node.pay_invoice(&invoice, None, None) {
        Err(LightningError::Policy(PolicyError::PaymentRefused(refusal))) => assert_eq!(
            refusal.violations,
            vec![Violation::NodeNotAllowed {
                node_id: c.node.node_id()
            }]
        ),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    assert_eq!(a.node.node().list_payments().len(), before, "nothing was sent");
    a.node.policy().set_rules(&SpendPolicy::default()).expect("rules");

    // A payment's success reaches the payer with the preimage, before the HTLC leaves the
    // commitments: balances are read once no channel holds one.
    for p in all {
        p.wait_until("no HTLC left", |n| {
            n.node().list_balances().lightning_balances.iter().all(|b| {
                matches!(
                    b,
                    LightningBalance::ClaimableOnChannelClose {
                        outbound_payment_htlc_rounded_msat: 0,
                        outbound_forwarded_htlc_rounded_msat: 0,
                        inbound_claiming_htlc_rounded_msat: 0,
                        inbound_htlc_rounded_msat: 0,
                        ..
                    }
                )
            })
        });
    }
    assert_eq!(lightning(&c), to_c / 1000, "C holds what it was paid");
    assert_eq!(
        a0 - lightning(&a),
        (to_c + fees) / 1000,
        "A paid the amounts and the fees"
    );
    assert_eq!(lightning(&b) - b0, fees / 1000, "B kept the fees");

    // Cooperative close of A–B: each side's channel balance reaches its wallet; A, the
    // opener, pays the closing fee.
    let ab = channel_with(&a, &b);
    let (a_chain0, b_chain0) = (onchain(&a), onchain(&b));
    a.node
        .node()
        .close_channel(&ab.user_channel_id, b.node.node_id())
        .expect("close");
    let closing = ln::mempool_spender(&chain, ab.funding_txo.expect("funded"));
    let outputs = ln::output_sats(&closing);
    let closing_fee = CHANNEL_SATS - outputs.iter().sum::<u64>();
    LnParty::mine_and_sync(&chain, 1, &all);
    a.wait_event("ChannelClosed", |e| matches!(e, Event::ChannelClosed { .. }));
    b.wait_event("ChannelClosed", |e| matches!(e, Event::ChannelClosed { .. }));
    let b_gain = {
        let deadline = std::time::Instant::now() + ln::WAIT;
        loop {
            b.node.node().sync_wallets().expect("sync");
            let gain = onchain(&b) - b_chain0;
            if gain > 0 || std::time::Instant::now() > deadline {
                break gain;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    a.node.node().sync_wallets().expect("sync");
    let a_gain = onchain(&a) - a_chain0;
    assert_eq!(outputs.len(), 2, "{closing}");
    assert_eq!(
        a_gain + b_gain + closing_fee,
        CHANNEL_SATS,
        "every satoshi of the channel accounted"
    );
    assert_eq!(b_gain, (to_c + fees) / 1000, "B's side: what it forwarded and earned");
    assert!(outputs.contains(&a_gain) && outputs.contains(&b_gain), "{outputs:?}");

    // Force close of B–C by B: C's output is C's after one confirmation; B's own output waits
    // out the CSV delay, then B's sweeper takes it, less the sweep's fee.
    let bc = channel_with(&b, &c);
    let (b_chain1, c_chain1) = (onchain(&b), onchain(&c));
    let height = chain.height();
    b.node
        .node()
        .force_close_channel(&bc.user_channel_id, c.node.node_id(), None)
        .expect("force close");
    let commitment = ln::mempool_spender(&chain, bc.funding_txo.expect("funded"));
    let commitment_txid: Txid = commitment["txid"].as_str().expect("txid").parse().expect("txid");
    LnParty::mine_and_sync(&chain, 1, &all);
    b.wait_event("ChannelClosed", |e| matches!(e, Event::ChannelClosed { .. }));
    c.wait_event("ChannelClosed", |e| matches!(e, Event::ChannelClosed { .. }));
    // Past the delay (144 blocks by default), in steps so that the sweepers broadcast.
    for _ in 0..16 {
        LnParty::mine_and_sync(&chain, 10, &all);
    }
    let settled = |p: &LnParty, before: u64| -> u64 {
        let deadline = std::time::Instant::now() + ln::WAIT;
        loop {
            LnParty::mine_and_sync(&chain, 1, &all);
            let balances = p.node.node().list_balances();
            // A confirmed sweep stays listed as awaiting confirmations until LDK prunes it,
            // 4,038 blocks later; nothing else may be left.
            let swept = balances.lightning_balances.is_empty()
                && balances
                    .pending_balances_from_channel_closures
                    .iter()
                    .all(|b| matches!(b, PendingSweepBalance::AwaitingThresholdConfirmations { .. }));
            let now = onchain(p);
            if swept && now > before {
                return now - before;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: not swept ({balances:?})",
                p.name
            );
        }
    };
    let b_gain = settled(&b, b_chain1);
    let c_gain = settled(&c, c_chain1);
    let sweeps = spenders_of(&chain, &commitment_txid, height);
    let commitment_outputs = ln::output_sats(&commitment);
    let commitment_fee = CHANNEL_SATS - commitment_outputs.iter().sum::<u64>();
    let sweep_of = |vout: usize| {
        sweeps
            .iter()
            .find(|t| {
                t["vin"].as_array().expect("vin").iter().any(|i| {
                    i["txid"].as_str() == Some(&commitment_txid.to_string()) && i["vout"].as_u64() == Some(vout as u64)
                })
            })
            .unwrap_or_else(|| panic!("output {vout} of the commitment was not swept: {sweeps:?}"))
    };
    // C's output holds exactly what C was paid (B, the opener, paid the commitment's fee).
    let to_remote = commitment_outputs
        .iter()
        .position(|v| *v == to_c / 1000)
        .expect("C's output");
    let c_sweep = sweep_of(to_remote);
    assert_eq!(
        c_gain + ln::sats(&c_sweep["fee"]),
        to_c / 1000,
        "C: its output less its sweep's fee"
    );
    // B's delayed output: the largest; B's wallet gains it less the sweep's fee.
    let to_local = (0..commitment_outputs.len())
        .max_by_key(|i| commitment_outputs[*i])
        .expect("outputs");
    let b_sweep = sweep_of(to_local);
    assert_eq!(
        b_gain + ln::sats(&b_sweep["fee"]),
        commitment_outputs[to_local],
        "B: its delayed output less its sweep's fee"
    );
    // And the whole channel: both sides, the commitment's fee, the sweeps' fees and the two
    // 330-sat anchors nobody needed to spend.
    let anchors: u64 = commitment_outputs.iter().filter(|v| **v == 330).sum();
    assert_eq!(
        b_gain + c_gain + ln::sats(&b_sweep["fee"]) + ln::sats(&c_sweep["fee"]) + commitment_fee + anchors,
        CHANNEL_SATS,
        "every satoshi of the channel accounted"
    );
}
