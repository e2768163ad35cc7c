//! Policy engines sharing one namespace. Each engine keeps a copy of the history and reads the
//! store's again only when the head record shows another engine wrote to it; these tests hold
//! every engine's answers to those of an engine that has just read the store, and hold
//! concurrent approvals through several engines to the velocity limit.

mod common;

use std::sync::Arc;

use anya_bitcoin::policy::{PaymentSummary, PolicyEngine, PolicyError, SpendPolicy, SpendSummary, Violation};
use anya_storage::Namespace;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Amount, FeeRate, OutPoint, Txid};
use common::fixture::{fixture, label, Fixture};
use proptest::prelude::*;

const LIMIT: u64 = 10_000;

fn engine(f: &Fixture) -> PolicyEngine {
    PolicyEngine::new(
        Arc::clone(&f.store),
        Namespace::new("anya/test/policy").expect("namespace"),
        f.clock.clone(),
    )
}

fn limited(f: &Fixture) -> PolicyEngine {
    let e = engine(f);
    e.set_rules(&SpendPolicy {
        max_per_24h: Some(Amount::from_sat(LIMIT)),
        ..SpendPolicy::default()
    })
    .expect("rules");
    e
}

fn outpoint(n: u8) -> OutPoint {
    OutPoint {
        txid: Txid::from_byte_array([0xf0 | n; 32]),
        vout: u32::from(n),
    }
}

/// A spend `tag` of `sats` (all of it leaving as fee, which no rule here limits) consuming the
/// outpoints numbered in `inputs`.
fn spend(tag: u8, sats: u64, inputs: &[u8]) -> SpendSummary {
    SpendSummary {
        txid: Txid::from_byte_array([tag; 32]),
        input_value: Amount::from_sat(sats),
        outputs: Vec::new(),
        fee: Amount::from_sat(sats),
        fee_rate: FeeRate::from_sat_per_vb_u32(1),
        inputs: inputs.iter().copied().map(outpoint).collect(),
    }
}

fn payment(hash: [u8; 32], sats: u64) -> PaymentSummary {
    PaymentSummary {
        payment_hash: hash,
        amount_msat: sats * 1_000,
        max_fee_msat: 0,
        destination: PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[7; 32]).expect("key")),
    }
}

/// What `e` says about the window and about probes touching each outpoint: everything the
/// history decides.
fn answers(e: &PolicyEngine) -> (Amount, Vec<Vec<Violation>>) {
    let probes = [
        spend(0xee, 1, &[]),
        spend(0xee, 3_000, &[0]),
        spend(0xee, 3_000, &[1, 2]),
        spend(0xee, 1, &[3]),
    ];
    let verdicts = probes.iter().map(|p| e.evaluate(p).expect("evaluate")).collect();
    (e.spent_last_24h().expect("spent"), verdicts)
}

