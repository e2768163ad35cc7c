//! A real HTTP/1.1 server on a loopback port that answers every request with one reply, which
//! the test may change while it runs: price feeds that agree, disagree, go stale, slow or
//! down, for the oracle's tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this JSON body.
    Body(String),
    /// This status with a small JSON body.
    Status(u16),
    /// Wait, then 200 with this body.
    Slow(Duration, String),
}

/// A server on `127.0.0.1`, answering until the test process ends.
#[derive(Debug, Clone)]
pub struct HttpServer {
    url: String,
    reply: Arc<Mutex<Reply>>,
}

impl HttpServer {
    /// Starts one answering every request with `reply`, at `http://127.0.0.1:<port>/ticker`.
    pub fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let shared = Arc::new(Mutex::new(reply));
        let replies = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let reply = replies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                thread::spawn(move || answer(stream, &reply));
            }
        });
        Self {
            url: format!("http://{addr}/ticker"),
            reply: shared,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers from now on with `reply`.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reply;
    }
}

fn answer(mut stream: TcpStream, reply: &Reply) {
    // The test may be gone before a slow reply; every error here just ends the thread.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = match reply {
        Reply::Body(body) => (200, body.clone()),
        Reply::Status(status) => (*status, r#"{"error":"unavailable"}"#.to_owned()),
        Reply::Slow(delay, body) => {
            thread::sleep(*delay);
            (200, body.clone())
        }
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

/// A loopback URL on which connections are refused (a port bound, then released).
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    let addr = listener.local_addr().expect("bound listener has an address");
    drop(listener);
    format!("http://{addr}/ticker")
}
