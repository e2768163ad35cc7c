//! The wallet end to end on real regtest blocks mined in-process: HSM-held keys, state in the
//! store, the spending policy, and Bitcoin Core verifying every transaction signed here (once
//! by `AnyaWallet::finalize`, again when the chain admits it into a block).

use std::sync::Arc;

use anya_bitcoin::policy::{PolicyError, SpendPolicy, Violation};
use anya_bitcoin::regtest::RegtestChain;
use anya_bitcoin::wallet::{account_path, descriptor_key, AnyaWallet, Condition, Template, WalletError};
use anya_hsm::Operation;
use bitcoin::{Amount, Network, Sequence};

mod common;

use common::fixture::{bip86, burn, fixture, label, rate};

#[test]
fn bip86_wallet_receives_spends_and_reloads() {
    let mut f = fixture();
    let mut w = f.wallet("spending", &bip86(0));
    let mut savings = f.wallet(
        "savings",
        &Template::Bip84 {
            root: label("root"),
            account: 0,
        },
    );
    f.fund(&mut [&mut w, &mut savings]);
    assert_eq!(w.balance().confirmed, Amount::from_btc(50.0).expect("amount"));

    let to = savings.next_address().expect("address").script_pubkey();
    assert!(to.is_p2wpkh());
    let tx = w
        .send(&[(to.clone(), Amount::from_sat(100_000_000))], rate(5), 1)
        .expect("sent");
    // The chain admits it only if every script passes Core's interpreter again.
    let burn = burn();
    f.mine(&burn, vec![tx.clone()], &mut [&mut w, &mut savings]);
    assert_eq!(savings.balance().confirmed, Amount::from_sat(100_000_000));
    let fee = Amount::from_btc(50.0).expect("amount") - Amount::from_sat(100_000_000) - w.balance().confirmed;
    let vsize = tx.vsize() as u64;
    assert!(
        (5 * vsize..=6 * vsize).contains(&fee.to_sat()),
        "fee {fee} for {vsize} vB"
    );

    // Everything is in the store: a fresh handle sees the same wallet.
    let before = w.balance();
    let next = w.next_address().expect("address");
    drop(w);
    let mut w = f.reload("spending");
    assert_eq!(w.balance(), before);
    assert_eq!(w.next_address().expect("address").index, next.index + 1);
    let names = AnyaWallet::list(&*f.store).expect("list");
    assert_eq!(names, vec![label("savings"), label("spending")]);

    // The HSM's audit chain holds the policy approval and the signature.
    let summary = f.hsm.verify_audit_chain().expect("chain verifies");
    let records = f.hsm.audit_records(0, summary.records as usize).expect("records");
    let decisions: Vec<_> = records.iter().filter(|r| r.operation == Operation::Decision).collect();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].outcome, 0);
    assert!(records.iter().any(|r| r.operation == Operation::SignTaprootKeySpend));
}

#[test]
fn policy_refusal_names_every_broken_rule_and_signs_nothing() {
    let mut f = fixture();
    let mut w = f.wallet("guarded", &bip86(1));
    f.fund(&mut [&mut w]);
    let allowed = w.next_address().expect("address").script_pubkey();
    w.policy()
        .set_rules(&SpendPolicy {
            max_per_tx: Some(Amount::from_sat(50_000_000)),
            allowlist: Some(vec![allowed]),
            max_fee: Some(Amount::from_sat(1_000)),
            max_fee_rate: Some(rate(10)),
            ..SpendPolicy::default()
        })
        .expect("rules");
    let mut psbt = w
        .build(&[(burn(), Amount::from_sat(100_000_000))], rate(20))
        .expect("built");
    let err = w.sign(&mut psbt).expect_err("refused");
    let WalletError::Policy(PolicyError::Refused(refusal)) = err else {
        panic!("expected a policy refusal, got {err:?}")
    };
    let kinds: Vec<u16> = refusal.violations.iter().map(Violation::code).collect();
    assert_eq!(kinds, vec![1 << 0, 1 << 2, 1 << 3, 1 << 4], "{refusal}");
    assert!(
        psbt.inputs.iter().all(|i| i.tap_key_sig.is_none()),
        "nothing was signed"
    );
    let records = f.hsm.audit_records(0, 10_000).expect("records");
    let last = records.last().expect("records");
    assert_eq!((last.operation, last.outcome), (Operation::Decision, refusal.code()));
    assert!(!records.iter().any(|r| r.operation == Operation::SignTaprootKeySpend));
}

