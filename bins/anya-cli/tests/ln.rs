//! `anya ln …` against a real `anya-node` API served in this process on a loopback port: the
//! request reaches the node's route and its answer, a success or a problem, comes back as
//! output or as the error line. The node runs no Lightning node (that needs bitcoind; the
//! daemon's `tests/ln.rs` drives one through the same routes), so what is checked is the
//! wiring: decoding, the token from the node's cookie or the environment, and the node's
//! refusals passed on.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

mod common;
use common::ok;

/// A node serving its API on a free loopback port until the test process ends; its data
/// directory (with its cookie) and address.
fn serve(dir: &Path) -> SocketAddr {
    let mut config = anya_node::NodeConfig::default();
    config.data_dir = dir.to_path_buf();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let (node, _) =
        anya_node::Node::open(config, &anya_hsm::SecretString::from_str_secret("node pass")).expect("a node");
    std::thread::spawn(move || runtime.block_on(anya_node::serve(Arc::new(node), listener, std::future::pending())));
    addr
}

fn anya(data_dir: &Path, addr: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anya"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .args(["--node", &format!("http://{addr}")])
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_NODE_URL")
        .env_remove("ANYA_NODE_COOKIE")
        .env_remove("ANYA_NODE_TOKEN");
    if let Some(token) = token {
        command.env("ANYA_NODE_TOKEN", token);
    }
    command.output().expect("run anya")
}

/// The error line of a run that must have failed.
#[track_caller]
fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "anya succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first valid invoice of BOLT11's examples and its payment hash.
fn vector() -> (String, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/lightning/bolt11_test_vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the BOLT11 vectors")).expect("JSON");
    let case = &v["valid"][1];
    let hash = case["decoded"]["tagged_fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["type"] == "p")
        .and_then(|f| f["value"].as_str())
        .expect("a payment hash")
        .to_owned();
    (case["invoice"].as_str().expect("an invoice").to_owned(), hash)
}

#[test]
fn ln_commands_reach_the_nodes_routes_and_pass_its_answers_on() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("node");
    let addr = serve(&data);
    let (invoice, hash) = vector();

    // The token from the node's cookie in --data-dir.
    let decoded = ok(&anya(&data, addr, None, &["ln", "decode", &invoice]));
    let decoded: serde_json::Value = serde_json::from_str(&decoded).expect("JSON");
    assert_eq!(
        (&decoded["kind"], decoded["payment_hash"].as_str()),
        (&serde_json::json!("bolt11"), Some(hash.as_str())),
        "{decoded}"
    );

    // The node's problems, passed on.
    let err = failed(&anya(&data, addr, None, &["ln", "info"]));
    assert!(err.contains("404 ln_disabled"), "{err}");
    let err = failed(&anya(&data, addr, None, &["ln", "pay", "lnbcrt1notaninvoice"]));
    assert!(err.contains("400 invalid_invoice"), "{err}");
    let err = failed(&anya(&data, addr, None, &["ln", "decode", "lno1notanoffer"]));
    assert!(err.contains("400 invalid_offer"), "{err}");

    // A token from the environment wins over the cookie; a wrong one is refused by the node
    // and never printed.
    let wrong = "anya_0123456789abcdef_00";
    let err = failed(&anya(&data, addr, Some(wrong), &["ln", "channels"]));
    assert!(err.contains("401 unauthorized") && !err.contains(wrong), "{err}");

    // Without a cookie or a token, the command says how to give one.
    let elsewhere = dir.path().join("elsewhere");
    let err = failed(&anya(&elsewhere, addr, None, &["ln", "info"]));
    assert!(err.contains("--token") && err.contains("ANYA_NODE_TOKEN"), "{err}");

    // What the command checks itself, before asking.
    let err = failed(&anya(&data, addr, None, &["ln", "payments", "zz"]));
    assert!(err.contains("not a payment id"), "{err}");
    let err = failed(&anya(&data, addr, None, &["ln", "close", "x"]));
    assert!(err.contains("not a user channel id"), "{err}");
}
