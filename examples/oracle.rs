//! A DLC oracle on embedded defaults: its key and one-time nonces in a software HSM keystore
//! (SQLite, with a rollback anchor beside it), an enum event and a 20-digit numeric event
//! announced and attested, and every message checked twice — by ddk-messages' validation and by
//! an independent check written from dlcspecs with bare secp256k1 (`anya_testkit::dlc`). Then
//! the property the oracle exists for: a second outcome for an attested event is refused, and
//! the same outcome gives back the same attestation.
//!
//! `cargo run --release --example oracle [DATA_DIR]` (a temporary directory by default).
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;
use std::time::Instant;

use anya_core_types::{Clock, SystemClock};
use anya_hsm::anchor::FileAnchor;
use anya_hsm::{HsmProvider, SecretString, SoftwareHsm, SoftwareOptions};
use anya_layer2::dlc::digits::Digits;
use anya_layer2::dlc::messages::DigitDecompositionEventDescriptor;
use anya_layer2::dlc::{Oracle, OracleError, OracleOptions};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use anya_testkit::dlc::{verify_announcement, verify_attestation};
use lightning::util::ser::Writeable;
use secp256k1::Secp256k1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let secp = Secp256k1::verification_only();

    // The keystore and the oracle's store share one SQLite file; the rollback anchor lives
    // beside it (back both up together, never restore one alone).
    let store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(dir.join("oracle.db"), SqliteOptions::default())?);
    let options = SoftwareOptions::default().with_anchor(Arc::new(FileAnchor::open(dir.join("anchor"))?));
    let passphrase = SecretString::from("example oracle passphrase");
    let hsm = Arc::new(
        match SoftwareHsm::create(Arc::clone(&store), &passphrase, options.clone()) {
            Ok(hsm) => hsm,
            Err(anya_hsm::HsmError::KeystoreExists) => {
                let hsm = SoftwareHsm::open(Arc::clone(&store), options)?;
                hsm.unlock(&passphrase)?;
                hsm
            }
            Err(e) => return Err(e.into()),
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let oracle = Oracle::open(
        Arc::clone(&hsm) as Arc<dyn HsmProvider>,
        Arc::clone(&store),
        Arc::clone(&clock),
        OracleOptions::default(),
    )?;
    println!("oracle public key {} (in the HSM, never exported)", oracle.public_key());

    let now = u32::try_from(clock.now().as_secs())?;
    let stamp = clock.now().as_duration().as_nanos();

    // 1. An enum event.
    let started = Instant::now();
    let match_id = format!("match-{stamp}");
    let outcomes = ["home", "draw", "away"].map(str::to_owned).to_vec();
    let ann = oracle.create_enum_event(&match_id, now, outcomes)?;
    ann.validate(&secp)?;
    verify_announcement(&ann)?;
    println!(
        "1. announced {match_id}: 1 nonce committed in the HSM, {} bytes, verified by ddk-messages and independently ({:?})",
        ann.encode().len(),
        started.elapsed()
    );

    // 2. A numeric event: 20 binary digits, a nonce each.
    let started = Instant::now();
    let price_id = format!("btcusd{now}");
    let descriptor = DigitDecompositionEventDescriptor {
        base: 2,
        is_signed: false,
        unit: "usd/btc".to_owned(),
        precision: 0,
        nb_digits: 20,
    };
    let price_ann = oracle.create_numeric_event(&price_id, now, descriptor)?;
    price_ann.validate(&secp)?;
    verify_announcement(&price_ann)?;
    println!(
        "2. announced {price_id}: 20 nonces, verified the same way ({:?})",
        started.elapsed()
    );

    // 3. Attest both; check every signature against its announced nonce.
    let started = Instant::now();
    let att = oracle.attest_enum(&match_id, "draw")?;
    att.validate(&secp, &ann)?;
    verify_attestation(&att, &ann)?;
    let price_att = oracle.attest_numeric(&price_id, 97_250)?;
    price_att.validate(&secp, &price_ann)?;
    verify_attestation(&price_att, &price_ann)?;
    let value = Digits::new(2, 20, false)?.compose(&price_att.outcomes)?;
    println!(
        "3. attested {match_id} = draw and {price_id} = {value} ({} digit signatures, each R its announced nonce; {:?})",
        price_att.signatures.len(),
        started.elapsed()
    );

    // 4. One outcome per event, whatever is asked later.
    match oracle.attest_enum(&match_id, "home") {
        Err(OracleError::AlreadyAttested { attested, .. }) => {
            println!("4. a second outcome is refused before any signature: attested {attested:?}")
        }
        other => return Err(format!("a second outcome must be refused, got {other:?}").into()),
    }
    assert_eq!(oracle.attest_enum(&match_id, "draw")?, att);
    assert_eq!(oracle.attest_numeric(&price_id, 97_250)?, price_att);
    println!("   the same outcome again returns the same attestation (a reply lost to a crash is asked again)");

    // 5. Every nonce commitment and signature is in the HSM's hash-chained audit log.
    let summary = hsm.verify_audit_chain()?;
    println!(
        "5. audit chain verified: {} records, {} vouched for by its keyed head",
        summary.records, summary.authenticated
    );
    Ok(())
}
