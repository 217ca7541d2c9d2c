//! Helpers shared by the integration tests: a watchdog, event waits, a refused
//! port and a scriptable raw server for malformed peers.
#![allow(dead_code)] // each test binary uses a different subset

pub mod fault_proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zen_websocket::crossbeam_channel::{self, Receiver, Sender};
use zen_websocket::{Event, Message};

/// Aborts the whole test process if a test runs longer than its bound, so a hang
/// fails fast with a message instead of stalling CI. Dropping it disarms it.
pub struct Watchdog {
    cancel: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name(format!("watchdog-{name}"))
        .spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: test `{name}` exceeded {limit:?}; aborting");
                std::process::abort();
            }
        })
        .expect("spawn watchdog");
    Watchdog {
        cancel: Some(tx),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait for the first event that `pred` accepts; the skipped events are returned too.
pub fn wait_for(
    events: &Receiver<Event>,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let deadline = Instant::now() + timeout;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if pred(&e) => return (e, skipped),
            Ok(e) => skipped.push(e),
            Err(e) => panic!("no matching event within {timeout:?} ({e}); saw {skipped:#?}"),
        }
    }
}

/// Wait for the next `Disconnected` event and return its cause.
pub fn wait_disconnected(
    events: &Receiver<Event>,
    timeout: Duration,
) -> std::sync::Arc<zen_websocket::Error> {
    match wait_for(events, timeout, |e| matches!(e, Event::Disconnected { .. })).0 {
        Event::Disconnected { cause } => cause,
        _ => unreachable!("wait_for only returns a matching event"),
    }
}

/// The next text message, skipping lifecycle events.
pub fn next_text(events: &Receiver<Event>, timeout: Duration) -> String {
    match wait_for(events, timeout, |e| matches!(e, Event::Message(_))).0 {
        Event::Message(Message::Text(t)) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next message of any kind.
pub fn next_message(events: &Receiver<Event>, timeout: Duration) -> Message {
    match wait_for(events, timeout, |e| matches!(e, Event::Message(_))).0 {
        Event::Message(m) => m,
        _ => unreachable!(),
    }
}

/// A loopback port that refuses connections and that no other test can take.
///
/// A listener is bound, a connection to it is kept open, and the listener is
/// closed: the port stays in use by the live connection (so `bind(0)` never
/// hands it out again) while nothing listens on it (so a dial is refused).
pub struct RefusedPort {
    pub addr: SocketAddr,
    _held: (TcpStream, TcpStream),
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let a = TcpStream::connect(addr).expect("connect");
        let (b, _) = l.accept().expect("accept");
        drop(l);
        RefusedPort {
            addr,
            _held: (a, b),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// A raw TCP server for malformed peers: each accepted connection is handed to
/// `script` on its own thread. Threads are joined on drop (the listener is
/// woken by a dial to itself).
pub struct RawServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    pub fn start(script: impl Fn(TcpStream) + Send + Sync + 'static) -> RawServer {
        let script = Arc::new(script);
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("raw-server".into())
            .spawn(move || {
                let mut workers = Vec::new();
                for conn in l.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
                    let s = script.clone();
                    workers.push(std::thread::spawn(move || s(conn)));
                }
                for w in workers {
                    let _ = w.join();
                }
            })
            .expect("spawn raw server");
        RawServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read an HTTP upgrade request and answer it with a valid 101 response.
pub fn accept_upgrade(stream: &mut TcpStream) -> std::io::Result<()> {
    let key = read_request_key(stream)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    stream.flush()
}

/// Read the request head and return its `Sec-WebSocket-Key`.
pub fn read_request_key(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default())
}

/// An unmasked server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

static TEMP_DIR_NUMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed with everything in it
/// on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "zen-ws-test-{}-{name}-{}",
            std::process::id(),
            TEMP_DIR_NUMBER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn root(&self) -> &std::path::Path {
        &self.0
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }

    /// The names of the files in it, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("reading the temp dir")
            .map(|e| {
                e.expect("a dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
