//! [`MockServer`]: a real WebSocket server on `127.0.0.1`, and the state its
//! threads share.
//!
//! The acceptor thread's loop lives in `accept.rs`, each connection thread's in
//! `connection.rs`; this file owns the handle, the builder and the shared state
//! they drive.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::accept::{self, AcceptContext};
use super::matcher::Matcher;
use super::tls::TestCertificates;
use crate::{CloseFrame, Error, Message, Result};

/// How long `restart` (or a builder with a fixed port) keeps retrying a bind
/// that fails with "address in use".
const REBIND_PATIENCE: Duration = Duration::from_secs(2);
/// How long `simulate_disconnect(Silent)` waits for the connections to go quiet.
const SILENCE_PATIENCE: Duration = Duration::from_secs(2);
/// How many received messages an assertion failure lists (the most recent ones).
const LISTED_MESSAGES: usize = 50;
/// How many characters of each message an assertion failure shows.
const SHOWN_CHARS: usize = 200;

/// A handler: maps each data message a client sends to the server's answer.
pub(super) type Handler = Arc<dyn Fn(&Message) -> Reply + Send + Sync>;

/// What the server answers to one message from a client (the value a handler returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send nothing back.
    None,
    /// Send one text message.
    Text(String),
    /// Send one binary message.
    Binary(Vec<u8>),
    /// Send these messages, in order.
    Many(Vec<Message>),
    /// Close the connection with this code and reason (the reason is cut to 123 bytes,
    /// the most a close frame carries).
    Close(u16, String),
}

impl From<Message> for Reply {
    fn from(m: Message) -> Self {
        match m {
            Message::Text(t) => Reply::Text(t),
            Message::Binary(b) => Reply::Binary(b),
        }
    }
}

impl From<&str> for Reply {
    fn from(s: &str) -> Self {
        Reply::Text(s.to_owned())
    }
}

impl From<String> for Reply {
    fn from(s: String) -> Self {
        Reply::Text(s)
    }
}

/// How [`MockServer::simulate_disconnect`] ends the open connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// A close handshake with code 1000 (normal closure).
    Normal,
    /// A close handshake with code 1001 (going away), as a server shutting down sends.
    GoingAway,
    /// A close handshake with this code and reason (cut to 123 bytes).
    Code(u16, String),
    /// The TCP connection is shut down in both directions with no close frame:
    /// the client sees end-of-stream (or a reset) in the middle of the session.
    Abrupt,
    /// Half-open: the server stops reading and answering (no pongs, no echoes, no
    /// injected messages) but keeps the socket open until [`MockServer::stop`] or drop.
    /// This is what a dead peer behind a NAT looks like; only heartbeats detect it.
    Silent,
}

/// The opening request of one WebSocket upgrade, as the server saw it.
#[derive(Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The request target: the path with its query string, e.g. `/ws?token=abc`.
    pub path: String,
    /// The request headers in the order received; names in lowercase, values as
    /// (lossy) UTF-8.
    pub headers: Vec<(String, String)>,
}

impl HandshakeInfo {
    /// The value of the first header called `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query string (after `?`), if the request had one.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

impl fmt::Debug for HandshakeInfo {
    // Upgrade requests carry credentials (Authorization, API keys, cookies): the
    // public fields give tests the real values, Debug (and so logs) never does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'a>(&'a [(String, String)]);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for (name, value) in self.0 {
                    if is_sensitive_header(name) {
                        list.entry(&(name.as_str(), "[REDACTED]"));
                    } else {
                        list.entry(&(name.as_str(), value.as_str()));
                    }
                }
                list.finish()
            }
        }
        let path = match self.path.split_once('?') {
            Some((p, _)) => format!("{p}?[REDACTED]"),
            None => self.path.clone(),
        };
        f.debug_struct("HandshakeInfo")
            .field("path", &path)
            .field("headers", &Headers(&self.headers))
            .finish()
    }
}

fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "key",
        "token",
        "secret",
        "sign",
        "pass",
        "auth",
    ]
    .iter()
    .any(|word| name.contains(word))
        && !name.starts_with("sec-websocket-")
}