#[test]
fn velocity_limit_survives_restart_and_rolls_off() {
    let mut f = fixture();
    let mut w = f.wallet("velocity", &bip86(2));
    f.fund(&mut [&mut w]);
    w.policy()
        .set_rules(&SpendPolicy {
            max_per_24h: Some(Amount::from_sat(150_000_000)),
            ..SpendPolicy::default()
        })
        .expect("rules");
    w.send(&[(burn(), Amount::from_sat(100_000_000))], rate(2), 1)
        .expect("first spend");
    drop(w);
    let mut w = f.reload("velocity");
    assert!(w.policy().spent_last_24h().expect("history") > Amount::from_sat(100_000_000));
    let err = w
        .send(&[(burn(), Amount::from_sat(100_000_000))], rate(2), 2)
        .expect_err("over the velocity limit");
    assert!(
        matches!(&err, WalletError::Policy(PolicyError::Refused(r))
            if matches!(r.violations[..], [Violation::VelocityOverLimit { .. }])),
        "{err:?}"
    );
    f.clock.advance(24 * 60 * 60);
    w.send(&[(burn(), Amount::from_sat(100_000_000))], rate(2), 3)
        .expect("the window rolled on");
}

#[test]
fn rbf_bump_and_cpfp_child_verify_and_mine() {
    let mut f = fixture();
    let mut w = f.wallet(
        "fees",
        &Template::Bip84 {
            root: label("root"),
            account: 3,
        },
    );
    f.fund(&mut [&mut w]);
    let original = w
        .send(&[(burn(), Amount::from_sat(20_000_000))], rate(1), 10)
        .expect("sent");
    let mut bump = w.bump_fee(original.compute_txid(), rate(8)).expect("bump built");
    w.sign(&mut bump).expect("signed");
    let replacement = w.finalize(&mut bump).expect("verified");
    assert_eq!(
        replacement.input.iter().map(|i| i.previous_output).collect::<Vec<_>>(),
        original.input.iter().map(|i| i.previous_output).collect::<Vec<_>>()
    );
    assert!(replacement.input.iter().all(|i| i.sequence.is_rbf()));
    w.apply_unconfirmed(vec![replacement.clone()], 11).expect("applied");

    // CPFP: a child of the replacement brings the package to 20 sat/vB.
    let mut child = w.cpfp(replacement.compute_txid(), rate(20)).expect("child built");
    w.sign(&mut child).expect("signed");
    let child = w.finalize(&mut child).expect("verified");
    let parent_fee = w.bdk().calculate_fee(&replacement).expect("fee");
    let child_fee = w.bdk().calculate_fee(&child).unwrap_or_else(|_| {
        let input: Amount = replacement
            .output
            .iter()
            .enumerate()
            .filter(|(vout, _)| child.input.iter().any(|i| i.previous_output.vout == *vout as u32))
            .map(|(_, o)| o.value)
            .sum();
        input - child.output.iter().map(|o| o.value).sum::<Amount>()
    });
    let package_vsize = (replacement.vsize() + child.vsize()) as u64;
    let package_rate = (parent_fee + child_fee).to_sat() as f64 / package_vsize as f64;
    assert!((19.5..22.0).contains(&package_rate), "package fee rate {package_rate}");
    let burn = burn();
    f.mine(&burn, vec![replacement, child], &mut [&mut w]);
}

