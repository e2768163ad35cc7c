//! HTTPS on the real daemon: a self-signed certificate made on the first start and pinned by
//! the client; an operator's certificate replaced on disk and picked up by SIGHUP for new
//! connections while a connection opened before keeps working; plain HTTP on the TLS port gets
//! no answer; and plain HTTP off loopback is refused at start.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` trusting only the certificate in `cert_pem`.
fn connect(addr: SocketAddr, cert_pem: &[u8]) -> Result<Tls, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so that a certificate the client refuses is an error here.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

/// A keep-alive GET on `tls`; the status and body.
fn get(tls: &mut Tls, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").expect("write");
    tls.flush().expect("flush");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("a response head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    (cert, key, certified.cert.pem().into_bytes())
}

#[test]
fn https_with_a_self_signed_certificate_made_on_first_start() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let (d, _) = common::start_configured(dir.path(), "[tls]\nenabled = true\n");
    let admin = d.admin.clone().expect("admin");
    let cert = std::fs::read(data.join("tls/cert.pem")).expect("the certificate was made");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("tls/key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut tls = connect(d.addr, &cert).expect("a TLS connection trusting the node's certificate");
    assert_eq!(get(&mut tls, "/health/live", None).0, 200);
    assert_eq!(get(&mut tls, "/v1/keys", Some(&admin)).0, 200);
    // Plain HTTP on the TLS port is not served.
    let (status, _, _) = std::panic::catch_unwind(|| common::request(d.addr, "GET", "/health/live", None, None))
        .unwrap_or((0, String::new(), Vec::new()));
    assert_ne!(status, 200);
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_open_connections_stay() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, first) = self_signed(dir.path(), "a");
    let (d, _) = common::start_configured(
        dir.path(),
        &format!(
            "[tls]\nenabled = true\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let admin = d.admin.clone().expect("admin");
    let mut open = connect(d.addr, &first).expect("trusting the first certificate");
    assert_eq!(get(&mut open, "/v1/keys", Some(&admin)).0, 200);

    // Renew in place, then SIGHUP.
    let (_, _, second) = {
        let (c, k, pem) = self_signed(dir.path(), "b");
        std::fs::rename(&c, &cert).expect("replace cert");
        std::fs::rename(&k, &key).expect("replace key");
        (cert.clone(), key.clone(), pem)
    };
    d.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(d.addr, &second) {
            Ok(mut tls) => {
                assert_eq!(get(&mut tls, "/v1/keys", Some(&admin)).0, 200);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the renewed certificate is not served: {e}"),
        }
    }
    assert!(
        connect(d.addr, &first).is_err(),
        "new connections get the renewed certificate"
    );
    // The connection opened before the renewal still works.
    assert_eq!(get(&mut open, "/v1/keys", Some(&admin)).0, 200);
}

#[test]
fn plain_http_off_loopback_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anya-node"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("ANYA_PASSPHRASE", common::PASS)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.enabled"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
}