/// What a connection thread is asked to do by the handle.
pub(super) enum Command {
    /// Send this message to the client.
    Send(Message),
    /// Run the close handshake with this code and reason.
    Close(u16, String),
    /// Stop reading and answering; keep the socket open. The thread signals on
    /// the sender once it has stopped reading.
    Silent(Sender<()>),
}

/// One accepted TCP connection, as the handle sees it.
pub(super) struct ConnEntry {
    /// Commands to the connection's thread. Dropping it (removing the entry)
    /// tells the thread to end.
    pub(super) commands: Sender<Command>,
    /// A clone of the socket, so that the handle can shut it down while the
    /// thread is blocked in a handshake, a read or a write.
    pub(super) socket: TcpStream,
    /// The WebSocket upgrade was accepted.
    pub(super) upgraded: bool,
    /// The connection went silent (half-open).
    pub(super) silent: bool,
}

/// The open connections of the server.
pub(super) struct Registry {
    /// False while the server is stopped or stopping: no connection may register.
    pub(super) accepting: bool,
    pub(super) conns: HashMap<u64, ConnEntry>,
}

/// What the server has seen, for the assertions.
pub(super) struct Observed {
    pub(super) received: Vec<Message>,
    /// How many times `received` was cleared (lets a waiter notice a clear).
    pub(super) clears: u64,
    pub(super) close_frames: Vec<CloseFrame>,
    pub(super) total_connections: usize,
    pub(super) pings: usize,
    pub(super) last_request: Option<HandshakeInfo>,
}

/// The server's behaviour, changeable at any time.
pub(super) struct Settings {
    pub(super) handler: Handler,
    pub(super) reply_delay: Duration,
    pub(super) refuse: Option<u16>,
}

/// State shared by the handle, the acceptor and the connection threads.
///
/// Lock order: there is none, because no code path holds two of `observed`,
/// `registry` and `settings` at once, and none holds any of them across I/O
/// or a call into user code (handlers and predicates run unlocked).
pub(super) struct Shared {
    pub(super) observed: Mutex<Observed>,
    /// Notified on every change of `observed`.
    pub(super) changed: Condvar,
    pub(super) registry: Mutex<Registry>,
    pub(super) settings: Mutex<Settings>,
    pub(super) next_conn_id: AtomicU64,
}

