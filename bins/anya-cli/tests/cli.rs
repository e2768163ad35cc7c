//! Runs the real `anya` binary on a temporary data directory.

use std::process::{Command, Output};

use secp256k1::{ecdsa, schnorr, Message, PublicKey, Secp256k1, XOnlyPublicKey};

mod common;
use common::ok;

const PASS: &str = "correct horse battery staple";
const DIGEST: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn anya(dir: &std::path::Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anya"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("ANYA_PASSPHRASE", pass)
        .env_remove("ANYA_DATA_DIR")
        .output()
        .expect("run anya")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn init_key_sign_verify_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    assert!(ok(&anya(&data, PASS, &["hsm", "init"])).contains("created keystore"));
    assert!(ok(&anya(&data, PASS, &["hsm", "unlock-check"])).contains("passphrase is correct"));

    let line = ok(&anya(&data, PASS, &["key", "new", "treasury", "--type", "secp256k1"]));
    let fields: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(fields[..3], ["treasury", "secp256k1", "non-exportable"]);
    let pk = PublicKey::from_slice(&hex(fields[3])).expect("public key");
    ok(&anya(
        &data,
        PASS,
        &["key", "new", "web", "--type", "ed25519", "--exportable"],
    ));

    let list = ok(&anya(&data, PASS, &["key", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("treasury\tsecp256k1\t"));
    assert!(lines[1].starts_with("web\ted25519\texportable\t"));

    let secp = Secp256k1::verification_only();
    let msg = Message::from_digest(hex(DIGEST).try_into().expect("32 bytes"));
    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "ecdsa", "--message-hex", DIGEST],
    ));
    let sig = ecdsa::Signature::from_der(&hex(sig.trim())).expect("DER signature");
    secp.verify_ecdsa(&msg, &sig, &pk).expect("ecdsa signature verifies");

    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "schnorr", "--message-hex", DIGEST],
    ));
    let sig = schnorr::Signature::from_slice(&hex(sig.trim())).expect("BIP340 signature");
    secp.verify_schnorr(&sig, &msg, &XOnlyPublicKey::from(pk))
        .expect("bip340 signature verifies");

    // A 31-byte digest is refused with a clear message.
    let out = anya(
        &data,
        PASS,
        &["sign", "treasury", "--scheme", "ecdsa", "--message-hex", "00"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32-byte digest"));

    let summary = ok(&anya(&data, PASS, &["audit", "verify"]));
    assert!(summary.starts_with("audit chain ok: "), "{summary}");
    let records: u64 = summary
        .trim_start_matches("audit chain ok: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("record count");
    // create, then per command an unlock and its operations: at least one record each.
    assert!(records >= 12, "{summary}");
}

#[test]
fn p256_key_signs_es256_any_message() {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let line = ok(&anya(&data, PASS, &["key", "new", "webauthn", "--type", "p256"]));
    let fields: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(fields[..3], ["webauthn", "p256", "non-exportable"]);
    let pk = hex(fields[3]);
    assert_eq!((pk.len(), pk[0]), (65, 0x04), "uncompressed SEC1 point");
    // Any length: P-256 signs SHA-256 of the message itself.
    let message = "68656c6c6f";
    let sig = ok(&anya(
        &data,
        PASS,
        &["sign", "webauthn", "--scheme", "p256", "--message-hex", message],
    ));
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &pk)
        .verify(b"hello", &hex(sig.trim()))
        .expect("DER p-256 signature verifies");
    // A P-256 key is not a secp256k1 key.
    let out = anya(
        &data,
        PASS,
        &["sign", "webauthn", "--scheme", "ecdsa", "--message-hex", DIGEST],
    );
    assert!(!out.status.success());
}

#[test]
fn wrong_passphrase_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let out = anya(&data, "not the passphrase", &["hsm", "unlock-check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: wrong passphrase");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_keystore_and_second_init_fail_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = anya(&data, PASS, &["key", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `anya hsm init` first"));
    ok(&anya(&data, PASS, &["hsm", "init"]));
    let out = anya(&data, PASS, &["hsm", "init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

// ---- wallets and PSBTs ----------------------------------------------------------------------

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/psbt/bip174_test_vectors.json"
);

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "anya should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn vectors() -> serde_json::Value {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("reading {VECTORS}: {e}"));
    serde_json::from_str(&text).expect("vector file is JSON")
}

/// A keystore with a BIP32 root `root`.
fn keystore_with_root() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    ok(&anya(&data, PASS, &["hsm", "init"]));
    ok(&anya(&data, PASS, &["key", "new", "root", "--type", "bip32"]));
    (dir, data)
}

#[test]
fn wallet_new_address_balance_list_policy() {
    let (_dir, data) = keystore_with_root();
    let desc = ok(&anya(&data, PASS, &["wallet", "new", "savings", "--root", "root"]));
    assert!(
        desc.trim().starts_with("tr([") && desc.contains("/86'/1'/0']tpub"),
        "{desc}"
    );
    let desc84 = ok(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "new",
            "spending",
            "--root",
            "root",
            "--kind",
            "bip84",
            "--account",
            "2",
            "--network",
            "testnet",
        ],
    ));
    assert!(
        desc84.trim().starts_with("wpkh([") && desc84.contains("/84'/1'/2']tpub"),
        "{desc84}"
    );

    let first = ok(&anya(&data, PASS, &["wallet", "address", "savings"]));
    let second = ok(&anya(&data, PASS, &["wallet", "address", "savings"]));
    assert!(first.trim().starts_with("bcrt1p"), "{first}");
    assert_ne!(
        first, second,
        "each call reveals a new address, and the store remembers"
    );
    assert!(ok(&anya(&data, PASS, &["wallet", "address", "spending"]))
        .trim()
        .starts_with("tb1q"));

    let balance = ok(&anya(&data, PASS, &["wallet", "balance", "savings"]));
    assert!(balance.contains("confirmed         0 sat"), "{balance}");
    assert!(balance.contains("total             0 sat"), "{balance}");

    let list = ok(&anya(&data, PASS, &["wallet", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines.iter().any(|l| l.starts_with("savings\tregtest\ttr(")), "{list}");
    assert!(
        lines.iter().any(|l| l.starts_with("spending\ttestnet\twpkh(")),
        "{list}"
    );

    let rules = ok(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "policy",
            "savings",
            "--max-per-tx",
            "0.01btc",
            "--max-fee-rate",
            "25.5",
            "--allow",
            first.trim(),
        ],
    ));
    assert!(rules.contains("max per transaction    1000000 sat"), "{rules}");
    assert!(rules.contains("max fee rate           25.50 sat/vB"), "{rules}");
    assert!(rules.contains(first.trim()), "{rules}");
    // Stored: shown again without options.
    assert_eq!(ok(&anya(&data, PASS, &["wallet", "policy", "savings"])), rules);

    let err = failed(&anya(&data, PASS, &["wallet", "new", "savings", "--root", "root"]));
    assert!(err.contains("savings already exists"), "{err}");
}

#[test]
fn wallet_errors_are_clear() {
    let (_dir, data) = keystore_with_root();
    for args in [
        &["wallet", "balance", "nosuch"][..],
        &["wallet", "address", "nosuch"][..],
        &[
            "wallet",
            "send",
            "nosuch",
            "--to",
            "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2",
            "--amount",
            "1000",
            "--fee-rate",
            "1",
        ][..],
    ] {
        let err = failed(&anya(&data, PASS, args));
        assert_eq!(err.trim(), "error: no wallet named nosuch", "{args:?}");
    }
    ok(&anya(&data, PASS, &["wallet", "new", "w", "--root", "root"]));
    let err = failed(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "send",
            "w",
            "--to",
            "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2",
            "--amount",
            "10000",
            "--fee-rate",
            "2",
            "--no-broadcast",
        ],
    ));
    assert!(err.to_lowercase().contains("insufficient funds"), "{err}");
    // A mainnet address for a regtest wallet.
    let err = failed(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "send",
            "w",
            "--to",
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            "--amount",
            "10000",
            "--fee-rate",
            "2",
        ],
    ));
    assert!(
        err.contains("not an address of this wallet's network (regtest)"),
        "{err}"
    );
    let err = failed(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "send",
            "w",
            "--to",
            "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2",
            "--amount",
            "ten",
            "--fee-rate",
            "2",
        ],
    ));
    assert!(err.contains("not an amount"), "{err}");
    let err = failed(&anya(&data, PASS, &["wallet", "new", "x", "--root", "missing-root"]));
    assert!(err.contains("missing-root"), "{err}");
}

