//! The contract manager's oracle trait on an anya oracle in the same process.

mod common;

use std::sync::Arc;

use anya_layer2::dlc::contracts::LocalOracle;
use anya_layer2::dlc::{Oracle, OracleOptions};
use common::Fixture;
use ddk_manager::Oracle as _;
use secp256k1::Secp256k1;

const NOW: u64 = 1_800_000_000;

#[tokio::test(flavor = "current_thread")]
async fn the_manager_reads_verified_messages_from_a_local_oracle() {
    let f = Fixture::new(NOW);
    let outcomes = vec!["up".to_owned(), "down".to_owned()];
    f.oracle.create_enum_event("e", NOW as u32, outcomes).unwrap();
    let ann = f.oracle.announcement("e").unwrap();
    let att = f.oracle.attest_enum("e", "down").unwrap();
    f.oracle
        .create_enum_event("later", NOW as u32 + 60, vec!["x".to_owned()])
        .unwrap();
    // The fixture's oracle again, as the manager would hold it.
    let oracle = Arc::new(
        Oracle::open(
            Arc::clone(&f.hsm) as Arc<dyn anya_hsm::HsmProvider>,
            Arc::clone(&f.store),
            Arc::clone(&f.clock) as Arc<dyn anya_core_types::Clock>,
            OracleOptions::default(),
        )
        .unwrap(),
    );
    let local = LocalOracle::new(oracle);
    assert_eq!(local.get_public_key(), f.oracle.public_key());
    let got = local.get_announcement("e").await.unwrap();
    assert_eq!(got, ann);
    let got_att = local.get_attestation("e").await.unwrap();
    assert_eq!(got_att, att);
    got_att.validate(&Secp256k1::verification_only(), &got).unwrap();
    assert!(matches!(
        local.get_attestation("later").await,
        Err(ddk_manager::error::Error::OracleError(_))
    ));
    assert!(local.get_announcement("missing").await.is_err());
}