impl Shared {
    fn new(handler: Handler, reply_delay: Duration) -> Shared {
        Shared {
            observed: Mutex::new(Observed {
                received: Vec::new(),
                clears: 0,
                close_frames: Vec::new(),
                total_connections: 0,
                pings: 0,
                last_request: None,
            }),
            changed: Condvar::new(),
            registry: Mutex::new(Registry {
                accepting: false,
                conns: HashMap::new(),
            }),
            settings: Mutex::new(Settings {
                handler,
                reply_delay,
                refuse: None,
            }),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// Change `observed` and wake every waiter.
    pub(super) fn observe(&self, f: impl FnOnce(&mut Observed)) {
        f(&mut self.observed.lock());
        self.changed.notify_all();
    }

    /// Register a freshly accepted connection; false when the server is stopping.
    pub(super) fn register(&self, id: u64, entry: ConnEntry) -> bool {
        let mut registry = self.registry.lock();
        if !registry.accepting {
            return false;
        }
        registry.conns.insert(id, entry);
        true
    }

    /// Forget a connection (its thread is ending). Drops the socket clone.
    pub(super) fn unregister(&self, id: u64) {
        let entry = self.registry.lock().conns.remove(&id);
        drop(entry);
    }

    /// Mark a connection as upgraded and count it.
    pub(super) fn upgraded(&self, id: u64) {
        if let Some(entry) = self.registry.lock().conns.get_mut(&id) {
            entry.upgraded = true;
        }
        self.observe(|o| o.total_connections += 1);
    }

    pub(super) fn handler(&self) -> Handler {
        Arc::clone(&self.settings.lock().handler)
    }

    pub(super) fn reply_delay(&self) -> Duration {
        self.settings.lock().reply_delay
    }

    pub(super) fn refuse_status(&self) -> Option<u16> {
        self.settings.lock().refuse
    }
}

/// The handshake material of a TLS server.
struct TlsSetup {
    acceptor: native_tls::TlsAcceptor,
    ca_pem: String,
}

/// The threads of a running server.
struct Running {
    acceptor: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    /// Never sent on: dropping it wakes every thread sleeping on a reply delay.
    shutdown: Sender<()>,
}

/// A real WebSocket server on `127.0.0.1` for tests: echo by default, scriptable
/// replies, fault injection, and assertions on what clients sent.
///
/// It binds an ephemeral port (unless [`MockServerBuilder::port`] says
/// otherwise), runs one acceptor thread (`zen-ws-mock-accept`) and, per
/// connection, a thread that serves it (`zen-ws-mock-conn-N`) and one that
/// reads its socket (`zen-ws-mock-read-N`); idle connections cost no CPU, and
/// injected messages go out at once. [`stop`](Self::stop) (and drop) closes
/// every connection and joins every thread. Counters and received messages survive a
/// [`restart`](Self::restart), so a test can see a client reconnect.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::testing::MockServer;
///
/// let server = MockServer::start()?;
/// let (mut ws, _response) = tungstenite::connect(server.url())?;
/// ws.send(tungstenite::Message::text("hi"))?;
/// let echo = ws.read()?;
/// assert_eq!(echo.to_text()?, "hi");
///
/// server.assert_message_sent("hi", Duration::from_secs(2))?;
/// assert_eq!(server.total_connections(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Scripted replies and faults:
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::testing::{Disconnect, MockServer, Reply};
///
/// let server = MockServer::start()?;
/// server.set_handler(|m| match m.as_text() {
///     Some("ping") => Reply::Text("pong".into()),
///     Some("bye") => Reply::Close(1000, "see you".into()),
///     _ => Reply::None,
/// });
/// let (mut ws, _) = tungstenite::connect(server.url())?;
/// ws.send(tungstenite::Message::text("ping"))?;
/// assert_eq!(ws.read()?.to_text()?, "pong");
///
/// assert_eq!(server.inject_text("tick"), 1);
/// assert_eq!(ws.read()?.to_text()?, "tick");
///
/// server.simulate_disconnect(Disconnect::GoingAway);
/// match ws.read()? {
///     tungstenite::Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
///     other => panic!("expected a close frame, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<TlsSetup>,
    running: Option<Running>,
}

/// Configures and starts a [`MockServer`]; made by [`MockServer::builder`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct MockServerBuilder {
    tls: bool,
    handler: Option<Handler>,
    reply_delay: Duration,
    port: u16,
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        MockServerBuilder {
            tls: false,
            handler: None,
            reply_delay: Duration::ZERO,
            port: 0,
        }
    }
}

impl MockServerBuilder {
    /// Serve `wss://` with a certificate signed by a CA made at run time (see
    /// [`MockServer::ca_certificate_pem`]). Defaults to `false` (plain `ws://`).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Answer each data message with `f` (see [`MockServer::set_handler`]).
    /// Defaults to echo: text back as the same text, binary as the same binary.
    pub fn handler(mut self, f: impl Fn(&Message) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Some(Arc::new(f));
        self
    }

    /// Wait this long before every reply and every pong (see
    /// [`MockServer::set_reply_delay`]). Defaults to zero.
    pub fn reply_delay(mut self, delay: Duration) -> Self {
        self.reply_delay = delay;
        self
    }

    /// Listen on this port of `127.0.0.1`. If the port is busy, binding is retried
    /// for about two seconds. Defaults to `0`: an ephemeral port chosen by the OS,
    /// which is what tests should use.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Bind, spawn the acceptor thread and return the running server.
    ///
    /// Fails with [`Error::Io`] if the port cannot be bound and with
    /// [`Error::Tls`] if the test certificates cannot be made or loaded.
    pub fn start(self) -> Result<MockServer> {
        let tls = if self.tls {
            let certs = TestCertificates::shared()?;
            Some(TlsSetup {
                acceptor: certs.acceptor()?,
                ca_pem: certs.ca_pem,
            })
        } else {
            None
        };
        let handler = self.handler.unwrap_or_else(|| Arc::new(echo));
        let requested = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
        let listener = bind(requested)?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the mock server's address", e))?;
        let mut server = MockServer {
            shared: Arc::new(Shared::new(handler, self.reply_delay)),
            addr,
            tls,
            running: None,
        };
        server.launch(listener)?;
        Ok(server)
    }
}

