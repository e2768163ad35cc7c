//! Starting the real `anya-node` process and talking HTTP and WebSocket to it.
#![allow(dead_code, reason = "each test file uses part of the helpers")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const PASS: &str = "node test passphrase";

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<String>,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }
}

/// How to start a daemon beyond the defaults.
#[derive(Default)]
pub struct Options<'a> {
    /// A configuration file.
    pub config: Option<&'a Path>,
    /// More arguments.
    pub args: &'a [&'a str],
    /// Start `anya-oracle` instead of `anya-node`.
    pub oracle_only: bool,
}

/// Starts `anya-node --regtest` on `data` with a free port, its log in `data`'s sibling
/// `<data>.log`.
pub fn start(data: &Path) -> Daemon {
    start_with(data, &Options::default())
}

/// Writes `toml` to `<dir>/anya.toml` and starts the daemon with it on `<dir>/data`; returns
/// the daemon and the configuration file's path (to change it and reload).
pub fn start_configured(dir: &Path, toml: &str) -> (Daemon, PathBuf) {
    let config = dir.join("anya.toml");
    std::fs::write(&config, toml).expect("write the configuration");
    let daemon = start_with(
        &dir.join("data"),
        &Options {
            config: Some(&config),
            ..Options::default()
        },
    );
    (daemon, config)
}

/// [`start`] with options.
pub fn start_with(data: &Path, options: &Options<'_>) -> Daemon {
    let log = data.with_extension("log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let mut command = Command::new(if options.oracle_only {
        env!("CARGO_BIN_EXE_anya-oracle")
    } else {
        env!("CARGO_BIN_EXE_anya-node")
    });
    command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data);
    // With a configuration file, the file says which chain; without one, the in-process
    // regtest chain.
    match options.config {
        Some(config) => {
            command.arg("--config").arg(config);
        }
        None => {
            command.arg("--regtest");
        }
    }
    if !options.args.contains(&"--log-level") {
        command.args(["--log-level", "warn"]);
    }
    command.args(options.args);
    let mut child = command
        .env("ANYA_PASSPHRASE", PASS)
        .env_remove("ANYA_DATA_DIR")
        .env_remove("ANYA_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn anya-node");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut admin, mut addr) = (None, None);
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            panic!(
                "anya-node exited before listening: {:?}\n{}",
                child.wait(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Some(t) = line.trim().strip_prefix("admin token (shown once): ") {
            admin = Some(t.to_owned());
        }
        if let Some(a) = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
        {
            addr = Some(a.parse().expect("an address"));
        }
    }
    Daemon {
        child,
        addr: addr.expect("an address"),
        admin,
        log,
    }
}

/// One HTTP/1.1 request; returns the status, the content type and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Vec<u8>) {
    try_request(addr, method, path, token, body).expect("an HTTP answer")
}

/// [`request`], with a failed connection or a cut-off answer as an error (a killed daemon).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let cut = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned());
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, bytes) = body.unwrap_or(("", b""));
    if body.is_some() {
        head.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", bytes.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| cut("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| cut("no status"))?;
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, ctype, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("size").trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

pub fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

pub fn post(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let (status, _, out) = request(addr, "POST", path, Some(token), Some(("application/json", &bytes)));
    (status, if out.is_empty() { Value::Null } else { json_of(&out) })
}

pub fn token(addr: SocketAddr, admin: &str, body: Value) -> String {
    let (status, v) = post(addr, "/v1/tokens", admin, &body);
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

/// A GET with a token; the status and the JSON body (or `Null`).
pub fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let (status, _, out) = request(addr, "GET", path, Some(token), None);
    (status, if out.is_empty() { Value::Null } else { json_of(&out) })
}

/// A PUT of a JSON body.
pub fn put(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let (status, _, out) = request(addr, "PUT", path, Some(token), Some(("application/json", &bytes)));
    (status, if out.is_empty() { Value::Null } else { json_of(&out) })
}

/// A WebSocket client of `/v1/events`.
pub struct Events {
    socket: tungstenite::WebSocket<TcpStream>,
}

impl Events {
    /// Connects with `token`; returns it after the `hello`.
    pub fn connect(addr: SocketAddr, token: &str) -> Result<(Self, Value), tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/v1/events").into_client_request()?;
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let (socket, _) = tungstenite::client(req, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        let mut events = Self { socket };
        let hello = events.next();
        assert_eq!(hello["type"], "hello", "{hello}");
        Ok((events, hello))
    }

    /// The next message, as JSON; `None` after 30 s without one.
    pub fn try_next(&mut self) -> Option<Value> {
        loop {
            match self.socket.read() {
                Ok(tungstenite::Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("json")),
                Ok(tungstenite::Message::Close(c)) => panic!("closed: {c:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }

    /// Reads until the server closes the stream; its close reason, or `None` after 30 s.
    pub fn close_reason(&mut self) -> Option<String> {
        loop {
            match self.socket.read() {
                Ok(tungstenite::Message::Close(frame)) => {
                    return Some(frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default())
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Some(String::new())
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }

    /// The next message, as JSON.
    pub fn next(&mut self) -> Value {
        self.try_next().expect("an event within 30 s")
    }

    /// Reads until an event of type `kind` for which `pred` holds.
    pub fn until(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut skipped = Vec::new();
        while let Some(v) = self.try_next() {
            if v["type"] == kind && pred(&v) {
                return v;
            }
            skipped.push(v);
        }
        panic!("no such {kind} event; after the last one looked for came:\n{skipped:#?}");
    }
}

/// A number that differs between runs and processes, for names.
pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into())
}

/// A PostgreSQL database of its own for one test, dropped with this value.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    name: String,
    server: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.server, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// A new database on the server `.ci/run` starts (`ANYA_TEST_POSTGRES_URL`); `None` (skipped)
/// outside CI without it, a failure in CI.
pub fn postgres_database(prefix: &str) -> Option<PgDatabase> {
    let server = anya_testkit::require_env("ANYA_TEST_POSTGRES_URL", ".ci/run starts PostgreSQL")?;
    let name = format!("{prefix}_{}_{}", std::process::id(), rand_suffix());
    let mut admin = postgres::Client::connect(&server, postgres::NoTls).expect("connect to PostgreSQL");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a database");
    let (base, _) = server.rsplit_once('/').expect("a database in the URL");
    Some(PgDatabase {
        url: format!("{base}/{name}"),
        name,
        server,
    })
}
