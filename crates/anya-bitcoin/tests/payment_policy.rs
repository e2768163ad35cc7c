//! The spending policy judging Lightning payments (`PolicyEngine::approve_payment`): the
//! per-payment limit, the 24-hour limit shared with on-chain spends, the routing fee cap, the
//! node allowlist, releases of failed payments, and every decision in the HSM audit chain.

mod common;

use anya_bitcoin::policy::{PaymentSummary, PolicyError, SpendPolicy, Violation};
use anya_hsm::Operation;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::Amount;
use common::fixture::{bip84, burn, fixture, label, rate};

fn node(byte: u8) -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[byte; 32]).expect("key"))
}

fn payment(hash: u8, amount_msat: u64, max_fee_msat: u64, to: PublicKey) -> PaymentSummary {
    PaymentSummary {
        payment_hash: [hash; 32],
        amount_msat,
        max_fee_msat,
        destination: to,
    }
}

fn refused(r: Result<(), PolicyError>) -> Vec<Violation> {
    match r {
        Err(PolicyError::PaymentRefused(v)) => {
            assert!(v
                .to_string()
                .contains(&bitcoin::hex::DisplayHex::to_lower_hex_string(&v.payment_hash[..])));
            v.violations
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn payments_share_the_wallets_limits_and_are_audited() {
    let mut f = fixture();
    let mut w = f.wallet("ln", &bip84(0));
    f.fund(&mut [&mut w]);
    let policy = w.policy().clone();
    let (hsm, root) = (&*f.hsm, label("root"));
    let (bob, carol) = (node(1), node(2));
    policy
        .set_rules(&SpendPolicy {
            max_per_tx: Some(Amount::from_sat(10_000)),
            max_per_24h: Some(Amount::from_sat(100_000)),
            max_fee: Some(Amount::from_sat(1_000)),
            node_allowlist: Some(vec![bob]),
            ..SpendPolicy::default()
        })
        .expect("rules");

    // Amount plus fee limit, rounded up to whole satoshis, against the per-payment limit.
    let at_limit = payment(1, 9_000_000, 1_000_000, bob);
    assert_eq!(at_limit.spent(), Amount::from_sat(10_000));
    policy.approve_payment(&at_limit, hsm, &root).expect("at the limit");
    let over = payment(2, 9_000_001, 1_000_000, bob);
    assert_eq!(over.spent(), Amount::from_sat(10_001));
    assert_eq!(
        refused(policy.approve_payment(&over, hsm, &root)),
        vec![Violation::AmountOverLimit {
            amount: Amount::from_sat(10_001),
            limit: Amount::from_sat(10_000)
        }]
    );
    // Every broken rule at once: payee, fee cap.
    let stranger = payment(3, 1_000_000, 2_000_000, carol);
    let violations = refused(policy.approve_payment(&stranger, hsm, &root));
    assert!(
        violations.contains(&Violation::NodeNotAllowed { node_id: carol }),
        "{violations:?}"
    );
    assert!(
        violations.contains(&Violation::FeeOverCap {
            fee: Amount::from_sat(2_000),
            cap: Amount::from_sat(1_000)
        }),
        "{violations:?}"
    );
    // The same payment approved again (a retry) counts once.
    policy.approve_payment(&at_limit, hsm, &root).expect("again");
    assert_eq!(policy.spent_last_24h().expect("window"), Amount::from_sat(10_000));

    // An on-chain spend of the wallet counts in the same window.
    w.policy()
        .set_rules(&SpendPolicy {
            max_per_24h: Some(Amount::from_sat(100_000)),
            max_per_tx: Some(Amount::from_sat(1_000_000)),
            node_allowlist: Some(vec![bob]),
            ..SpendPolicy::default()
        })
        .expect("rules");
    let mut psbt = w.build(&[(burn(), Amount::from_sat(80_000))], rate(2)).expect("psbt");
    w.sign(&mut psbt).expect("signed under the policy");
    let window = policy.spent_last_24h().expect("window");
    assert!(window > Amount::from_sat(90_000), "{window}");
    let fits = Amount::from_sat(100_000) - window;
    let too_much = payment(4, (fits.to_sat() + 1) * 1000, 0, bob);
    let violations = refused(policy.approve_payment(&too_much, hsm, &root));
    assert!(
        matches!(violations[..], [Violation::VelocityOverLimit { .. }]),
        "{violations:?}"
    );
    let just_fits = payment(5, fits.to_sat() * 1000, 0, bob);
    policy.approve_payment(&just_fits, hsm, &root).expect("fits");
    assert_eq!(policy.spent_last_24h().expect("window"), Amount::from_sat(100_000));

    // A failed payment gives its reservation back; a second release finds nothing.
    assert_eq!(policy.release_payment([5; 32]).expect("release"), Some(fits));
    assert_eq!(policy.release_payment([5; 32]).expect("release"), None);
    assert_eq!(policy.spent_last_24h().expect("window"), window);
    // A payment approved under a key of the caller's and moved to the id the node chose (a
    // BOLT12 payment) counts once, under its new key only; moving it onto a key in use, or
    // moving what is not there, changes nothing.
    policy
        .approve_payment(&payment(6, 1_000_000, 0, bob), hsm, &root)
        .expect("fits");
    let before = policy.spent_last_24h().expect("window");
    assert!(policy.rekey_payment([6; 32], [7; 32]).expect("rekey"));
    assert!(!policy
        .rekey_payment([6; 32], [8; 32])
        .expect("nothing under the old key"));
    assert!(!policy.rekey_payment([7; 32], [1; 32]).expect("the new key is taken"));
    assert_eq!(policy.spent_last_24h().expect("window"), before);
    assert_eq!(policy.release_payment([6; 32]).expect("release"), None);
    assert_eq!(
        policy.release_payment([7; 32]).expect("release"),
        Some(Amount::from_sat(1_000))
    );
    assert_eq!(policy.spent_last_24h().expect("window"), window);
    // After 24 hours the payments no longer count.
    f.clock.advance(24 * 60 * 60);
    assert_eq!(policy.spent_last_24h().expect("window"), Amount::ZERO);

    // Every decision is in the chain, with the payment hash as its subject and the broken
    // rules as its outcome.
    let decisions: Vec<_> = hsm
        .audit_records(0, 10_000)
        .expect("audit")
        .into_iter()
        .filter(|r| r.operation == Operation::Decision)
        .filter_map(|r| r.input_hash.map(|h| (h, r.outcome)))
        .collect();
    let outcome_of = |hash: u8| -> Vec<u16> {
        decisions
            .iter()
            .filter(|(h, _)| *h == [hash; 32])
            .map(|(_, o)| *o)
            .collect()
    };
    assert_eq!(outcome_of(1), vec![0, 0]);
    assert_eq!(outcome_of(2), vec![1 << 0]);
    assert_eq!(outcome_of(3), vec![(1 << 4) | (1 << 6)]);
    assert_eq!(outcome_of(4), vec![1 << 1]);
    assert_eq!(outcome_of(5), vec![0]);
    assert_eq!(outcome_of(6), vec![0]);
}

#[test]
fn rules_stored_before_the_node_allowlist_still_read() {
    let f = fixture();
    let w = f.wallet("old-rules", &bip84(0));
    // What `set_rules` wrote before `node_allowlist` existed.
    let old = br#"{"max_per_tx":null,"max_per_24h":5000,"allowlist":null,"max_fee_rate":null,"max_fee":null,"change_to_wallet":true}"#;
    let ns = anya_storage::Namespace::new("anya/wallet/old-rules/policy").expect("ns");
    f.store.put(&ns, b"rules", old).expect("rules");
    let rules = w.policy().rules().expect("readable");
    assert_eq!(rules.max_per_24h, Some(Amount::from_sat(5000)));
    assert_eq!(rules.node_allowlist, None);
}
