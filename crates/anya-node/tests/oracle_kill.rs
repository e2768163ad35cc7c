//! Two oracle processes (`anya-node` with the oracle on) share one store and one rollback
//! anchor and race to attest the same events with different outcomes, while a third thread
//! kills them with SIGKILL at random moments and starts them again. On SQLite and on
//! PostgreSQL, over 300 events: no event is ever attested for two outcomes, every attestation a
//! client received is the one stored, and every event can still be attested after the kills.
//! Then an older copy of the store, restored alone, is refused before any signature.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anya_layer2::dlc::messages::{OracleAnnouncement, OracleAttestation};
use common::{post, start_with, try_request, Daemon, Options};
use secp256k1::Secp256k1;
use serde_json::{json, Value};

const EVENTS: usize = 300;

/// One oracle process: its configuration, its current daemon and address.
struct Proc {
    config: PathBuf,
    data: PathBuf,
    daemon: Mutex<Option<Daemon>>,
    addr: RwLock<SocketAddr>,
}

impl Proc {
    fn start(dir: &Path, name: &str, toml: &str) -> (Self, Option<String>) {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write the configuration");
        let data = dir.join(name);
        let d = start_with(
            &data,
            &Options {
                config: Some(&config),
                args: &[],
                ..Options::default()
            },
        );
        let (addr, admin) = (d.addr, d.admin.clone());
        (
            Self {
                config,
                data,
                daemon: Mutex::new(Some(d)),
                addr: RwLock::new(addr),
            },
            admin,
        )
    }

    fn addr(&self) -> SocketAddr {
        *self.addr.read().expect("addr")
    }

    /// SIGKILL, then a fresh process.
    fn kill_and_restart(&self) {
        let mut slot = self.daemon.lock().expect("daemon");
        if let Some(mut d) = slot.take() {
            d.child.kill().expect("SIGKILL");
            d.child.wait().expect("reap");
        }
        let d = start_with(
            &self.data,
            &Options {
                config: Some(&self.config),
                args: &[],
                ..Options::default()
            },
        );
        *self.addr.write().expect("addr") = d.addr;
        *slot = Some(d);
    }

    fn kill(&self) {
        if let Some(mut d) = self.daemon.lock().expect("daemon").take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }
}

/// A small xorshift: random enough for timing, without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

/// What a client was told, per event.
type Received = Arc<Mutex<BTreeMap<String, Vec<OracleAttestation>>>>;

/// Attests every event through `p` with `outcome` until each is attested (by anyone),
/// retrying whatever a kill cut off. Returns the unexpected answers.
fn client(p: &Proc, admin: &str, outcome: &str, ids: &[String], received: &Received, started: Instant) -> Vec<String> {
    let mut pending: Vec<&String> = ids.iter().collect();
    let mut unexpected = Vec::new();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} events still pending",
            pending.len()
        );
        let mut next = Vec::new();
        for id in pending {
            let body = json!({"event_id": id, "outcome": outcome}).to_string();
            match try_request(
                p.addr(),
                "POST",
                "/sign-enum",
                Some(admin),
                Some(("application/json", body.as_bytes())),
            ) {
                Ok((200, _, bytes)) => {
                    let att: OracleAttestation = serde_json::from_slice(&bytes).expect("an attestation");
                    received
                        .lock()
                        .expect("received")
                        .entry(id.clone())
                        .or_default()
                        .push(att);
                }
                Ok((409, _, bytes)) if String::from_utf8_lossy(&bytes).contains("already_attested") => {}
                // Killed mid-request, or not listening yet.
                Err(_) => {
                    next.push(id);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok((status, _, bytes)) => {
                    unexpected.push(format!("{id}: {status} {}", String::from_utf8_lossy(&bytes)));
                    next.push(id);
                }
            }
        }
        pending = next;
    }
    unexpected
}

