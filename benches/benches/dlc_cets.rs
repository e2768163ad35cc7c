//! CET adaptor signatures of the large numeric contract: anya's `dlc::contracts::cets` beside
//! ddk-dlc's serial functions and ddk-manager's own path, on the same inputs, in the same run.
//!
//! The contract is the large case, which is also ddk-manager 1.1.2's own benchmark:
//! 17 binary digits, 3 anya oracles (software HSMs) of which 2 must agree, difference
//! parameters 2^7 / 2^8, and a payout rising from 45,000 to 55,000. ddk-manager's
//! `NumericalDescriptor` and ddk-dlc build its contract info, CETs and adaptor trie. Each
//! adaptor signature's CET and digit path are read from that trie.
//!
//! - `cets_create`: every adaptor signature from its CET and adaptor point (points given).
//!   `ddk_dlc_serial` is `ddk_dlc::create_cet_adaptor_sigs_from_points`. `anya` is
//!   `CetBatch::new` (one sighash per CET) and `CetBatch::sign` on all cores.
//! - `cets_verify`: the same signatures checked. `ddk_dlc_serial` is
//!   `ddk_dlc::verify_cet_adaptor_sig_from_point` for each one; `anya` is `CetBatch::verify`.
//! - `cets_manager`: from the announcements and the trie, adaptor points included. ddk-manager
//!   computes them in `ContractInfo::get_adaptor_signatures` and `verify_adaptor_info`, serial
//!   or on rayon when built with `--features ddk-parallel`. anya computes them with
//!   `OutcomePoints` and `adaptor_points`, then `CetBatch`.
//! - `cets_parts`: the pieces, per 1,024 signatures on one thread. These are the sighash, the
//!   adaptor point sum, the encryption with and without auxiliary randomness, and one
//!   verification; also the trie's generation and the outcome point table.
//!
//! `ANYA_CETS_PAIRS=n` adds `n` rounds of the four `cets_create` and `cets_verify` runs back to
//! back, each round's ratios printed (see `paired`).
//!
//! Before timing, the setup checks that ddk-manager's own `verify_adaptor_info` accepts
//! anya's signatures. It also checks that anya's `CetBatch::verify` accepts those of
//! ddk-dlc's serial function.
#![allow(
    clippy::print_stderr,
    reason = "the case's counts and the setup checks are reported on stderr"
)]

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use anya_benches::numeric::{accept_secret_key, AnyaOracles, CetCase, NumericParams};
use anya_layer2::dlc::contracts::cets::{CetAdaptorPoint, CetBatch, OutcomePoints};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::Transaction;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ddk_dlc::secp256k1_zkp::EcdsaAdaptorSignature;
use ddk_trie::multi_oracle_trie_with_diff::MultiOracleTrieWithDiff;
use ddk_trie::DlcTrie as _;
use secp256k1::{All, PublicKey, Secp256k1, SecretKey};

/// ddk-manager's path as this build has it.
const DDK_MANAGER: &str = if cfg!(feature = "ddk-parallel") {
    "ddk_manager_rayon"
} else {
    "ddk_manager_serial"
};

/// The signatures timed one by one in `cets_parts`.
const PART: usize = 1024;

struct Fixture {
    case: CetCase,
    secp: Secp256k1<All>,
    sk: SecretKey,
    pk: PublicKey,
    points: Vec<CetAdaptorPoint>,
    sigs: Vec<EcdsaAdaptorSignature>,
    _oracles: AnyaOracles,
}

impl Fixture {
    fn new() -> Self {
        let t = Instant::now();
        let params = NumericParams::LARGE;
        let oracles = AnyaOracles::new(params.nb_oracles);
        let announcements = oracles.announce("cets-large", 1_700_000_000, &params);
        let case = CetCase::new(params, announcements);
        let secp = Secp256k1::new();
        let sk = accept_secret_key();
        let pk = PublicKey::from_secret_key(&secp, &sk);
        let batch = case.batch();
        let points = case
            .outcome_points()
            .adaptor_points(&case.paths, batch.threads())
            .expect("points");
        let sigs = batch.sign(&secp, &points, &sk).expect("signed");
        let checked = case
            .contract_info
            .verify_adaptor_info(
                &secp,
                &pk,
                case.funding_script(),
                case.fund_output_value,
                &case.txs.cets,
                &sigs,
                0,
                &case.adaptor_info,
            )
            .expect("ddk-manager accepts anya's signatures");
        assert_eq!(checked, sigs.len());
        eprintln!(
            "large case: {} digits, {} oracles, threshold {}, {} CETs, {} CET adaptor signatures, {} threads; \
             ddk-manager's verify_adaptor_info accepted anya's ({:.1} s of setup)",
            params.nb_digits,
            params.nb_oracles,
            params.threshold,
            case.txs.cets.len(),
            sigs.len(),
            batch.threads(),
            t.elapsed().as_secs_f64(),
        );
        Self {
            case,
            secp,
            sk,
            pk,
            points,
            sigs,
            _oracles: oracles,
        }
    }

