//! Whole contract lifecycles between two parties on a real regtest `bitcoind`
//! (`anya_testkit::Bitcoind`, from `BITCOIND_EXE`; `.ci/run` provides it). Each party has its
//! own store, software HSM, anya wallet and contract manager; the oracle is an anya oracle on
//! a third keystore (the fixture is `common/dlc.rs`). Every balance is checked to the satoshi
//! against the transactions that the chain confirmed.

mod common;
#[path = "common/dlc.rs"]
mod dlc;

use anya_hsm::Operation;
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, Transaction};
use ddk_manager::contract::Contract;
use ddk_manager::ContractId;
use dlc::{btc, coin_event, net, open, parties, spent_outputs, Net, Party};

/// What `tx` pays `party`'s wallet.
fn pays(party: &Party, tx: &Transaction) -> Amount {
    let w = party.wallet.lock().unwrap();
    tx.output
        .iter()
        .filter(|o| w.is_mine(&o.script_pubkey))
        .map(|o| o.value)
        .sum()
}

/// After `fund` and `close` confirmed: each party's balance is its start, minus what it put
/// into the funding transaction, plus `payout`; `close` pays it exactly `payout`; and what it
/// put in is its collateral plus at most its share of the fees at 2 sat/vB.
fn assert_settled(net: &Net, fund: &Transaction, close: &Transaction, sides: &[(&Party, Amount, Amount)]) {
    let fund_spent = spent_outputs(&net.chain, fund);
    for (party, collateral, payout) in sides {
        party.sync(&net.chain);
        assert_eq!(pays(party, close), *payout, "{} is paid its payout", party.name);
        let put_in = party.net_out(fund, &fund_spent);
        let put_in = u64::try_from(put_in).expect("each side puts money in");
        assert!(
            put_in > collateral.to_sat() && put_in < collateral.to_sat() + 2_000,
            "{} put in {put_in} sat for a collateral of {collateral}",
            party.name
        );
        assert_eq!(
            party.balance(),
            btc(50.0) - Amount::from_sat(put_in) + *payout,
            "{}'s balance to the satoshi",
            party.name
        );
        // The funding coins are spent: no reservation is left once the wallet selects again.
        let _ = party.wallet.lock().unwrap().select_coins(Amount::from_sat(1), false);
    }
    assert_eq!(
        net.chain
            .confirmations(&close.compute_txid())
            .expect("rpc")
            .map(|c| c >= 3),
        Some(true)
    );
}