#[allow(clippy::print_stderr, reason = "the race's figures, for the test log")]
fn race_and_kill(dir: &Path, store: &str) {
    let anchor = dir.join("anchor");
    let toml = format!(
        "store = \"{store}\"\n[hsm]\nanchor_dir = \"{}\"\n[oracle]\nenabled = true\n",
        anchor.display()
    );
    let (a, admin) = Proc::start(dir, "a", &toml);
    let admin = admin.expect("the first process made the keystore");
    let (b, no_admin) = Proc::start(dir, "b", &toml);
    assert!(no_admin.is_none(), "the second process found the keystore");

    let maturity = now() as u32 - 1;
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("race-{i:03}")).collect();
    let mut announcements = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let p = if i % 2 == 0 { &a } else { &b };
        let (status, ann) = post(
            p.addr(),
            "/create-enum",
            &admin,
            &json!({"event_id": id, "outcomes": ["a", "b"], "event_maturity_epoch": maturity}),
        );
        assert_eq!(status, 200, "{ann}");
        let ann: OracleAnnouncement = serde_json::from_value(ann).expect("announcement");
        announcements.insert(id.clone(), ann);
    }

    let received: Received = Arc::default();
    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let started = Instant::now();
    let (unexpected_a, unexpected_b) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut rng = Rng(u64::from(std::process::id()) << 20 | 0x5eed);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10 + rng.below(110)));
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let p = if rng.below(2) == 0 { &a } else { &b };
                p.kill_and_restart();
                kills.fetch_add(1, Ordering::SeqCst);
            }
        });
        let ca = s.spawn(|| client(&a, &admin, "a", &ids, &received, started));
        let cb = s.spawn(|| client(&b, &admin, "b", &ids, &received, started));
        let ua = ca.join().expect("client a");
        let ub = cb.join().expect("client b");
        stop.store(true, Ordering::SeqCst);
        killer.join().expect("killer");
        (ua, ub)
    });
    assert!(
        unexpected_a.is_empty() && unexpected_b.is_empty(),
        "{unexpected_a:?} {unexpected_b:?}"
    );
    let kills = kills.load(Ordering::SeqCst);
    assert!(
        kills >= 5,
        "only {kills} kills: the race was too short to mean anything"
    );
    a.kill();
    b.kill();

    // A fresh process reads what is stored.
    let (c, _) = Proc::start(dir, "c", &toml);
    let secp = Secp256k1::verification_only();
    let received = received.lock().expect("received");
    let (mut for_a, mut for_b) = (0, 0);
    for id in &ids {
        let (status, _, stored) =
            try_request(c.addr(), "GET", &format!("/attestation/{id}"), None, None).expect("answer");
        let stored: Option<OracleAttestation> = (status == 200).then(|| serde_json::from_slice(&stored).expect("json"));
        let got = received.get(id).map(Vec::as_slice).unwrap_or_default();
        // Every attestation a client received is the stored one: one outcome, one set of signatures.
        for att in got {
            assert_eq!(
                Some(att),
                stored.as_ref(),
                "{id}: a client was told something else than is stored"
            );
        }
        // Every event can still be attested: with its outcome if it has one, else with "a".
        let outcome = stored
            .as_ref()
            .map_or_else(|| "a".to_owned(), |s| s.outcomes[0].clone());
        let (status, again) = post(
            c.addr(),
            "/sign-enum",
            &admin,
            &json!({"event_id": id, "outcome": outcome}),
        );
        assert_eq!(status, 200, "{id}: {again}");
        let again: OracleAttestation = serde_json::from_value(again).expect("attestation");
        if let Some(stored) = &stored {
            assert_eq!(&again, stored, "{id}");
        }
        again
            .validate(&secp, &announcements[id])
            .expect("verifies against its announcement");
        // The other outcome is refused.
        let other = if outcome == "a" { "b" } else { "a" };
        let (status, refused) = post(
            c.addr(),
            "/sign-enum",
            &admin,
            &json!({"event_id": id, "outcome": other}),
        );
        assert_eq!(
            (status, refused["code"].as_str()),
            (409, Some("already_attested")),
            "{id}"
        );
        if outcome == "a" {
            for_a += 1;
        } else {
            for_b += 1;
        }
    }
    assert_eq!(for_a + for_b, EVENTS);
    let (status, _, audit) = try_request(c.addr(), "GET", "/v1/audit/verify", Some(&admin), None).expect("audit");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&audit));
    c.kill();
    eprintln!(
        "{store}: {kills} kills in {:?}; {for_a} events attested a, {for_b} b",
        started.elapsed()
    );
}

#[test]
fn racing_oracles_killed_at_random_never_attest_two_outcomes_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("shared.db");
    race_and_kill(dir.path(), &format!("sqlite:{}", db.display()));
}

#[test]
fn racing_oracles_killed_at_random_never_attest_two_outcomes_on_postgres() {
    let Some(pg) = common::postgres_database("anya_oracle_race") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    race_and_kill(dir.path(), &pg.url);
}

/// Starts `anya-node` expecting it to refuse to start; returns its log.
fn refused_start(data: &Path, config: &Path) -> String {
    let log = data.with_extension("refused.log");
    let out = Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .env("ANYA_PASSPHRASE", common::PASS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .status()
        .expect("run anya-node");
    assert!(!out.success(), "anya-node started on a restored store");
    std::fs::read_to_string(&log).expect("log")
}

#[test]
fn an_older_copy_of_the_store_restored_alone_is_refused_before_any_signature() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("shared.db");
    let toml = format!(
        "store = \"sqlite:{}\"\n[hsm]\nanchor_dir = \"{}\"\n[oracle]\nenabled = true\n",
        db.display(),
        dir.path().join("anchor").display()
    );
    let (p, admin) = Proc::start(dir.path(), "a", &toml);
    let admin = admin.expect("admin");
    let m = now() as u32 - 1;
    let (status, _) = post(
        p.addr(),
        "/create-enum",
        &admin,
        &json!({"event_id": "e", "outcomes": ["a", "b"], "event_maturity_epoch": m}),
    );
    assert_eq!(status, 200);
    // The backup: the store's files, taken while the process is stopped.
    p.kill();
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).expect("dir");
    let files = ["shared.db", "shared.db-wal", "shared.db-shm"];
    for f in files {
        if dir.path().join(f).exists() {
            std::fs::copy(dir.path().join(f), backup.join(f)).expect("copy");
        }
    }
    p.kill_and_restart();
    let (status, att) = post(
        p.addr(),
        "/sign-enum",
        &admin,
        &json!({"event_id": "e", "outcome": "a"}),
    );
    assert_eq!(status, 200, "{att}");
    p.kill();
    // The older copy comes back alone (the anchor stays): refused at start.
    for f in files {
        let _ = std::fs::remove_file(dir.path().join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), dir.path().join(f)).expect("restore");
        }
    }
    let log = refused_start(&p.data, &p.config);
    assert!(log.contains("rolled back"), "{log}");
    let _: Value = att;
}