    fn ddk_inputs(&self) -> Vec<(&Transaction, &PublicKey)> {
        self.points
            .iter()
            .map(|p| (&self.case.txs.cets[p.cet_index], &p.adaptor_point))
            .collect()
    }

    /// anya's batch of the CETs, on every core: its sighashes are computed here, so each timed
    /// anya iteration pays for them as ddk-dlc's does.
    fn batch(&self) -> CetBatch {
        let c = &self.case;
        CetBatch::new(&c.txs.cets, c.funding_script(), c.fund_output_value).expect("sighashes")
    }
}

fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(30));
    g
}

fn benches(c: &mut Criterion) {
    let f = Fixture::new();
    let case = &f.case;
    let (script, value) = (case.funding_script(), case.fund_output_value);

    let inputs = f.ddk_inputs();
    let serial =
        ddk_dlc::create_cet_adaptor_sigs_from_points(&f.secp, &inputs, &f.sk, script, value).expect("ddk signs");
    f.batch()
        .verify(&f.secp, &f.points, &serial, &f.pk)
        .expect("anya verifies ddk-dlc's serial signatures");
    drop(serial);

    let mut g = slow_group(c, "cets_create");
    g.bench_function("ddk_dlc_serial", |b| {
        b.iter(|| ddk_dlc::create_cet_adaptor_sigs_from_points(&f.secp, black_box(&inputs), &f.sk, script, value))
    });
    g.bench_function("anya", |b| {
        b.iter(|| f.batch().sign(&f.secp, black_box(&f.points), &f.sk).expect("signed"))
    });
    g.finish();

    let mut g = slow_group(c, "cets_verify");
    g.bench_function("ddk_dlc_serial", |b| {
        b.iter(|| {
            for ((cet, point), sig) in inputs.iter().zip(&f.sigs) {
                ddk_dlc::verify_cet_adaptor_sig_from_point(&f.secp, sig, cet, point, &f.pk, script, value)
                    .expect("valid");
            }
        })
    });
    g.bench_function("anya", |b| {
        b.iter(|| {
            f.batch()
                .verify(&f.secp, black_box(&f.points), &f.sigs, &f.pk)
                .expect("valid")
        })
    });
    g.finish();

    let anya_points = || {
        let batch = f.batch();
        let points = OutcomePoints::from_announcements(&f.secp, &case.contract_info.oracle_announcements)
            .expect("table")
            .adaptor_points(&case.paths, batch.threads())
            .expect("points");
        (batch, points)
    };
    let mut g = slow_group(c, "cets_manager");
    g.bench_function(format!("sign/{DDK_MANAGER}"), |b| {
        b.iter(|| {
            case.contract_info
                .get_adaptor_signatures(&f.secp, &case.adaptor_info, &&f.sk, script, value, &case.txs.cets)
                .expect("signed")
        })
    });
    g.bench_function("sign/anya", |b| {
        b.iter(|| {
            let (batch, points) = anya_points();
            batch.sign(&f.secp, &points, &f.sk).expect("signed")
        })
    });
    g.bench_function(format!("verify/{DDK_MANAGER}"), |b| {
        b.iter(|| {
            case.contract_info
                .verify_adaptor_info(
                    &f.secp,
                    &f.pk,
                    script,
                    value,
                    &case.txs.cets,
                    &f.sigs,
                    0,
                    &case.adaptor_info,
                )
                .expect("valid")
        })
    });
    g.bench_function("verify/anya", |b| {
        b.iter(|| {
            let (batch, points) = anya_points();
            batch.verify(&f.secp, &points, &f.sigs, &f.pk).expect("valid")
        })
    });
    g.finish();

    parts(c, &f);
    paired(&f);
}

