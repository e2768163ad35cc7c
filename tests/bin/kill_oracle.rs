//! Child process of the nonce kill test: signs with committed oracle nonces forever, from two
//! threads, and prints a line for each request before it is made and for each signature only
//! after `sign_with_nonce` returned it. The test kills it with SIGKILL at random moments and
//! checks, across restarts, that no nonce ever signed two messages and that every nonce whose
//! signature was asked for can still give it for that message.
//!
//! Usage: `anya-kill-oracle <dir> <run-id>`. The first run creates the keystore (in
//! `<dir>/hsm.db`, with its rollback anchor in `<dir>/anchor`), an oracle key and `NONCES`
//! committed nonces.
//!
//! Lines: `READY`, then `REQ <nonce> <message-hex>` before a request, `SIG <nonce>
//! <message-hex> <signature-hex>` after a signature, `USED <nonce> <message-hex>` after a
//! refusal.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the acknowledgement protocol is stdout"
)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anya_hsm::anchor::FileAnchor;
use anya_hsm::{
    HsmError, HsmProvider, KdfParams, KeyPolicy, KeySpec, Label, SecretString, SoftwareHsm, SoftwareOptions,
};
use anya_storage::{KvStore, SqliteOptions, SqliteStore};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use rand::Rng;

/// Nonces the first run commits.
pub const NONCES: u32 = 320;
const PASS: &str = "kill-oracle";

/// The message the test may ask nonce `n` to sign: one of two per nonce, so that runs compete.
fn message(n: u32, which: u8) -> [u8; 32] {
    sha256::Hash::hash(format!("nonce {n} message {which}").as_bytes()).to_byte_array()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, run] = args.as_slice() else {
        eprintln!("usage: anya-kill-oracle <dir> <run-id>");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let store: Arc<dyn KvStore> =
        Arc::new(SqliteStore::open(dir.join("hsm.db"), SqliteOptions::default()).expect("open the store"));
    let anchor = Arc::new(FileAnchor::open(dir.join("anchor")).expect("open the anchor"));
    let options = SoftwareOptions::default()
        .with_kdf(KdfParams::insecure_for_tests())
        .with_anchor(anchor)
        .with_actor(Label::new(run.as_str()).expect("run ids are labels"));
    let pass = SecretString::from(PASS);
    let key = Label::new("oracle").expect("label");
    let nonce = |n: u32| Label::new(format!("n{n}")).expect("label");
    let hsm = match SoftwareHsm::open(Arc::clone(&store), options.clone()) {
        Ok(hsm) => {
            hsm.unlock(&pass).expect("unlock");
            hsm
        }
        Err(HsmError::KeystoreMissing) => {
            let hsm = SoftwareHsm::create(Arc::clone(&store), &pass, options).expect("create");
            hsm.generate_key(&key, KeySpec::Secp256k1, KeyPolicy::default_for(KeySpec::Secp256k1))
                .expect("oracle key");
            for n in 0..NONCES {
                hsm.commit_nonce(&key, &nonce(n)).expect("commit");
            }
            hsm
        }
        Err(e) => panic!("open: {e}"),
    };
    println!("READY");
    let hsm = Arc::new(hsm);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (hsm, key) = (Arc::clone(&hsm), key.clone());
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                loop {
                    let n = rng.gen_range(0..NONCES);
                    let m = message(n, rng.gen_range(0..2));
                    let hex = m.to_lower_hex_string();
                    {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "REQ {n} {hex}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                    let line = match hsm.sign_with_nonce(&key, &nonce(n), &m) {
                        Ok(sig) => format!("SIG {n} {hex} {}", sig.as_ref().to_lower_hex_string()),
                        Err(HsmError::NonceAlreadyUsed { .. }) => format!("USED {n} {hex}"),
                        Err(e) => panic!("sign_with_nonce: {e}"),
                    };
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").expect("stdout");
                    out.flush().expect("stdout");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("signer thread");
    }
}