#[test]
fn psbt_inspect_reads_bip174_vectors_in_every_spelling() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let v = vectors();
    let signed = &v["workflow"]["signer_1"];
    let b64 = dir.path().join("signed.psbt");
    std::fs::write(&b64, signed["result_base64"].as_str().expect("base64")).expect("write");
    let hex_file = dir.path().join("signed.hex");
    std::fs::write(&hex_file, signed["result_hex"].as_str().expect("hex")).expect("write");
    let raw = dir.path().join("signed.bin");
    std::fs::write(&raw, hex(signed["result_hex"].as_str().expect("hex"))).expect("write");

    // No keystore is needed to read a PSBT.
    let report = ok(&anya(
        &data,
        PASS,
        &["psbt", "inspect", b64.to_str().expect("path"), "--network", "testnet"],
    ));
    for needle in [
        "inputs (2)",
        "outputs (2)",
        "p2sh-p2wsh",
        "fee        10000 sat",
        "signatures: 1 ecdsa",
        "(ecdsa)",
        "tb1q",
    ] {
        assert!(report.contains(needle), "{needle} in\n{report}");
    }
    for file in [&hex_file, &raw] {
        let again = ok(&anya(
            &data,
            PASS,
            &["psbt", "inspect", file.to_str().expect("path"), "--network", "testnet"],
        ));
        assert_eq!(again, report);
    }

    // Combine the two signers, finalize without a wallet: Core verifies, the BIP's tx comes out.
    let other = dir.path().join("other.psbt");
    std::fs::write(
        &other,
        v["workflow"]["signer_2"]["result_base64"].as_str().expect("b64"),
    )
    .expect("write");
    let combined = dir.path().join("combined.psbt");
    ok(&anya(
        &data,
        PASS,
        &[
            "psbt",
            "combine",
            b64.to_str().expect("path"),
            other.to_str().expect("path"),
            "-o",
            combined.to_str().expect("path"),
        ],
    ));
    let out = ok(&anya(
        &data,
        PASS,
        &["psbt", "finalize", combined.to_str().expect("path"), "--no-broadcast"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[1],
        v["workflow"]["extractor"]["result_tx_hex"].as_str().expect("tx")
    );

    // One signature per input is not enough.
    let err = failed(&anya(
        &data,
        PASS,
        &["psbt", "finalize", b64.to_str().expect("path"), "--no-broadcast"],
    ));
    assert!(err.contains("inputs not finalized: input 0"), "{err}");
}

#[test]
fn garbage_psbts_fail_with_typed_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let cases: [(&str, &[u8], &str); 4] = [
        ("text.psbt", b"hello, this is not a psbt", "not a PSBT"),
        ("bad-magic.psbt", b"psbt\xff\x00garbage", "invalid PSBT"),
        ("truncated.psbt", b"cHNidP8BAHUCAAAAASaBcTce3/KF6Tet7qSze3gADAVmy7OtZGQXE8pCFxv2AAAAAAD+////AtPf9QUAAAAAGXapFNDFmQPFusKGh2DpD9UhpGZap2UgiKwA4fUFAAAAABepFDVF5uM7gyxHBQ8k0+65PJwDlIvHh7MuEwAAAQD9", "invalid PSBT"),
        ("empty.psbt", b"", "not a PSBT"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = failed(&anya(&data, PASS, &["psbt", "inspect", path.to_str().expect("path")]));
        assert!(
            err.starts_with("error: ") && err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
    }
    let err = failed(&anya(&data, PASS, &["psbt", "inspect", "/nonexistent/x.psbt"]));
    assert!(err.contains("cannot read /nonexistent/x.psbt"), "{err}");
}

/// Funds a wallet made by the binary with real regtest blocks applied through the library (in
/// the same store), then spends, bumps and co-signs through the binary; the chain accepts what
/// it prints.
#[test]
fn funded_wallet_sends_bumps_and_signs_psbts() {
    use std::str::FromStr;
    use std::sync::Arc;

    use anya_bitcoin::regtest::RegtestChain;
    use anya_bitcoin::wallet::AnyaWallet;
    use anya_core_types::SystemClock;
    use anya_hsm::{HsmProvider, Label, SecretString, SoftwareHsm, SoftwareOptions};
    use anya_storage::{KvStore, SqliteOptions, SqliteStore};
    use bitcoin::{Address, Network, Transaction};

    let (dir, data) = keystore_with_root();
    ok(&anya(&data, PASS, &["wallet", "new", "w", "--root", "root"]));
    let burn = "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2";
    let burn_spk = Address::from_str(burn)
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey();

    let mut chain = RegtestChain::new();
    {
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(data.join("anya.db"), SqliteOptions::default()).expect("store"));
        let hsm = SoftwareHsm::open(Arc::clone(&store), SoftwareOptions::default()).expect("keystore");
        hsm.unlock(&SecretString::from(PASS)).expect("unlock");
        let hsm: Arc<dyn HsmProvider> = Arc::new(hsm);
        let mut wallet =
            AnyaWallet::load(store, hsm, Arc::new(SystemClock), Label::new("w").expect("label")).expect("wallet");
        let to = wallet.next_address().expect("address").script_pubkey();
        chain.mine(&to, Vec::new()).expect("block");
        wallet.apply_block(chain.tip(), chain.height()).expect("connects");
        for _ in 0..100 {
            chain.mine(&burn_spk, Vec::new()).expect("block");
            wallet.apply_block(chain.tip(), chain.height()).expect("connects");
        }
    }
    let balance = ok(&anya(&data, PASS, &["wallet", "balance", "w"]));
    assert!(balance.contains("confirmed         5000000000 sat"), "{balance}");

    let tx_of = |out: &str| -> Transaction {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let tx: Transaction = bitcoin::consensus::deserialize(&hex(lines[1])).expect("transaction");
        assert_eq!(tx.compute_txid().to_string(), lines[0]);
        tx
    };
    let send = [
        "wallet",
        "send",
        "w",
        "--to",
        burn,
        "--amount",
        "0.001btc",
        "--fee-rate",
        "2",
    ];
    let mut offline = send.to_vec();
    offline.push("--no-broadcast");
    let out = anya(&data, PASS, &offline);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT broadcast"));
    let sent = tx_of(&ok(&out));
    assert!(sent
        .output
        .iter()
        .any(|o| o.script_pubkey == burn_spk && o.value.to_sat() == 100_000));

    let txid = sent.compute_txid().to_string();
    let bumped = tx_of(&ok(&anya(
        &data,
        PASS,
        &[
            "wallet",
            "bump-fee",
            "w",
            "--txid",
            &txid,
            "--fee-rate",
            "10",
            "--no-broadcast",
        ],
    )));
    assert_ne!(bumped.compute_txid(), sent.compute_txid());
    assert_eq!(bumped.input[0].previous_output, sent.input[0].previous_output);
    // Bitcoin Core's interpreter accepts the replacement in a block.
    chain
        .mine(&burn_spk, vec![bumped])
        .expect("the chain accepts the bumped transaction");

    // Unsigned PSBT out, inspect, sign, finalize.
    let unsigned = dir.path().join("unsigned.psbt");
    let signed = dir.path().join("signed.psbt");
    let mut args = send.to_vec();
    args.extend(["--psbt-out", unsigned.to_str().expect("path")]);
    ok(&anya(&data, PASS, &args));
    let report = ok(&anya(
        &data,
        PASS,
        &["psbt", "inspect", unsigned.to_str().expect("path")],
    ));
    assert!(report.contains("taproot key path") && report.contains(burn), "{report}");
    assert!(report.contains("signatures: 0 ecdsa, taproot key path no"), "{report}");
    let out = anya(
        &data,
        PASS,
        &[
            "psbt",
            "sign",
            unsigned.to_str().expect("path"),
            "--wallet",
            "w",
            "-o",
            signed.to_str().expect("path"),
        ],
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 taproot key path"));
    let report = ok(&anya(&data, PASS, &["psbt", "inspect", signed.to_str().expect("path")]));
    assert!(report.contains("taproot key path yes"), "{report}");
    tx_of(&ok(&anya(
        &data,
        PASS,
        &["psbt", "finalize", signed.to_str().expect("path"), "--no-broadcast"],
    )));

    // The policy refuses, naming the rule.
    ok(&anya(&data, PASS, &["wallet", "policy", "w", "--max-per-tx", "1000"]));
    let err = failed(&anya(&data, PASS, &offline));
    assert!(
        err.contains("spending policy refused") && err.contains("per-transaction limit"),
        "{err}"
    );
}

/// Without --no-broadcast a send needs a node, and a missing one stops it before any key is
/// touched (no passphrase is even needed to find that out).
#[test]
fn send_without_a_node_fails_before_signing() {
    let (dir, data) = keystore_with_root();
    ok(&anya(&data, PASS, &["wallet", "new", "w", "--root", "root"]));
    let out = Command::new(env!("CARGO_BIN_EXE_anya"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "wallet",
            "send",
            "w",
            "--to",
            "bcrt1qq2yshcmzdlznnpxx258xswqlmqcxjs4dssfxt2",
            "--amount",
            "10000",
            "--datadir",
        ])
        .arg(dir.path().join("no-bitcoind"))
        .env_remove("ANYA_PASSPHRASE")
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_RPC_URL")
        .env_remove("ANYA_RPC_COOKIE")
        .env_remove("ANYA_RPC_USER")
        .output()
        .expect("run anya");
    let err = failed(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: no bitcoind cookie file at ") && err.contains("no-bitcoind/regtest/.cookie"),
        "{err}"
    );
}

#[test]
fn help_documents_the_bitcoind_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    for command in [&["wallet", "send", "--help"][..], &["wallet", "sync", "--help"][..]] {
        let help = ok(&anya(dir.path(), PASS, command));
        for needle in [
            "--rpcconnect",
            "--rpcport",
            "--datadir",
            "--rpccookiefile",
            "--rpcuser",
            "--rpcpassword",
            "--rpc-url",
            "18443",
            "Examples:",
        ] {
            assert!(help.contains(needle), "{needle} in {command:?}:\n{help}");
        }
    }
    let help = ok(&anya(dir.path(), PASS, &["wallet", "send", "--help"]));
    for needle in ["--no-broadcast", "--fee-rate", "--conf-target", "estimatesmartfee"] {
        assert!(help.contains(needle), "{needle}:\n{help}");
    }
}

// ---- rollback anchor ---------------------------------------------------------------------------

fn anya_anchored(dir: &std::path::Path, anchor: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--anchor-dir", anchor.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    anya(dir, PASS, &all)
}

#[test]
fn a_data_directory_restored_behind_its_anchor_is_refused_until_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, anchor) = (dir.path().join("data"), dir.path().join("anchor"));
    ok(&anya_anchored(&data, &anchor, &["hsm", "init"]));
    ok(&anya_anchored(
        &data,
        &anchor,
        &["key", "new", "k1", "--type", "secp256k1"],
    ));
    // A backup of the data directory (every file: SQLite's WAL goes with the database).
    let files = |dir: &std::path::Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        std::fs::read_dir(dir)
            .expect("data dir")
            .map(|f| {
                let f = f.expect("entry");
                (f.file_name(), std::fs::read(f.path()).expect("read"))
            })
            .collect()
    };
    let backup = files(&data);
    ok(&anya_anchored(
        &data,
        &anchor,
        &["sign", "k1", "--scheme", "schnorr", "--message-hex", DIGEST],
    ));
    // The data directory alone is put back as it was.
    for (name, _) in files(&data) {
        std::fs::remove_file(data.join(name)).expect("remove");
    }
    for (name, bytes) in &backup {
        std::fs::write(data.join(name), bytes).expect("restore");
    }
    let err = failed(&anya_anchored(&data, &anchor, &["key", "list"]));
    assert!(err.contains("rolled back"), "{err}");
    let err = failed(&anya(&data, PASS, &["hsm", "accept-rollback"]));
    assert!(err.contains("--anchor-dir"), "{err}");
    let out = ok(&anya_anchored(&data, &anchor, &["hsm", "accept-rollback"]));
    assert!(out.starts_with("accepted: the anchor held audit record"), "{out}");
    ok(&anya_anchored(&data, &anchor, &["key", "list"]));
    let out = ok(&anya_anchored(&data, &anchor, &["audit", "verify"]));
    assert!(out.starts_with("audit chain ok"), "{out}");
}