/// The funding transaction of a signed contract.
async fn funding(party: &Party, id: &ContractId) -> Transaction {
    match party.contract(id).await {
        Contract::Signed(c) | Contract::Confirmed(c) | Contract::Refunded(c) => {
            c.accepted_contract.dlc_transactions.fund
        }
        Contract::PreClosed(c) => c.signed_contract.accepted_contract.dlc_transactions.fund,
        Contract::Closed(c) => c.signed_contract.accepted_contract.dlc_transactions.fund,
        other => panic!("{} has no funding transaction in state {other:?}", party.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_contract_closes_by_cet_with_the_payouts_to_the_satoshi() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "coin", maturity);
    let id = open(&alice, &bob, &input).await;

    assert!(matches!(alice.contract(&id).await, Contract::Signed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Signed(_)));
    let fund = funding(&alice, &id).await;
    assert_eq!(fund, funding(&bob, &id).await);
    // The funding coins are reserved in the store until they are spent.
    let reserved = alice.wallet.lock().unwrap().reserved().expect("reserved");
    assert!(!reserved.is_empty());
    assert!(reserved
        .iter()
        .all(|o| fund.input.iter().any(|i| i.previous_output == *o)));

    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Confirmed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Confirmed(_)));

    net.advance_to(u64::from(maturity) + 60);
    net.oracle_fixture
        .oracle
        .attest_enum("coin", "tails")
        .expect("attested");
    alice.tick().await;
    let Contract::PreClosed(pre) = alice.contract(&id).await else {
        panic!("alice broadcast the CET")
    };
    let cet = pre.signed_cet.clone();
    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Closed(_)));
    assert!(matches!(bob.contract(&id).await, Contract::Closed(_)));

    assert_settled(
        &net,
        &fund,
        &cet,
        &[(&alice, btc(1.0), btc(0.3)), (&bob, btc(1.0), btc(1.7))],
    );

    // The funding was approved by each wallet's spending policy, and each contract key that
    // left the HSM left through the audited DLC export.
    for party in [&alice, &bob] {
        let records = party.hsm.audit_records(0, 10_000).expect("audit");
        let fund_subject = fund.compute_txid().to_byte_array();
        assert!(records
            .iter()
            .any(|r| r.operation == Operation::Decision && r.input_hash == Some(fund_subject) && r.outcome == 0));
        let exports = records
            .iter()
            .filter(|r| r.operation == Operation::ExportScopedChild)
            .count();
        assert!(
            exports >= 1,
            "{} exported its contract key through the audited scope",
            party.name
        );
        assert!(records.iter().all(|r| r.operation != Operation::ExportKey));
        party.hsm.verify_audit_chain().expect("chain verifies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattested_contract_is_refunded_after_its_refund_locktime() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "never", maturity);
    let id = open(&alice, &bob, &input).await;
    let fund = funding(&alice, &id).await;
    net.mine(3);
    alice.tick().await;
    bob.tick().await;
    let Contract::Confirmed(c) = alice.contract(&id).await else {
        panic!("confirmed")
    };
    let refund_locktime = u64::from(c.accepted_contract.dlc_transactions.refund.lock_time.to_consensus_u32());
    assert_eq!(
        refund_locktime,
        u64::from(maturity) + u64::from(ddk_manager::manager::REFUND_DELAY)
    );

    // Past maturity but before the refund locktime, with no attestation: nothing happens.
    net.advance_to(u64::from(maturity) + 3600);
    alice.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Confirmed(_)));

    net.advance_to(refund_locktime + 60);
    alice.tick().await;
    let Contract::Refunded(r) = alice.contract(&id).await else {
        panic!("alice broadcast the refund")
    };
    let refund = r.accepted_contract.dlc_transactions.refund.clone();
    net.mine(3);
    bob.tick().await;
    assert!(
        !matches!(bob.contract(&id).await, Contract::Confirmed(_)),
        "bob saw the refund"
    );
    // The refund transaction as the chain has it (signed), paying each side its collateral.
    let refund = net
        .chain
        .transaction(&refund.compute_txid())
        .expect("rpc")
        .expect("on chain");
    assert_settled(
        &net,
        &fund,
        &refund,
        &[(&alice, btc(1.0), btc(1.0)), (&bob, btc(1.0), btc(1.0))],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_offline_after_signing_finds_its_payout_when_it_returns() {
    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let maturity = net.now() as u32 + 600;
    let input = coin_event(&net, "away", maturity);
    let id = open(&alice, &bob, &input).await;
    let fund = funding(&bob, &id).await;

    // Alice's process stops once the contract is signed; Bob carries on alone.
    let alice_dir_kept = alice;
    net.mine(3);
    bob.tick().await;
    net.advance_to(u64::from(maturity) + 60);
    net.oracle_fixture
        .oracle
        .attest_enum("away", "heads")
        .expect("attested");
    bob.tick().await;
    let Contract::PreClosed(pre) = bob.contract(&id).await else {
        panic!("bob broadcast the CET")
    };
    let cet = pre.signed_cet.clone();
    net.mine(3);
    bob.tick().await;
    assert!(matches!(bob.contract(&id).await, Contract::Closed(_)));

    // Alice comes back on the same store: her manager finds the contract and the CET.
    let alice = alice_dir_kept.restart(&net).await;
    alice.tick().await;
    assert!(
        matches!(alice.contract(&id).await, Contract::Closed(_) | Contract::PreClosed(_)),
        "alice's manager saw the CET"
    );
    alice.tick().await;
    assert!(matches!(alice.contract(&id).await, Contract::Closed(_)));
    assert_settled(
        &net,
        &fund,
        &cet,
        &[(&alice, btc(1.0), btc(1.6)), (&bob, btc(1.0), btc(0.4))],
    );
}

/// An oracle whose attestations come after the others' (as a remote oracle's may).
struct Late(anya_layer2::dlc::contracts::LocalOracle);

#[async_trait::async_trait]
impl ddk_manager::Oracle for Late {
    fn get_public_key(&self) -> secp256k1::XOnlyPublicKey {
        self.0.get_public_key()
    }

    async fn get_announcement(
        &self,
        event_id: &str,
    ) -> Result<anya_layer2::dlc::messages::OracleAnnouncement, ddk_manager::error::Error> {
        self.0.get_announcement(event_id).await
    }

    async fn get_attestation(
        &self,
        event_id: &str,
    ) -> Result<anya_layer2::dlc::messages::OracleAttestation, ddk_manager::error::Error> {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.0.get_attestation(event_id).await
    }
}

/// A numeric contract on three anya oracles, two of which must attest, with difference
/// parameters, through `DlcService` (the API an application uses): offer, accept, sign, fund,
/// confirm; two oracles attest the same value, the third never does; the contract closes by
/// the CET of that value and pays each side what ddk-manager's payout curve gives for it, to
/// the satoshi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_contract_on_two_of_three_oracles_pays_the_curve() {
    use anya_core_types::Clock;
    use anya_layer2::dlc::contracts::{AnyOracle, DlcParts, DlcService, LocalOracle};
    use anya_layer2::dlc::messages::DigitDecompositionEventDescriptor;
    use bitcoin::Network;
    use ddk_manager::contract::contract_input::{ContractInput, ContractInputInfo, OracleInput};
    use ddk_manager::contract::numerical_descriptor::{DifferenceParams, NumericalDescriptor};
    use ddk_manager::contract::ContractDescriptor;
    use ddk_manager::payout_curve::{
        PayoutFunction, PayoutFunctionPiece, PayoutPoint, PolynomialPayoutCurvePiece, RoundingInterval,
        RoundingIntervals,
    };
    use ddk_trie::OracleNumericInfo;
    use dlc::label;
    use std::sync::Arc;

    let Some(net) = net() else { return };
    let (alice, bob) = parties(&net).await;
    let others = [dlc::OracleSide::new(&net.clock), dlc::OracleSide::new(&net.clock)];
    let oracles = [
        Arc::clone(&net.oracle_fixture.oracle),
        Arc::clone(&others[0].oracle),
        Arc::clone(&others[1].oracle),
    ];
    const DIGITS: u16 = 10;
    let maturity = net.now() as u32 + 600;
    let descriptor = DigitDecompositionEventDescriptor {
        base: 2,
        is_signed: false,
        unit: "sat".to_owned(),
        precision: 0,
        nb_digits: DIGITS,
    };
    for oracle in &oracles {
        oracle
            .create_numeric_event("price", maturity, descriptor.clone())
            .expect("event");
    }
    let total = btc(2.0);
    let max = (1u64 << DIGITS) - 1;
    let numerical = NumericalDescriptor {
        payout_function: PayoutFunction::new(vec![PayoutFunctionPiece::PolynomialPayoutCurvePiece(
            PolynomialPayoutCurvePiece::new(vec![
                PayoutPoint {
                    event_outcome: 0,
                    outcome_payout: Amount::ZERO,
                    extra_precision: 0,
                },
                PayoutPoint {
                    event_outcome: max,
                    outcome_payout: total,
                    extra_precision: 0,
                },
            ])
            .expect("piece"),
        )])
        .expect("payout function"),
        rounding_intervals: RoundingIntervals {
            intervals: vec![RoundingInterval {
                begin_interval: 0,
                rounding_mod: 10_000_000,
            }],
        },
        difference_params: Some(DifferenceParams {
            max_error_exp: 4,
            min_support_exp: 2,
            maximize_coverage: false,
        }),
        oracle_numeric_infos: OracleNumericInfo {
            base: 2,
            nb_digits: vec![usize::from(DIGITS); 3],
        },
    };
    let input = ContractInput {
        offer_collateral: btc(1.0),
        accept_collateral: btc(1.0),
        fee_rate: 2,
        contract_infos: vec![ContractInputInfo {
            contract_descriptor: ContractDescriptor::Numerical(numerical.clone()),
            oracles: OracleInput {
                public_keys: oracles.iter().map(|o| o.public_key()).collect(),
                event_id: "price".to_owned(),
                threshold: 2,
            },
        }],
        contract_flags: 0,
    };

    let service = |party: &Party| {
        DlcService::open(DlcParts {
            store: Arc::clone(&party.store),
            hsm: Arc::clone(&party.hsm),
            root: label("root"),
            wallet: Arc::clone(&party.wallet),
            chain: Arc::clone(&net.chain),
            network: Network::Regtest,
            // The first oracle answers last, as a remote one may: the manager must still
            // take the attestations in the contract's oracle order.
            oracles: oracles
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let local = LocalOracle::new(Arc::clone(o));
                    if i == 0 {
                        Arc::new(Late(local)) as Arc<AnyOracle>
                    } else {
                        Arc::new(local) as Arc<AnyOracle>
                    }
                })
                .collect(),
            clock: Arc::clone(&net.clock) as Arc<dyn Clock>,
        })
    };
    let (a, _) = service(&alice).await.expect("alice's service");
    let (b, _) = service(&bob).await.expect("bob's service");
    let (temp_id, offer) = a.offer(&input, bob.id).await.expect("offer");
    assert!(b.receive(&offer, alice.id).await.expect("offer received").is_none());
    let (id, accept) = b.accept(&temp_id).await.expect("accepted");
    let sign = a
        .receive(&accept, bob.id)
        .await
        .expect("accept received")
        .expect("a sign message");
    assert!(b.receive(&sign, alice.id).await.expect("sign received").is_none());
    let fund = funding(&bob, &id).await;

    net.mine(3);
    for s in [&a, &b] {
        let changed = s.tick().await.expect("tick");
        assert_eq!(changed.iter().map(|c| c.state).collect::<Vec<_>>(), ["confirmed"]);
    }

    // Oracles 0 and 2 attest 700; oracle 1 stays silent.
    net.advance_to(u64::from(maturity) + 60);
    const VALUE: i64 = 700;
    for oracle in [&oracles[0], &oracles[2]] {
        oracle.attest_numeric("price", VALUE).expect("attested");
    }
    // Alice broadcasts the CET in the tick that reads the attestations.
    let changed = a.tick().await.expect("tick");
    assert_eq!(changed.iter().map(|c| c.state).collect::<Vec<_>>(), ["preclosed"]);
    net.mine(3);
    // A few ticks, as the node's loop would run them (the CET is seen by the chain monitor
    // and by the contract check).
    for _ in 0..10 {
        a.tick().await.expect("tick");
        b.tick().await.expect("tick");
        let closed = |c: Contract| matches!(c, Contract::Closed(_));
        if closed(a.contract(&id).await.expect("contract")) && closed(b.contract(&id).await.expect("contract")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let closed = a.contract(&id).await.expect("contract");
    let Contract::Closed(c) = &closed else {
        panic!(
            "alice's contract is closed: {}",
            anya_layer2::dlc::contracts::service::state_name(&closed)
        )
    };
    assert!(matches!(b.contract(&id).await.expect("contract"), Contract::Closed(_)));
    let cet = c.signed_cet.clone().expect("closed by a CET");

    // What the curve pays at 700, as ddk-manager computes it.
    let ranges = numerical.get_range_payouts(total).expect("range payouts");
    let range = ranges
        .iter()
        .find(|r| (r.start..r.start + r.count).contains(&(VALUE as usize)))
        .expect("700 is covered");
    assert_eq!(DlcService::payout(&closed), Some(range.payout.offer));
    assert_settled(
        &net,
        &fund,
        &cet,
        &[
            (&alice, btc(1.0), range.payout.offer),
            (&bob, btc(1.0), range.payout.accept),
        ],
    );
}