impl fmt::Debug for MockServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServerBuilder")
            .field("tls", &self.tls)
            .field("handler", &self.handler.as_ref().map(|_| "custom"))
            .field("reply_delay", &self.reply_delay)
            .field("port", &self.port)
            .finish()
    }
}

/// The default handler.
fn echo(m: &Message) -> Reply {
    Reply::from(m.clone())
}

/// Bind `addr`; for a fixed port, retry "address in use" for a while, since the
/// previous listener on it (our own, before a restart) may be closing.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let started = Instant::now();
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && started.elapsed() < REBIND_PATIENCE =>
            {
                // No event tells us the port is free again: polling is the only way.
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("binding the mock server's listener", e)),
        }
    }
}

/// The deadline `timeout` from now (far in the future if that overflows).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// One message, shortened for an assertion failure.
fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => {
            let cut: String = t.chars().take(SHOWN_CHARS).collect();
            if cut.len() < t.len() {
                format!("text {cut:?}… ({} bytes)", t.len())
            } else {
                format!("text {cut:?}")
            }
        }
        Message::Binary(b) => {
            let hex: Vec<String> = b
                .iter()
                .take(SHOWN_CHARS / 3)
                .map(|x| format!("{x:02x}"))
                .collect();
            let more = if b.len() > SHOWN_CHARS / 3 {
                " …"
            } else {
                ""
            };
            format!("binary ({} bytes) [{}{more}]", b.len(), hex.join(" "))
        }
    }
}

/// The received messages, listed for an assertion failure.
fn list_received(received: &[Message]) -> String {
    if received.is_empty() {
        return "nothing was received".to_owned();
    }
    let skip = received.len().saturating_sub(LISTED_MESSAGES);
    let mut out = format!("received {} message(s)", received.len());
    if skip > 0 {
        out.push_str(&format!(", the last {LISTED_MESSAGES} shown"));
    }
    out.push(':');
    for (i, m) in received.iter().enumerate().skip(skip) {
        out.push_str(&format!("\n  [{}] {}", i + 1, describe(m)));
    }
    out
}

impl MockServer {
    /// Start a plain `ws://` echo server on an ephemeral port.
    ///
    /// Fails with [`Error::Io`] if no port can be bound.
    pub fn start() -> Result<MockServer> {
        MockServer::builder().start()
    }

    /// Start a `wss://` echo server whose certificate is signed by a CA made at
    /// run time; trust [`ca_certificate_pem`](Self::ca_certificate_pem) in the client.
    /// The CA is made once per process and shared by every TLS server.
    ///
    /// Fails with [`Error::Io`] if no port can be bound and [`Error::Tls`] if
    /// the certificates cannot be made.
    pub fn start_tls() -> Result<MockServer> {
        MockServer::builder().tls(true).start()
    }