#[test]
fn engines_on_one_namespace_see_each_others_spends() {
    let f = fixture();
    let root = label("root");
    let (a, b) = (limited(&f), engine(&f));
    assert_eq!(
        b.spent_last_24h().expect("spent"),
        Amount::ZERO,
        "b has read the history"
    );

    a.approve(&spend(1, 6_000, &[0]), &*f.hsm, &root)
        .expect("within the limit");
    assert_eq!(b.spent_last_24h().expect("spent"), Amount::from_sat(6_000));
    match b.approve(&spend(2, 5_000, &[1]), &*f.hsm, &root) {
        Err(PolicyError::Refused(r)) => assert!(matches!(r.violations[..], [Violation::VelocityOverLimit { .. }])),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A fee bump through b replaces a's spend; a sees the replacement, then its release.
    b.approve(&spend(3, 7_000, &[0]), &*f.hsm, &root)
        .expect("a replacement");
    assert_eq!(a.spent_last_24h().expect("spent"), Amount::from_sat(7_000));
    assert_eq!(
        a.release(Txid::from_byte_array([3; 32])).expect("release"),
        Some(Amount::from_sat(7_000))
    );
    assert_eq!(
        b.spent_last_24h().expect("spent"),
        Amount::from_sat(6_000),
        "the original counts again"
    );
    // A payment moved to another key through a is found there by b.
    b.approve_payment(&payment([4; 32], 1_000), &*f.hsm, &root)
        .expect("payment");
    assert!(a.rekey_payment([4; 32], [5; 32]).expect("rekey"));
    assert_eq!(b.release_payment([4; 32]).expect("release"), None);
    assert_eq!(
        b.release_payment([5; 32]).expect("release"),
        Some(Amount::from_sat(1_000))
    );
    assert_eq!(answers(&a), answers(&engine(&f)));
    assert_eq!(answers(&b), answers(&engine(&f)));
}

#[test]
fn concurrent_approvals_through_several_engines_stay_under_the_limit() {
    let f = fixture();
    let root = label("root");
    let first = limited(&f);
    // Two engines with their clones: clones share a copy, the engines meet at the store.
    let engines = [first.clone(), first, engine(&f), engine(&f)];
    let approved: usize = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter()
            .enumerate()
            .map(|(t, e)| {
                let (hsm, root) = (&*f.hsm, &root);
                s.spawn(move || {
                    let mut approved = 0;
                    for i in 0..8u8 {
                        let t = u8::try_from(t).expect("few threads");
                        match e.approve_payment(&payment([t * 16 + i; 32], 500), hsm, root) {
                            Ok(()) => approved += 1,
                            Err(PolicyError::PaymentRefused(_)) => {}
                            Err(other) => panic!("approval failed: {other}"),
                        }
                    }
                    approved
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("approver")).sum()
    });
    assert_eq!(approved, 20, "32 payments of 500 sat under a limit of 10,000");
    for e in engines.iter().chain([&engine(&f)]) {
        assert_eq!(e.spent_last_24h().expect("spent"), Amount::from_sat(LIMIT));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Approve {
        by: usize,
        tag: u8,
        sats: u64,
        inputs: Vec<u8>,
    },
    Release {
        by: usize,
        tag: u8,
    },
    Rekey {
        by: usize,
        from: u8,
        to: u8,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let by = 0..3usize;
    let tag = 1..7u8;
    prop_oneof![
        4 => (by.clone(), tag.clone(), 1..4_000u64, proptest::collection::vec(0..4u8, 0..3))
            .prop_map(|(by, tag, sats, inputs)| Op::Approve { by, tag, sats, inputs }),
        2 => (by.clone(), tag.clone()).prop_map(|(by, tag)| Op::Release { by, tag }),
        1 => (by, tag.clone(), tag).prop_map(|(by, from, to)| Op::Rekey { by, from, to }),
        1 => prop_oneof![Just(0u64), Just(3_600), Just(12 * 3_600), Just(25 * 3_600)].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Approvals, replacements, releases, moves and the window's end, through two engines and
    /// a clone of one: after every step each of them answers as an engine reading the store.
    #[test]
    fn every_engine_answers_as_the_store_reads(ops in proptest::collection::vec(op(), 1..24)) {
        let f = fixture();
        let root = label("root");
        let first = limited(&f);
        let engines = [first.clone(), engine(&f), first];
        for op in ops {
            match op {
                Op::Approve { by, tag, sats, inputs } => {
                    match engines[by].approve(&spend(tag, sats, &inputs), &*f.hsm, &root) {
                        Ok(()) | Err(PolicyError::Refused(_)) => {}
                        Err(other) => panic!("approve: {other}"),
                    }
                }
                Op::Release { by, tag } => {
                    engines[by].release(Txid::from_byte_array([tag; 32])).expect("release");
                }
                Op::Rekey { by, from, to } => {
                    engines[by].rekey_payment([from; 32], [to; 32]).expect("rekey");
                }
                Op::Advance(secs) => f.clock.advance(secs),
            }
            let expected = answers(&engine(&f));
            for e in &engines {
                prop_assert_eq!(&answers(e), &expected);
            }
        }
    }
}
