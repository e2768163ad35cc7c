//! The digit paths read from ddk-trie's dump are the manager's: signatures that anya makes
//! along them pass ddk-manager's own `ContractInfo::verify_adaptor_info`, which checks each
//! signature against the CET and adaptor point that its trie gives for that index.

use anya_benches::numeric::{accept_secret_key, AnyaOracles, CetCase, NumericParams};
use anya_benches::trie::digit_paths;
use secp256k1::{PublicKey, Secp256k1};

#[test]
fn anya_signatures_along_the_walked_paths_pass_the_managers_verification() {
    let params = NumericParams::SMALL;
    let oracles = AnyaOracles::new(params.nb_oracles);
    let case = CetCase::new(params, oracles.announce("paths", 1_700_000_000, &params));
    let secp = Secp256k1::new();
    let sk = accept_secret_key();

    // ddk-manager's own signing builds the same trie and makes as many signatures.
    let (info, ddk_sigs) = case
        .contract_info
        .get_adaptor_info(
            &secp,
            params.total_collateral,
            &sk,
            case.funding_script(),
            case.fund_output_value,
            &case.txs.cets,
            0,
        )
        .expect("ddk signs");
    assert_eq!(ddk_sigs.len(), case.paths.len());
    assert_eq!(digit_paths(&info, 0).expect("paths"), case.paths);
    assert!(case.paths.len() > 1_000, "{} signatures", case.paths.len());

    let batch = case.batch();
    let points = case
        .outcome_points()
        .adaptor_points(&case.paths, batch.threads())
        .expect("points");
    let sigs = batch.sign(&secp, &points, &sk).expect("signed");
    let pk = PublicKey::from_secret_key(&secp, &sk);
    let n = case
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
    assert_eq!(n, sigs.len());
    // And anya's verifier accepts ddk-manager's (randomized) signatures.
    batch.verify(&secp, &points, &ddk_sigs, &pk).expect("ddk's verify");

    // The trie's indexes start at 0: read as starting at 7, they do not fit.
    assert!(matches!(
        digit_paths(&case.adaptor_info, 7),
        Err(anya_benches::trie::TrieError::Indexes(0))
    ));
}