/// With `ANYA_CETS_PAIRS=n`, `n` rounds that each time ddk-dlc's serial creation, anya's
/// creation, ddk-dlc's serial verification and anya's verification back to back, with each
/// round's ratios printed. This VM's speed drifts over minutes; a ratio of two runs taken
/// seconds apart is less exposed to that drift than criterion's two groups of ten.
fn paired(f: &Fixture) {
    let rounds: usize = std::env::var("ANYA_CETS_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (script, value) = (f.case.funding_script(), f.case.fund_output_value);
    let inputs = f.ddk_inputs();
    let time = |run: &dyn Fn()| {
        let t = Instant::now();
        run();
        t.elapsed().as_secs_f64()
    };
    for round in 1..=rounds {
        let create_ddk = time(&|| {
            black_box(
                ddk_dlc::create_cet_adaptor_sigs_from_points(&f.secp, &inputs, &f.sk, script, value).expect("signed"),
            );
        });
        let create_anya = time(&|| {
            black_box(f.batch().sign(&f.secp, &f.points, &f.sk).expect("signed"));
        });
        let verify_ddk = time(&|| {
            for ((cet, point), sig) in inputs.iter().zip(&f.sigs) {
                ddk_dlc::verify_cet_adaptor_sig_from_point(&f.secp, sig, cet, point, &f.pk, script, value)
                    .expect("valid");
            }
        });
        let verify_anya = time(&|| f.batch().verify(&f.secp, &f.points, &f.sigs, &f.pk).expect("valid"));
        eprintln!(
            "paired round {round}: create ddk-dlc {create_ddk:.3} s, anya {create_anya:.3} s ({:.2}x); \
             verify ddk-dlc {verify_ddk:.3} s, anya {verify_anya:.3} s ({:.2}x)",
            create_ddk / create_anya,
            verify_ddk / verify_anya,
        );
    }
}

fn parts(c: &mut Criterion, f: &Fixture) {
    let case = &f.case;
    let (script, value) = (case.funding_script(), case.fund_output_value);
    let one = NonZeroUsize::MIN;
    let points = &f.points[..PART];
    let sigs = &f.sigs[..PART];
    let batch = f.batch();
    let sighashes: Vec<_> = points
        .iter()
        .map(|p| *batch.sighash(p.cet_index).expect("a cet"))
        .collect();
    let table = case.outcome_points();

    let mut g = c.benchmark_group("cets_parts");
    g.sample_size(10).throughput(Throughput::Elements(PART as u64));
    g.bench_function("sighash", |b| {
        b.iter(|| {
            for p in points {
                black_box(
                    SighashCache::new(&case.txs.cets[p.cet_index])
                        .p2wsh_signature_hash(0, script, value, EcdsaSighashType::All)
                        .expect("input 0"),
                );
            }
        })
    });
    g.bench_function("adaptor_point_sum", |b| {
        b.iter(|| {
            table
                .adaptor_points(black_box(&case.paths[..PART]), one)
                .expect("points")
        })
    });
    g.bench_function("encrypt_aux_rand", |b| {
        b.iter(|| {
            for (m, p) in sighashes.iter().zip(points) {
                black_box(EcdsaAdaptorSignature::encrypt(&f.secp, m, &f.sk, &p.adaptor_point));
            }
        })
    });
    g.bench_function("encrypt_no_aux_rand", |b| {
        b.iter(|| {
            for (m, p) in sighashes.iter().zip(points) {
                black_box(EcdsaAdaptorSignature::encrypt_no_aux_rand(
                    &f.secp,
                    m,
                    &f.sk,
                    &p.adaptor_point,
                ));
            }
        })
    });
    g.bench_function("verify", |b| {
        b.iter(|| {
            for ((m, p), s) in sighashes.iter().zip(points).zip(sigs) {
                s.verify(&f.secp, m, &f.pk, &p.adaptor_point).expect("valid");
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cets_parts");
    g.sample_size(10);
    g.bench_function("trie_generate", |b| {
        let ddk_manager::contract::ContractDescriptor::Numerical(n) = &case.contract_info.contract_descriptor else {
            unreachable!("a numerical contract")
        };
        let payouts = n.get_range_payouts(case.params.total_collateral).expect("payouts");
        b.iter(|| {
            let mut trie = MultiOracleTrieWithDiff::new(
                &n.oracle_numeric_infos,
                case.params.threshold,
                case.params.min_support_exp,
                case.params.max_error_exp,
            )
            .expect("trie");
            trie.generate(0, &payouts).expect("generated");
            trie
        })
    });
    g.bench_function("outcome_point_table", |b| {
        b.iter(|| OutcomePoints::from_announcements(&f.secp, &case.contract_info.oracle_announcements).expect("table"))
    });
    g.finish();
}

criterion_group!(cets, benches);
criterion_main!(cets);