#[test]
fn multisig_and_taproot_script_path_sign_through_the_hsm() {
    let mut f = fixture();
    for name in ["cosigner-b", "cosigner-c"] {
        anya_hsm::conformance::generate_test_root(&*f.hsm, &label(name));
    }
    let key = |root: &str, purpose: u32| {
        descriptor_key(
            &*f.hsm,
            &label(root),
            &account_path(purpose, Network::Regtest, 0).expect("path"),
            Network::Regtest,
        )
        .expect("key")
    };
    let (a, b, c) = (key("root", 48), key("cosigner-b", 48), key("cosigner-c", 48));
    let signers = vec![label("root"), label("cosigner-b")];
    let wsh = Template::Descriptors {
        external: format!("wsh(sortedmulti(2,{a}/0/*,{b}/0/*,{c}/0/*))"),
        internal: format!("wsh(sortedmulti(2,{a}/1/*,{b}/1/*,{c}/1/*))"),
        signers: signers.clone(),
    };
    // Taproot: the internal key is a cosigner we do not hold (c), so spends go by script path
    // through a 2-of-3 multi_a leaf, or a timelocked single-key leaf.
    let (ta, tb, tc) = (key("root", 87), key("cosigner-b", 87), key("cosigner-c", 87));
    let tr = Template::Descriptors {
        external: format!("tr({tc}/0/*,{{multi_a(2,{ta}/0/*,{tb}/0/*),and_v(v:pk({ta}/2/*),older(144))}})"),
        internal: format!("tr({tc}/1/*,{{multi_a(2,{ta}/1/*,{tb}/1/*),and_v(v:pk({ta}/3/*),older(144))}})"),
        signers,
    };
    let burn = burn();
    // wsh: one path. tr: the 2-of-3 leaf (no timelock), then the timelocked leaf once the coin
    // is 144 blocks deep (the chain enforces BIP68 on it).
    let no_timelock = Condition::default();
    let csv_144 = Condition {
        csv: Some(Sequence(144)),
        ..Condition::default()
    };
    for (name, template, condition) in [
        ("multisig-wsh", wsh, None),
        ("multisig-tr", tr.clone(), Some(no_timelock)),
        ("timelock-tr", tr, Some(csv_144)),
    ] {
        let mut w = f.wallet(name, &template);
        f.chain = RegtestChain::new();
        f.fund(&mut [&mut w]);
        let mut psbt = w
            .build_with(&[(burn.clone(), Amount::from_sat(10_000_000))], rate(3), condition)
            .expect("built");
        if csv_144 == condition.unwrap_or_default() {
            // Too early: the chain refuses the spend until the coin is 144 blocks old.
            let mut early = psbt.clone();
            w.sign(&mut early).expect("signed");
            let tx = w.finalize(&mut early).expect("scripts verify (BIP68 is a chain rule)");
            assert!(matches!(
                f.chain.mine(&burn, vec![tx]),
                Err(anya_bitcoin::regtest::RegtestError::NotFinal { .. })
            ));
            for _ in 0..44 {
                f.mine(&burn, Vec::new(), &mut [&mut w]);
            }
        }
        let report = w.sign(&mut psbt).expect("signed");
        assert!(report.taproot_script + report.ecdsa >= 2, "{name}: {report:?}");
        assert_eq!(report.taproot_key, 0, "the internal key is not ours");
        let tx = w.finalize(&mut psbt).expect("finalized and verified by Core");
        f.mine(&burn, vec![tx], &mut [&mut w]);
    }
}

#[test]
fn descriptors_with_private_keys_are_refused() {
    let f = fixture();
    // BIP32 test vector 1's master xprv: a wallet must never hold it.
    let xprv = "tprv8ZgxMBicQKsPeDgjzdC36fs6bMjGApWDNLR9erAXMs5skhMv36j9MV5ecvfavji5khqjWaWSFhN3YcCUUdiKH6isR4Pwy3U5y5egddBr16m";
    let template = Template::Descriptors {
        external: format!("tr({xprv}/86h/1h/0h/0/*)"),
        internal: format!("tr({xprv}/86h/1h/0h/1/*)"),
        signers: vec![label("root")],
    };
    let err = AnyaWallet::create(
        Arc::clone(&f.store),
        Arc::clone(&f.hsm),
        f.clock.clone(),
        label("leaky"),
        &template,
        Network::Regtest,
    )
    .expect_err("refused");
    assert!(
        matches!(&err, WalletError::Descriptor(e) if e.to_string().contains("private keys")),
        "{err:?}"
    );
    assert!(
        AnyaWallet::list(&*f.store).expect("list").is_empty(),
        "nothing was stored"
    );
}

#[test]
fn absolute_timelock_branch_waits_for_its_height() {
    let mut f = fixture();
    let key = descriptor_key(
        &*f.hsm,
        &label("root"),
        &account_path(84, Network::Regtest, 9).expect("path"),
        Network::Regtest,
    )
    .expect("key");
    let template = Template::Descriptors {
        external: format!("wsh(and_v(v:pk({key}/0/*),after(130)))"),
        internal: format!("wsh(and_v(v:pk({key}/1/*),after(130)))"),
        signers: vec![label("root")],
    };
    let mut w = f.wallet("after", &template);
    f.fund(&mut [&mut w]);
    let burn = burn();
    let mut psbt = w
        .build(&[(burn.clone(), Amount::from_sat(5_000_000))], rate(2))
        .expect("built");
    assert_eq!(
        psbt.unsigned_tx.lock_time.to_consensus_u32(),
        130,
        "the branch's height"
    );
    w.sign(&mut psbt).expect("signed");
    let tx = w
        .finalize(&mut psbt)
        .expect("scripts verify (the locktime is a chain rule)");
    assert!(matches!(
        f.chain.mine(&burn, vec![tx.clone()]),
        Err(anya_bitcoin::regtest::RegtestError::NotFinal { .. })
    ));
    while f.chain.height() < 130 {
        f.mine(&burn, Vec::new(), &mut [&mut w]);
    }
    f.mine(&burn, vec![tx], &mut [&mut w]);
    assert!(w.balance().confirmed < Amount::from_btc(50.0).expect("amount"));
}