    /// A builder for a server with a custom handler, delay, port or TLS.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::default()
    }

    /// The URL clients connect to: `ws://127.0.0.1:PORT/`, or for TLS
    /// `wss://localhost:PORT/` (the certificate covers `localhost` and `127.0.0.1`).
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("wss://localhost:{}/", self.addr.port()),
            None => format!("ws://{}/", self.addr),
        }
    }

    /// The address the server listens on (`127.0.0.1:PORT`); it stays the same
    /// across [`restart`](Self::restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA a client must trust to reach a TLS server; `None` for `ws://`.
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    /// Answer each data message from now on with `f`.
    ///
    /// The handler runs on the connection's thread, after the message was recorded
    /// (so [`received`](Self::received) already lists it) and before the reply
    /// delay. A handler that panics gets its connection closed with code 1011.
    pub fn set_handler(&self, f: impl Fn(&Message) -> Reply + Send + Sync + 'static) {
        self.shared.settings.lock().handler = Arc::new(f);
    }

    /// Make a slow server: from now on, wait `delay` after reading a frame and
    /// before writing its reply, and likewise before each pong. Injected messages
    /// are not delayed. `Duration::ZERO` turns the delay off.
    pub fn set_reply_delay(&self, delay: Duration) {
        self.shared.settings.lock().reply_delay = delay;
    }

    /// Send `text` to every open connection (silent ones excepted); returns how
    /// many connections it was queued to.
    pub fn inject_text(&self, text: &str) -> usize {
        self.inject(Message::Text(text.to_owned()))
    }

    /// Send `data` as a binary message to every open connection (silent ones
    /// excepted); returns how many connections it was queued to.
    pub fn inject_binary(&self, data: &[u8]) -> usize {
        self.inject(Message::Binary(data.to_vec()))
    }

    fn inject(&self, message: Message) -> usize {
        let registry = self.shared.registry.lock();
        registry
            .conns
            .values()
            .filter(|c| c.upgraded && !c.silent)
            .filter(|c| c.commands.send(Command::Send(message.clone())).is_ok())
            .count()
    }

    /// Wait until some message received from a client (since the start, or since
    /// the last [`clear_received`](Self::clear_received)) matches `m`, and return it.
    ///
    /// `m` is anything that converts into a [`Matcher`]: `"exact text"`, a
    /// `serde_json::Value` (JSON subset), a `regex::Regex`, or
    /// [`Matcher::predicate`]. Waits on a condition variable, not by polling.
    ///
    /// Fails with [`Error::Assertion`] after `timeout`; the text lists what was
    /// received (the last 50 messages, each cut to 200 characters).
    pub fn assert_message_sent(&self, m: impl Into<Matcher>, timeout: Duration) -> Result<Message> {
        let matcher = m.into();
        let deadline = deadline_after(timeout);
        let mut observed = self.shared.observed.lock();
        let mut clears = observed.clears;
        let mut scanned = 0;
        let mut timed_out = false;
        loop {
            if observed.clears != clears || scanned > observed.received.len() {
                clears = observed.clears;
                scanned = 0;
            }
            if scanned < observed.received.len() {
                let fresh = observed.received[scanned..].to_vec();
                scanned = observed.received.len();
                // The matcher may be a user predicate: never run it under the lock.
                let found = MutexGuard::unlocked(&mut observed, || {
                    fresh.into_iter().find(|m| matcher.matches(m))
                });
                if let Some(found) = found {
                    return Ok(found);
                }
                continue;
            }
            if timed_out {
                return Err(Error::Assertion(format!(
                    "no message matching {matcher:?} within {timeout:?}; {}",
                    list_received(&observed.received)
                )));
            }
            timed_out = self
                .shared
                .changed
                .wait_until(&mut observed, deadline)
                .timed_out();
        }
    }

    /// Every data message received from clients, in order (across all connections
    /// and restarts, until [`clear_received`](Self::clear_received)).
    pub fn received(&self) -> Vec<Message> {
        self.shared.observed.lock().received.clone()
    }

    /// How many data messages were received (see [`received`](Self::received)).
    pub fn received_count(&self) -> usize {
        self.shared.observed.lock().received.len()
    }

    /// Forget the received messages (counters and close frames are kept).
    pub fn clear_received(&self) {
        self.shared.observe(|o| {
            o.received.clear();
            o.clears += 1;
        });
    }

    /// Wait until at least `n` data messages were received.
    ///
    /// Fails with [`Error::Assertion`] after `timeout`, listing what was received.
    pub fn wait_for_received(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = deadline_after(timeout);
        let mut observed = self.shared.observed.lock();
        while observed.received.len() < n {
            if self
                .shared
                .changed
                .wait_until(&mut observed, deadline)
                .timed_out()
                && observed.received.len() < n
            {
                return Err(Error::Assertion(format!(
                    "expected at least {n} message(s) within {timeout:?}; {}",
                    list_received(&observed.received)
                )));
            }
        }
        Ok(())
    }

    /// How many connections are open right now (upgraded and not yet closed,
    /// silent ones included).
    pub fn connection_count(&self) -> usize {
        self.shared
            .registry
            .lock()
            .conns
            .values()
            .filter(|c| c.upgraded)
            .count()
    }

    /// How many upgrades the server accepted since it was first started
    /// (restarts keep counting). An upgrade counts once its 101 response is
    /// decided, before the client sees it.
    pub fn total_connections(&self) -> usize {
        self.shared.observed.lock().total_connections
    }

    /// Wait until [`total_connections`](Self::total_connections) is at least `total`
    /// (use it to wait for a reconnection).
    ///
    /// Fails with [`Error::Assertion`] after `timeout`.
    pub fn wait_for_connections(&self, total: usize, timeout: Duration) -> Result<()> {
        let deadline = deadline_after(timeout);
        let mut observed = self.shared.observed.lock();
        while observed.total_connections < total {
            if self
                .shared
                .changed
                .wait_until(&mut observed, deadline)
                .timed_out()
                && observed.total_connections < total
            {
                return Err(Error::Assertion(format!(
                    "expected at least {total} connection(s) within {timeout:?}; {} accepted",
                    observed.total_connections
                )));
            }
        }
        Ok(())
    }

    /// The last upgrade request (path with query string, and headers), accepted
    /// or refused; `None` before the first.
    pub fn last_request(&self) -> Option<HandshakeInfo> {
        self.shared.observed.lock().last_request.clone()
    }

    /// The close frames clients sent, in order. A close frame without a payload
    /// is listed with code 1005 (no status received) and an empty reason.
    pub fn close_frames(&self) -> Vec<CloseFrame> {
        self.shared.observed.lock().close_frames.clone()
    }

    /// How many pings clients sent (each is answered with a pong, after the reply delay).
    pub fn ping_count(&self) -> usize {
        self.shared.observed.lock().pings
    }

    /// End (or freeze) every open connection, the way `how` says; the server
    /// keeps accepting new connections.
    ///
    /// [`Disconnect::Abrupt`] and [`Disconnect::Silent`] take effect before this
    /// returns (nothing the client sends afterwards is answered); the close
    /// handshakes of the other kinds run on the connections' threads, so a
    /// message already on its way may still be answered before the close frame.
    pub fn simulate_disconnect(&self, how: Disconnect) {
        let (code, reason) = match how {
            Disconnect::Normal => (1000, String::new()),
            Disconnect::GoingAway => (1001, String::new()),
            Disconnect::Code(code, reason) => (code, reason),
            Disconnect::Abrupt => {
                let dropped: Vec<ConnEntry> = {
                    let mut registry = self.shared.registry.lock();
                    let ids: Vec<u64> = registry
                        .conns
                        .iter()
                        .filter(|(_, c)| c.upgraded)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.iter()
                        .filter_map(|id| registry.conns.remove(id))
                        .collect()
                };
                // Removing the entry also drops its command sender, which tells
                // the thread to end; the shutdown makes the end visible at once.
                for entry in dropped {
                    let _ = entry.socket.shutdown(Shutdown::Both);
                }
                return;
            }
            Disconnect::Silent => {
                let (ack, acks) = crossbeam_channel::unbounded();
                let asked = {
                    let mut registry = self.shared.registry.lock();
                    registry
                        .conns
                        .values_mut()
                        .filter(|c| c.upgraded && !c.silent)
                        .filter(|c| c.commands.send(Command::Silent(ack.clone())).is_ok())
                        .map(|c| c.silent = true)
                        .count()
                };
                drop(ack);
                // Wait until every thread stopped reading, so that nothing the
                // client sends after this call is answered. Bounded: a thread busy
                // in a reply delay or a blocked write gets there late, or ends.
                let deadline = deadline_after(SILENCE_PATIENCE);
                for _ in 0..asked {
                    if acks.recv_deadline(deadline).is_err() {
                        break;
                    }
                }
                return;
            }
        };
        let registry = self.shared.registry.lock();
        for entry in registry.conns.values().filter(|c| c.upgraded && !c.silent) {
            let _ = entry.commands.send(Command::Close(code, reason.clone()));
        }
    }

    /// `Some(status)`: answer upgrade requests with that HTTP status (and a short
    /// text body) instead of 101; a status outside 300–599 is sent as 500.
    /// `None`: accept upgrades again. Open connections are not affected.
    pub fn refuse_upgrades(&self, status: Option<u16>) {
        self.shared.settings.lock().refuse = status;
    }

    /// Close every connection (abruptly, without close frames), stop accepting,
    /// and join every thread. Does nothing if the server is already stopped;
    /// dropping the server calls it.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        drop(running.shutdown);
        let entries: Vec<ConnEntry> = {
            let mut registry = self.shared.registry.lock();
            registry.accepting = false;
            registry.conns.drain().map(|(_, entry)| entry).collect()
        };
        for entry in entries {
            // Unblocks a thread stuck in a handshake, a read or a write.
            let _ = entry.socket.shutdown(Shutdown::Both);
        }
        // The acceptor blocks in `accept`: a connection of our own wakes it, and it
        // sees the stop flag. If even connecting fails (no file descriptors left),
        // `accept` fails the same way, and the acceptor sees the flag then.
        for _ in 0..10 {
            if running.acceptor.is_finished()
                || TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                break;
            }
        }
        // The acceptor joins every connection thread before it ends.
        if running.acceptor.join().is_err() {
            log::error!("the mock server's acceptor thread panicked");
        }
    }

    /// Start again on the same port after [`stop`](Self::stop) (or stop first if
    /// running). Handler, delay, counters and received messages are kept.
    /// Binding is retried for about two seconds while the port is still in use.
    ///
    /// Fails with [`Error::Io`] if the port cannot be bound again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let listener = bind(self.addr)?;
        self.launch(listener)
    }

    /// True while the server accepts connections (between start and stop).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Spawn the acceptor on `listener`.
    fn launch(&mut self, listener: TcpListener) -> Result<()> {
        self.shared.registry.lock().accepting = true;
        let stop = Arc::new(AtomicBool::new(false));
        let (shutdown, shutdown_rx) = crossbeam_channel::bounded(0);
        let context = AcceptContext {
            shared: Arc::clone(&self.shared),
            stop: Arc::clone(&stop),
            shutdown: shutdown_rx,
            tls: self.tls.as_ref().map(|t| t.acceptor.clone()),
        };
        let spawned = thread::Builder::new()
            .name("zen-ws-mock-accept".to_owned())
            .spawn(move || accept::run(listener, context));
        match spawned {
            Ok(acceptor) => {
                self.running = Some(Running {
                    acceptor,
                    stop,
                    shutdown,
                });
                Ok(())
            }
            Err(e) => {
                self.shared.registry.lock().accepting = false;
                Err(Error::io("spawning the mock server's acceptor thread", e))
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("url", &self.url())
            .field("running", &self.is_running())
            .field("connections", &self.connection_count())
            .field("received", &self.received_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_listing_cuts_long_messages_and_keeps_the_last_ones() {
        let mut received: Vec<Message> = (0..60).map(|i| Message::from(format!("m{i}"))).collect();
        received.push(Message::from("x".repeat(1000)));
        received.push(Message::from(vec![0xabu8; 500]));
        let text = list_received(&received);
        assert!(
            text.starts_with("received 62 message(s), the last 50 shown:"),
            "{text}"
        );
        assert!(!text.contains("\"m11\""), "{text}");
        assert!(!text.contains("[12]"), "{text}");
        assert!(text.contains("[13] text \"m12\""), "{text}");
        assert!(text.contains("(1000 bytes)"), "{text}");
        assert!(text.contains("binary (500 bytes) [ab ab"), "{text}");
        assert!(text.lines().all(|l| l.len() < 260), "{text}");
        assert_eq!(list_received(&[]), "nothing was received");
    }

    #[test]
    fn handshake_debug_redacts_credentials_and_queries() {
        let info = HandshakeInfo {
            path: "/ws?token=s3cret".into(),
            headers: vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("x-api-key".into(), "s3cret".into()),
                ("sec-websocket-key".into(), "dGhlIHNhbXBsZQ==".into()),
                ("user-agent".into(), "test".into()),
            ],
        };
        let shown = format!("{info:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user-agent"), "{shown}");
        assert!(shown.contains("dGhlIHNhbXBsZQ=="), "{shown}");
        assert_eq!(info.query(), Some("token=s3cret"));
        assert_eq!(info.header("Authorization"), Some("Bearer s3cret"));
    }

    #[test]
    fn replies_convert_from_messages() {
        assert_eq!(Reply::from(Message::from("a")), Reply::Text("a".into()));
        assert_eq!(
            Reply::from(Message::from(vec![1u8])),
            Reply::Binary(vec![1])
        );
    }
}
