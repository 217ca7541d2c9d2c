//! Cassettes: record a session once against the live server, then replay it
//! in tests with no network at all.
//!
//! - [`ReplayServer`] is a local WebSocket server (127.0.0.1, an ephemeral
//!   port) that plays the inbound frames of a recording, in order, to the
//!   client that connects. In strict mode it also waits for each recorded
//!   outbound frame before playing what followed it, and fails the replay
//!   (close code 1008, and [`ReplayServer::verify`] returns
//!   [`Error::ReplayMismatch`]) when the client sends something else.
//! - [`Cassette`] wraps the two halves for a test: in record mode the client
//!   talks to the live server and the session is written to the cassette
//!   file; in replay mode it talks to a [`ReplayServer`] playing that file.
//!   The mode comes from code ([`Cassette::mode`]) or from the environment
//!   variable `ZEN_WS_CASSETTE` (`record`, `replay` or `auto`, the default:
//!   replay when the file exists, record otherwise).
//!
//! A cassette is an ordinary recording (see `docs/recording-format.md`):
//! what [`Config::record_to`](crate::ConfigBuilder::record_to) writes can be
//! replayed, and a cassette can be read with [`metadata`](super::metadata).

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame as WireCloseFrame;
use tungstenite::{Message as WireMessage, WebSocket};

use super::entry::{Direction, EntryKind};
use super::redact::REDACTED;
use super::replay::Recording;
use super::writer::{OpenMode, RecordFile, Recorder};
use crate::{Config, ConfigBuilder, ConfigError, Error, Result};

const LOG: &str = "zen_websocket";

/// The environment variable that picks the [`CassetteMode`] when the code
/// does not: `record`, `replay` or `auto` (any ASCII case).
pub const CASSETTE_ENV: &str = "ZEN_WS_CASSETTE";

/// How long the WebSocket handshake of a connecting client may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server waits for the client's reply to a close frame it sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write to a client that stopped reading may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a close reason can carry (125-byte control payload minus the code).
const MAX_CLOSE_REASON: usize = 123;
/// How many characters of a frame a mismatch shows.
const SHOWN_CHARS: usize = 300;

/// How fast a [`ReplayServer`] plays the recorded frames.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Timing {
    /// As fast as the client takes them (only strict waits hold them back).
    #[default]
    Instant,
    /// With the recorded gaps between entries, divided by `speed` (2.0 plays
    /// twice as fast; `f64::INFINITY` means no waiting). Each gap is measured
    /// from the moment the previous entry was played or matched, so no gap is
    /// ever shorter than recorded (at speed 1).
    Recorded {
        /// The speed-up factor; a positive number.
        speed: f64,
    },
}

/// How a [`ReplayServer`] plays a recording.
///
/// Marked `#[non_exhaustive]`: start from [`ReplayOptions::default`] and use
/// the setters (or set the fields).
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::recorder::{ReplayOptions, Timing};
/// let options = ReplayOptions::default()
///     .strict(true)
///     .timing(Timing::Recorded { speed: 10.0 })
///     .outbound_timeout(Duration::from_secs(2))
///     .ignore_field("ts");
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Instant or with the recorded gaps. Defaults to [`Timing::Instant`].
    pub timing: Timing,
    /// Wait for every recorded outbound frame, compare it with what the client
    /// sends, and fail the replay on a difference. Defaults to `false`
    /// ([`Cassette`] replays strictly by default).
    pub strict: bool,
    /// Which connection of a file that several connections recorded into (a
    /// pool) to play. Defaults to `None`: the first `conn` id in the file.
    pub conn: Option<u64>,
    /// In strict mode, how long to wait for each recorded outbound frame before
    /// failing the replay. Defaults to 10 s.
    pub outbound_timeout: Duration,
    /// In strict mode, object keys ignored (at any depth) when JSON texts are
    /// compared, such as `"ts"` or `"nonce"`. Defaults to none.
    pub ignore_fields: Vec<String>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            timing: Timing::Instant,
            strict: false,
            conn: None,
            outbound_timeout: Duration::from_secs(10),
            ignore_fields: Vec::new(),
        }
    }
}

impl ReplayOptions {
    /// Sets [`timing`](ReplayOptions::timing).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Sets [`strict`](ReplayOptions::strict).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets [`conn`](ReplayOptions::conn): play connection `id`.
    pub fn conn(mut self, id: u64) -> Self {
        self.conn = Some(id);
        self
    }

    /// Sets [`outbound_timeout`](ReplayOptions::outbound_timeout).
    pub fn outbound_timeout(mut self, timeout: Duration) -> Self {
        self.outbound_timeout = timeout;
        self
    }

    /// Adds a key to [`ignore_fields`](ReplayOptions::ignore_fields).
    pub fn ignore_field(mut self, key: impl Into<String>) -> Self {
        self.ignore_fields.push(key.into());
        self
    }

    /// Checks every field; the error names the first invalid one (`speed` or
    /// `outbound_timeout`).
    pub fn validate(&self) -> Result<()> {
        if let Timing::Recorded { speed } = self.timing {
            if speed.is_nan() || speed <= 0.0 {
                return Err(Error::Config(ConfigError::new(
                    "speed",
                    "must be a positive number",
                )));
            }
        }
        if self.outbound_timeout.is_zero() {
            return Err(Error::Config(ConfigError::new(
                "outbound_timeout",
                "must be greater than zero",
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The script: a recording turned into what the server does, step by step.
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// What the client did that a strict replay compares with the recording.
enum Got {
    Frame(Frame),
    Close(Option<u16>),
}

enum Expected {
    Frame(Frame),
    Close(Option<u16>),
}

enum Step {
    /// A connected/reconnected entry: not played, but the timing counts from it.
    Mark { at: SystemTime },
    /// Play an inbound frame.
    Send { frame: Frame, at: SystemTime },
    /// Play an inbound close frame: the connection ends.
    Close {
        code: Option<u16>,
        reason: String,
        at: SystemTime,
    },
    /// The recorded connection was lost without a close frame: drop the TCP
    /// connection, so the client reconnects as it did.
    Drop { at: SystemTime },
    /// A recorded outbound frame (1-based `index` among them).
    Expect {
        index: usize,
        what: Expected,
        at: SystemTime,
    },
}

struct Script {
    steps: Vec<Step>,
    /// `next_expect[i]`: the position of the first `Expect` at or after `i`
    /// (`steps.len()` when there is none). One entry more than `steps`.
    next_expect: Vec<usize>,
    /// Inbound frames (data and close) the script plays.
    inbound: usize,
    /// Recorded outbound frames (data and close).
    outbound: usize,
    /// The connection chosen, if the file tags connections.
    conn: Option<u64>,
}

impl Script {
    /// Reads `path` and keeps the frames of one connection (`conn`, or the
    /// first one seen). Bad lines are skipped, as everywhere else in replay.
    fn load(path: &Path, conn: Option<u64>) -> Result<Script> {
        let mut entries = Vec::new();
        let mut bad = 0usize;
        for item in Recording::open(path)? {
            match item {
                Ok(entry) => entries.push(entry),
                Err(line) => {
                    bad += 1;
                    log::warn!(target: LOG, "cassette {}: skipping {line}", path.display());
                }
            }
        }
        let chosen = conn.or_else(|| entries.iter().find_map(|e| e.conn));
        if let Some(wanted) = conn {
            if !entries.iter().any(|e| e.conn == Some(wanted)) {
                return Err(Error::Config(ConfigError::new(
                    "conn",
                    format!("{} has no entry of connection {wanted}", path.display()),
                )));
            }
        }
        let mut steps = Vec::new();
        let (mut inbound, mut outbound) = (0, 0);
        // Whether the connection being described has already ended (a
        // recorded server close, or a loss): a `disconnected` entry then
        // adds nothing.
        let mut ended = false;
        for e in entries {
            // With connection ids in the file, untagged entries belong to none.
            if chosen.is_some() && e.conn != chosen {
                continue;
            }
            let at = e.ts;
            let step = match (e.dir, e.kind) {
                (Direction::In, EntryKind::Text(t)) => Step::Send {
                    frame: Frame::Text(t),
                    at,
                },
                (Direction::In, EntryKind::Binary(b)) => Step::Send {
                    frame: Frame::Binary(b),
                    at,
                },
                (Direction::In, EntryKind::Close { code, reason }) => {
                    // The peer's reply to the client's own close is not played:
                    // tungstenite answers the client's close frame by itself.
                    if matches!(
                        steps.last(),
                        Some(Step::Expect {
                            what: Expected::Close(_),
                            ..
                        })
                    ) {
                        continue;
                    }
                    Step::Close { code, reason, at }
                }
                (Direction::Out, kind) => {
                    let what = match kind {
                        EntryKind::Text(t) => Expected::Frame(Frame::Text(t)),
                        EntryKind::Binary(b) => Expected::Frame(Frame::Binary(b)),
                        EntryKind::Close { code, .. } => Expected::Close(code),
                        _ => continue,
                    };
                    outbound += 1;
                    Step::Expect {
                        index: outbound,
                        what,
                        at,
                    }
                }
                (_, EntryKind::Connected { .. } | EntryKind::Reconnected { .. }) => {
                    ended = false;
                    Step::Mark { at }
                }
                (_, EntryKind::Disconnected { .. }) if !ended => Step::Drop { at },
                _ => continue,
            };
            ended |= matches!(step, Step::Close { .. } | Step::Drop { .. });
            if matches!(step, Step::Send { .. } | Step::Close { .. }) {
                inbound += 1;
            }
            steps.push(step);
        }
        let mut next_expect = vec![steps.len(); steps.len() + 1];
        for i in (0..steps.len()).rev() {
            next_expect[i] = if matches!(steps[i], Step::Expect { .. }) {
                i
            } else {
                next_expect[i + 1]
            };
        }
        log::debug!(
            target: LOG,
            "cassette {}: {inbound} inbound and {outbound} outbound frames of connection {chosen:?} ({bad} bad lines)",
            path.display()
        );
        Ok(Script {
            steps,
            next_expect,
            inbound,
            outbound,
            conn: chosen,
        })
    }

    /// The first expectation at or after `cursor`.
    fn expectation_from(&self, cursor: usize) -> Option<(usize, usize, &Expected)> {
        let pos = *self.next_expect.get(cursor)?;
        match self.steps.get(pos) {
            Some(Step::Expect { index, what, .. }) => Some((pos, *index, what)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Comparison and description (pure).
// ---------------------------------------------------------------------------

/// Whether what the client did is what the recording says it did.
fn matches_expected(expected: &Expected, got: &Got, ignore: &[String]) -> bool {
    match (expected, got) {
        (Expected::Close(a), Got::Close(b)) => a == b,
        (Expected::Frame(Frame::Binary(a)), Got::Frame(Frame::Binary(b))) => a == b,
        (Expected::Frame(Frame::Text(a)), Got::Frame(Frame::Text(b))) => text_matches(a, b, ignore),
        _ => false,
    }
}

/// Exact text; or JSON texts equal as values (key order ignored, `ignore`
/// keys dropped at any depth); or, since recordings are redacted, a
/// `[REDACTED]` in the recorded text stands for any value.
fn text_matches(expected: &str, received: &str, ignore: &[String]) -> bool {
    if expected == received && ignore.is_empty() {
        return true;
    }
    let looks_json = |s: &str| matches!(s.trim_start().as_bytes().first(), Some(b'{' | b'['));
    if looks_json(expected) && looks_json(received) {
        if let (Ok(a), Ok(b)) = (
            serde_json::from_str::<Value>(expected),
            serde_json::from_str::<Value>(received),
        ) {
            return json_matches(&a, &b, ignore);
        }
    }
    expected == received || redacted_glob(expected, received)
}

fn json_matches(expected: &Value, received: &Value, ignore: &[String]) -> bool {
    if expected.as_str() == Some(REDACTED) {
        return true;
    }
    match (expected, received) {
        (Value::Object(a), Value::Object(b)) => {
            let kept = |k: &String| !ignore.iter().any(|i| i == k);
            let a_keys = a.keys().filter(|k| kept(k)).count();
            let b_keys = b.keys().filter(|k| kept(k)).count();
            a_keys == b_keys
                && a.iter()
                    .filter(|(k, _)| kept(k))
                    .all(|(k, va)| b.get(k).is_some_and(|vb| json_matches(va, vb, ignore)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(va, vb)| json_matches(va, vb, ignore))
        }
        (a, b) => a == b,
    }
}

/// `pattern` with every `[REDACTED]` standing for any run of characters.
fn redacted_glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split(REDACTED).collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    // Both ends are char boundaries: one ends a matched prefix, the other
    // starts a matched suffix, and the length check keeps them in order.
    let Some(mut rest) = text.get(first.len()..text.len() - last.len()) else {
        return false;
    };
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = rest.get(i + middle.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    true
}

fn describe_frame(frame: &Frame) -> String {
    match frame {
        Frame::Text(t) => {
            let cut: String = t.chars().take(SHOWN_CHARS).collect();
            if cut.len() < t.len() {
                format!("text {cut}… ({} bytes)", t.len())
            } else {
                format!("text {cut}")
            }
        }
        Frame::Binary(b) => {
            let hex: Vec<String> = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
            let more = if b.len() > 32 { " …" } else { "" };
            format!("binary ({} bytes) [{}{more}]", b.len(), hex.join(" "))
        }
    }
}

fn describe_close(code: Option<u16>) -> String {
    match code {
        Some(code) => format!("close {code}"),
        None => "close (no code)".to_owned(),
    }
}

fn describe_expected(e: &Expected) -> String {
    match e {
        Expected::Frame(f) => describe_frame(f),
        Expected::Close(code) => describe_close(*code),
    }
}

fn describe_got(g: &Got) -> String {
    match g {
        Got::Frame(f) => describe_frame(f),
        Got::Close(code) => describe_close(*code),
    }
}

/// `reason` cut to what a close frame can carry, on a char boundary.
fn cut_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

// ---------------------------------------------------------------------------
// The replay server.
// ---------------------------------------------------------------------------

/// The first mismatch of a replay.
#[derive(Debug, Clone)]
struct Mismatch {
    index: usize,
    expected: String,
    received: String,
}

impl Mismatch {
    fn to_error(&self) -> Error {
        Error::ReplayMismatch {
            index: self.index,
            expected: self.expected.clone(),
            received: self.received.clone(),
        }
    }
}

/// How far the replay got; guarded by `Shared::progress`.
#[derive(Debug, Default)]
struct Progress {
    /// The next step to run.
    cursor: usize,
    failure: Option<Mismatch>,
    /// A client is connected (handshake done) right now.
    connected: bool,
}

/// State shared by the handle and the server thread.
///
/// Lock order: `current` is never held together with `progress`.
struct Shared {
    stopping: AtomicBool,
    /// A clone of the socket being served, so `stop` can cut a blocked read.
    current: Mutex<Option<TcpStream>>,
    progress: Mutex<Progress>,
    /// Notified on every change of `progress`.
    changed: Condvar,
    played: AtomicU64,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock());
        self.changed.notify_all();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

static SERVER_NUMBER: AtomicU64 = AtomicU64::new(1);

/// A local WebSocket server that plays a recording to the client that
/// connects: the recorded inbound frames (`dir: in`, text and binary), in
/// order, and a recorded close frame from the server as a close with its code.
///
/// One thread (`zen-ws-replay-N`) accepts and serves one connection at a
/// time, on `127.0.0.1` and an ephemeral port. When a connection ends before
/// the recording does (the recorded server closed it and the client
/// reconnects, or the link dropped), the next connection carries on where the
/// last one stopped. After the last frame the connection stays open until the
/// client closes it. [`stop`](ReplayServer::stop) and drop close it and join
/// the thread.
///
/// Lifecycle entries are not played: `connected`/`reconnected` only anchor
/// the timing, and a `disconnected` entry that no recorded server close came
/// before (the link was lost) makes the server drop the TCP connection at
/// that point, so that the client reconnects as it did while recording.
/// Frames of other connections of the file are skipped (with `conn` ids in
/// the file, entries without one belong to no connection).
///
/// **Strict mode** ([`ReplayOptions::strict`]): before playing the frames that
/// followed a recorded outbound frame, the server waits (at most
/// [`ReplayOptions::outbound_timeout`]) for the client to send that frame and
/// compares: texts exactly, JSON texts as JSON values (key order and
/// [`ReplayOptions::ignore_fields`] ignored), a `[REDACTED]` in the recording
/// matching any value, binary byte for byte, a close frame by its code. A
/// client that closes early, sends something else or sends more than the
/// recording has fails the replay: the server closes with code 1008 (policy)
/// and [`verify`](ReplayServer::verify) returns [`Error::ReplayMismatch`].
///
/// The whole recording is loaded when the server starts.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::recorder::{Direction, OpenMode, Recorder, ReplayOptions, ReplayServer};
/// use zen_websocket::{Client, Config, Event, Message};
///
/// let path = std::env::temp_dir().join(format!("zen-doc-replay-server-{}.jsonl", std::process::id()));
/// let file = Recorder::global()?.open(&path, OpenMode::Truncate)?;
/// file.record_text(Direction::Out, r#"{"op":"hello"}"#, None);
/// file.record_text(Direction::In, r#"{"greeting":"hi"}"#, None);
/// file.flush()?;
///
/// let server = ReplayServer::start(&path, ReplayOptions::default().strict(true))?;
/// let client = Client::connect(Config::new(server.url())?)?;
/// client.send_text(r#"{ "op": "hello" }"#)?; // the same JSON value
/// let reply = loop {
///     match client.events().recv_timeout(Duration::from_secs(5)) {
///         Ok(Event::Message(Message::Text(t))) => break t,
///         Ok(_) => continue,
///         Err(e) => panic!("no reply: {e}"),
///     }
/// };
/// assert_eq!(reply, r#"{"greeting":"hi"}"#);
/// client.close()?;
/// server.verify()?;
/// assert_eq!(server.frames_played(), 1);
/// # drop(file);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub struct ReplayServer {
    addr: SocketAddr,
    path: PathBuf,
    script: Arc<Script>,
    options: ReplayOptions,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ReplayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayServer")
            .field("url", &self.url())
            .field("path", &self.path)
            .field("conn", &self.script.conn)
            .field("strict", &self.options.strict)
            .field("frames_played", &self.frames_played())
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl ReplayServer {
    /// Loads the recording at `path` and starts serving it.
    ///
    /// Fails with [`Error::Storage`] if the file cannot be read, with
    /// [`Error::Config`] for invalid `options` or a `conn` the file does not
    /// have, and with [`Error::Io`] if no port can be bound.
    pub fn start(path: impl AsRef<Path>, options: ReplayOptions) -> Result<ReplayServer> {
        options.validate()?;
        let path = path.as_ref().to_path_buf();
        let script = Arc::new(Script::load(&path, options.conn)?);
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding the replay server's listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the replay server's address", e))?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            current: Mutex::new(None),
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            played: AtomicU64::new(0),
        });
        let worker = Worker {
            listener,
            shared: Arc::clone(&shared),
            script: Arc::clone(&script),
            options: options.clone(),
            buffer: VecDeque::new(),
            cursor: 0,
        };
        let name = format!(
            "zen-ws-replay-{}",
            SERVER_NUMBER.fetch_add(1, Ordering::Relaxed)
        );
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())
            .map_err(|e| Error::io("spawning the replay server's thread", e))?;
        log::debug!(target: LOG, "replaying {} on {addr}", path.display());
        Ok(ReplayServer {
            addr,
            path,
            script,
            options,
            shared,
            thread: Some(thread),
        })
    }

    /// The URL clients connect to: `ws://127.0.0.1:PORT/` (any path is accepted).
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The recording it plays.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection of the file it plays (`None`: the file has no `conn` ids).
    pub fn conn(&self) -> Option<u64> {
        self.script.conn
    }

    /// How many inbound frames (text, binary and close) it has sent so far.
    pub fn frames_played(&self) -> u64 {
        self.shared.played.load(Ordering::Relaxed)
    }

    /// How many inbound frames (text, binary and close) the recording has for
    /// the chosen connection: what [`frames_played`](Self::frames_played)
    /// reaches when everything was played.
    pub fn frames_to_play(&self) -> usize {
        self.script.inbound
    }

    /// How many outbound frames (text, binary and close) the recording has for
    /// the chosen connection: what a strict replay waits for.
    pub fn frames_expected(&self) -> usize {
        self.script.outbound
    }

    /// `Ok` unless the replay failed. Call it after the client is closed.
    ///
    /// Returns [`Error::ReplayMismatch`] with the recorded (expected) and the
    /// received frame for the first mismatch or timeout, and in strict mode
    /// also when recorded outbound frames were never sent. While a client is
    /// still connected and the server waits for an outbound frame, this waits
    /// too, at most `outbound_timeout` (the server's own deadline), so that a
    /// frame on its way is not reported as missing.
    pub fn verify(&self) -> Result<()> {
        let deadline = Instant::now().checked_add(
            self.options
                .outbound_timeout
                .saturating_add(Duration::from_millis(500)),
        );
        let mut progress = self.shared.progress.lock();
        loop {
            if let Some(failure) = &progress.failure {
                return Err(failure.to_error());
            }
            if !self.options.strict {
                return Ok(());
            }
            let Some((_, index, what)) = self.script.expectation_from(progress.cursor) else {
                return Ok(());
            };
            let running = self.thread.is_some() && !self.shared.is_stopping();
            if !progress.connected
                || !running
                || match deadline {
                    Some(d) => self.shared.changed.wait_until(&mut progress, d).timed_out(),
                    None => {
                        self.shared.changed.wait(&mut progress);
                        false
                    }
                }
            {
                if progress.failure.is_some() {
                    continue;
                }
                return Err(Error::ReplayMismatch {
                    index,
                    expected: describe_expected(what),
                    received: "(nothing: the client never sent it)".to_owned(),
                });
            }
        }
    }

    /// Closes the connection being served (without a close frame), stops
    /// accepting and joins the thread. Idempotent; dropping the server calls it.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(socket) = self.shared.current.lock().as_ref() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // The thread may block in `accept`: a connection of our own wakes it,
        // and it sees the flag. A serving thread sees the shut socket instead.
        for _ in 0..10 {
            if thread.is_finished()
                || TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                break;
            }
        }
        if thread.join().is_err() {
            log::error!(target: LOG, "the replay server's thread panicked");
        }
        self.shared.update(|p| p.connected = false);
        log::debug!(target: LOG, "replay server on {} stopped", self.addr);
    }
}

impl Drop for ReplayServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The recording closed it (a recorded server close).
    ScriptClosed,
    /// The socket failed or reached its end without a close frame.
    Lost,
    /// The replay failed; the connection was closed with 1008.
    Failed,
    /// `stop` was called.
    Stopped,
}

/// What the server thread owns.
struct Worker {
    listener: TcpListener,
    shared: Arc<Shared>,
    script: Arc<Script>,
    options: ReplayOptions,
    /// In strict mode, frames the client sent before the script reached their
    /// expectation, oldest first. Kept across connections of one replay.
    buffer: VecDeque<Frame>,
    cursor: usize,
}

/// What one wait on the client produced.
enum Heard {
    Frame(Frame),
    Close(Option<u16>),
    Lost,
    Timeout,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.shared.is_stopping() {
                break;
            }
            let accepted = self.listener.accept();
            if self.shared.is_stopping() {
                break;
            }
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    log::warn!(target: LOG, "replay server: accept failed: {e}");
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let end = self.connection(stream);
            log::debug!(target: LOG, "replay server: connection ended ({end:?})");
            *self.shared.current.lock() = None;
            self.shared.update(|p| p.connected = false);
            if end == End::Stopped {
                break;
            }
        }
    }

    fn connection(&mut self, stream: TcpStream) -> End {
        {
            let mut current = self.shared.current.lock();
            // Checked under the lock `stop` takes: either it sees this socket
            // and shuts it, or we see the flag.
            if self.shared.is_stopping() {
                return End::Stopped;
            }
            match stream.try_clone() {
                Ok(clone) => *current = Some(clone),
                Err(e) => {
                    log::warn!(target: LOG, "replay server: cannot clone the socket: {e}");
                    return End::Lost;
                }
            }
        }
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
        if let Err(e) = setup {
            log::debug!(target: LOG, "replay server: socket setup failed: {e}");
            return End::Lost;
        }
        let ws = match tungstenite::accept(stream) {
            Ok(ws) => ws,
            Err(e) => {
                log::debug!(target: LOG, "replay server: upgrade failed: {e}");
                return self.stopped_or(End::Lost);
            }
        };
        self.shared.update(|p| p.connected = true);
        let mut conn = Conn {
            ws,
            prev: None,
            armed: Some(HANDSHAKE_TIMEOUT),
        };
        let failed = self.shared.progress.lock().failure.clone();
        if let Some(failure) = failed {
            // A failed replay stays failed: later connections learn it at once.
            let reason = format!("cassette mismatch at outbound frame {}", failure.index);
            conn.close_with(Some(1008), &reason);
            return End::Failed;
        }
        let end = self.serve(&mut conn);
        self.stopped_or(end)
    }

    fn stopped_or(&self, end: End) -> End {
        if self.shared.is_stopping() {
            End::Stopped
        } else {
            end
        }
    }

    fn advance(&mut self, to: usize) {
        self.cursor = to;
        self.shared.update(|p| p.cursor = to);
    }

    /// Runs the script on one connection.
    fn serve(&mut self, conn: &mut Conn) -> End {
        let script = Arc::clone(&self.script);
        loop {
            if self.shared.is_stopping() {
                return End::Stopped;
            }
            let Some(step) = script.steps.get(self.cursor) else {
                return self.idle(conn);
            };
            match step {
                Step::Mark { at } => {
                    if let Err(end) = self.wait_until_due(conn, *at) {
                        return end;
                    }
                    self.advance(self.cursor + 1);
                }
                Step::Expect { at, .. } if !self.options.strict => {
                    if let Err(end) = self.wait_until_due(conn, *at) {
                        return end;
                    }
                    self.advance(self.cursor + 1);
                }
                Step::Send { frame, at } => {
                    if let Err(end) = self.wait_until_due(conn, *at) {
                        return end;
                    }
                    let wire = match frame {
                        Frame::Text(t) => WireMessage::text(t.clone()),
                        Frame::Binary(b) => WireMessage::binary(b.clone()),
                    };
                    if let Err(e) = conn.ws.send(wire) {
                        log::debug!(target: LOG, "replay server: send failed: {e}");
                        return End::Lost;
                    }
                    self.shared.played.fetch_add(1, Ordering::Relaxed);
                    self.advance(self.cursor + 1);
                }
                Step::Close { code, reason, at } => {
                    if let Err(end) = self.wait_until_due(conn, *at) {
                        return end;
                    }
                    self.shared.played.fetch_add(1, Ordering::Relaxed);
                    self.advance(self.cursor + 1);
                    conn.close_with(*code, reason);
                    return End::ScriptClosed;
                }
                Step::Drop { at } => {
                    if let Err(end) = self.wait_until_due(conn, *at) {
                        return end;
                    }
                    self.advance(self.cursor + 1);
                    let _ = conn.ws.get_ref().shutdown(Shutdown::Both);
                    return End::ScriptClosed;
                }
                Step::Expect { index, what, at } => {
                    let got = match self.buffer.pop_front() {
                        Some(frame) => Got::Frame(frame),
                        None => {
                            let timeout = self.options.outbound_timeout;
                            // A timeout too large for `Instant` means "wait forever".
                            match conn.next_event(Instant::now().checked_add(timeout)) {
                                Heard::Frame(frame) => Got::Frame(frame),
                                Heard::Close(code) => return self.client_closed(conn, code),
                                Heard::Lost => return End::Lost,
                                Heard::Timeout => {
                                    let received = format!("(nothing within {timeout:?})");
                                    return self.fail(conn, *index, what, received);
                                }
                            }
                        }
                    };
                    if !matches_expected(what, &got, &self.options.ignore_fields) {
                        return self.fail(conn, *index, what, describe_got(&got));
                    }
                    conn.prev = Some((*at, Instant::now()));
                    self.advance(self.cursor + 1);
                }
            }
        }
    }

    /// Waits, while reading what the client sends, until the step stamped
    /// `at` is due; returns how the connection ended if it did meanwhile.
    fn wait_until_due(&mut self, conn: &mut Conn, at: SystemTime) -> std::result::Result<(), End> {
        // `Some(None)`: a gap too long for `Instant`, which means "never".
        let due = match (self.options.timing, conn.prev) {
            (Timing::Recorded { speed }, Some((prev_ts, prev_at))) => {
                let gap = at.duration_since(prev_ts).unwrap_or_default();
                let scaled =
                    Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX);
                Some(prev_at.checked_add(scaled))
            }
            _ => None,
        };
        if let Some(due) = due {
            while due.is_none_or(|d| Instant::now() < d) {
                match conn.next_event(due) {
                    Heard::Timeout => break,
                    Heard::Frame(frame) => {
                        if self.options.strict {
                            self.buffer.push_back(frame);
                        }
                    }
                    Heard::Close(code) => return Err(self.client_closed(conn, code)),
                    Heard::Lost => return Err(End::Lost),
                }
            }
        }
        conn.prev = Some((at, Instant::now()));
        Ok(())
    }

    /// Everything is played: keep the connection until the client closes it.
    fn idle(&mut self, conn: &mut Conn) -> End {
        if self.options.strict {
            if let Some(frame) = self.buffer.pop_front() {
                return self.fail_extra(conn, &Got::Frame(frame));
            }
        }
        loop {
            match conn.next_event(None) {
                Heard::Frame(frame) => {
                    if self.options.strict {
                        return self.fail_extra(conn, &Got::Frame(frame));
                    }
                }
                Heard::Close(code) => return self.client_closed(conn, code),
                Heard::Lost => return End::Lost,
                Heard::Timeout => {}
            }
        }
    }

    /// The client sent a close frame. In strict mode, what it sent before it,
    /// and the close itself, are checked against the remaining expectations;
    /// only then is the close reply sent, so a `verify` after the client's
    /// `close()` returned sees the outcome.
    fn client_closed(&mut self, conn: &mut Conn, code: Option<u16>) -> End {
        if self.options.strict {
            let pending: Vec<Got> = self
                .buffer
                .drain(..)
                .map(Got::Frame)
                .chain(std::iter::once(Got::Close(code)))
                .collect();
            let script = Arc::clone(&self.script);
            for got in pending {
                match script.expectation_from(self.cursor) {
                    Some((pos, index, what)) => {
                        if matches_expected(what, &got, &self.options.ignore_fields) {
                            self.advance(pos + 1);
                        } else {
                            self.record_failure(index, what, describe_got(&got));
                            break;
                        }
                    }
                    // A close after the last expectation is the normal end.
                    None if matches!(got, Got::Close(_)) => {}
                    None => {
                        self.record_extra(&got);
                        break;
                    }
                }
            }
        }
        conn.finish_close();
        End::ClientClosed
    }

    fn record_failure(&self, index: usize, what: &Expected, received: String) {
        let expected = describe_expected(what);
        log::warn!(
            target: LOG,
            "cassette replay mismatch at outbound frame {index}: expected {expected}, received {received}"
        );
        self.shared.update(|p| {
            p.failure.get_or_insert(Mismatch {
                index,
                expected,
                received,
            });
        });
    }

    fn record_extra(&self, got: &Got) {
        let index = self.script.outbound + 1;
        let received = describe_got(got);
        log::warn!(
            target: LOG,
            "cassette replay: the client sent more than was recorded: {received}"
        );
        self.shared.update(|p| {
            p.failure.get_or_insert(Mismatch {
                index,
                expected: "(end of the cassette)".to_owned(),
                received,
            });
        });
    }

    /// Records the mismatch first (so `verify` sees it as soon as the client
    /// sees the close), then closes with 1008.
    fn fail(&mut self, conn: &mut Conn, index: usize, what: &Expected, received: String) -> End {
        self.record_failure(index, what, received);
        let reason = format!("cassette mismatch at outbound frame {index}");
        conn.close_with(Some(1008), &reason);
        End::Failed
    }

    fn fail_extra(&mut self, conn: &mut Conn, got: &Got) -> End {
        self.record_extra(got);
        conn.close_with(Some(1008), "cassette mismatch: more frames than recorded");
        End::Failed
    }
}

/// One upgraded connection.
struct Conn {
    ws: WebSocket<TcpStream>,
    /// The stamp of the last step run, and when it ran (for `Timing::Recorded`).
    prev: Option<(SystemTime, Instant)>,
    /// The read timeout set on the socket now (`None` in the option: blocking).
    armed: Option<Duration>,
}

impl Conn {
    /// The next data or close frame from the client, or `Timeout` at `deadline`.
    /// Pings are answered (tungstenite queues the pong; the flush sends it).
    fn next_event(&mut self, deadline: Option<Instant>) -> Heard {
        loop {
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Heard::Timeout;
                    }
                    // A zero timeout means "block forever" to the OS: keep it positive.
                    Some(left.max(Duration::from_millis(1)))
                }
                None => None,
            };
            if self.armed != wait {
                if let Err(e) = self.ws.get_ref().set_read_timeout(wait) {
                    log::debug!(target: LOG, "replay server: setting a read timeout: {e}");
                    return Heard::Lost;
                }
                self.armed = wait;
            }
            match self.ws.read() {
                Ok(WireMessage::Text(t)) => {
                    return Heard::Frame(Frame::Text(t.as_str().to_owned()))
                }
                Ok(WireMessage::Binary(b)) => return Heard::Frame(Frame::Binary(b.to_vec())),
                Ok(WireMessage::Close(frame)) => {
                    return Heard::Close(frame.map(|f| u16::from(f.code)));
                }
                Ok(WireMessage::Ping(_) | WireMessage::Pong(_) | WireMessage::Frame(_)) => {
                    if self.ws.flush().is_err() {
                        return Heard::Lost;
                    }
                }
                // A read timeout is WouldBlock on Unix and TimedOut on Windows.
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    log::debug!(target: LOG, "replay server: read ended: {e}");
                    return Heard::Lost;
                }
            }
        }
    }

    /// Sends the close reply tungstenite queued when the client's close arrived.
    fn finish_close(&mut self) {
        let _ = self.ws.flush();
    }

    /// Plays a close frame: 1005 (or none) is a close frame without a status,
    /// 1006 and 1015 (which never travel on the wire) drop the connection
    /// without a close frame; then waits (bounded) for the client's reply.
    fn close_with(&mut self, code: Option<u16>, reason: &str) {
        let frame = match code {
            None | Some(1005) => None,
            Some(1006 | 1015) => {
                let _ = self.ws.get_ref().shutdown(Shutdown::Both);
                return;
            }
            Some(code) => Some(WireCloseFrame {
                code: CloseCode::from(code),
                reason: cut_reason(reason).to_owned().into(),
            }),
        };
        if self.ws.close(frame).and_then(|()| self.ws.flush()).is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.next_event(Some(deadline)) {
                // Data after our close frame is allowed, and unanswered.
                Heard::Frame(_) => {}
                Heard::Close(_) => {
                    let _ = self.ws.flush();
                    return;
                }
                Heard::Lost | Heard::Timeout => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Cassettes for users' tests.
// ---------------------------------------------------------------------------

/// Whether a [`Cassette`] records or replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CassetteMode {
    /// Talk to the live server and write the session to the cassette
    /// (replacing it atomically when the session finishes).
    Record,
    /// Talk to a [`ReplayServer`] playing the cassette; the file must exist.
    Replay,
    /// Replay when the cassette file exists, record otherwise.
    #[default]
    Auto,
}

impl CassetteMode {
    /// The mode's name: `record`, `replay` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            CassetteMode::Record => "record",
            CassetteMode::Replay => "replay",
            CassetteMode::Auto => "auto",
        }
    }

    /// The mode a value of `ZEN_WS_CASSETTE` asks for: `None` (unset), empty or
    /// blank is [`Auto`](CassetteMode::Auto); otherwise `record`, `replay` or
    /// `auto` in any ASCII case, surrounding white space ignored. Anything else
    /// is [`Error::Config`] naming `ZEN_WS_CASSETTE`. Pure: reads no environment.
    ///
    /// ```
    /// use zen_websocket::recorder::CassetteMode;
    /// assert_eq!(CassetteMode::from_env_value(None)?, CassetteMode::Auto);
    /// assert_eq!(CassetteMode::from_env_value(Some(" Record "))?, CassetteMode::Record);
    /// assert!(CassetteMode::from_env_value(Some("rec")).is_err());
    /// # Ok::<(), zen_websocket::Error>(())
    /// ```
    pub fn from_env_value(value: Option<&str>) -> Result<CassetteMode> {
        match value.map(str::trim) {
            None | Some("") => Ok(CassetteMode::Auto),
            Some(v) => [
                CassetteMode::Record,
                CassetteMode::Replay,
                CassetteMode::Auto,
            ]
            .into_iter()
            .find(|m| v.eq_ignore_ascii_case(m.as_str()))
            .ok_or_else(|| {
                let shown: String = v.chars().take(40).collect();
                Error::Config(ConfigError::new(
                    "ZEN_WS_CASSETTE",
                    format!("must be record, replay or auto, not {shown:?}"),
                ))
            }),
        }
    }

    /// The mode `ZEN_WS_CASSETTE` asks for now (see
    /// [`from_env_value`](Self::from_env_value)); a value that is not UTF-8 is
    /// an error too.
    pub fn from_env() -> Result<CassetteMode> {
        match std::env::var(CASSETTE_ENV) {
            Ok(v) => CassetteMode::from_env_value(Some(&v)),
            Err(std::env::VarError::NotPresent) => Ok(CassetteMode::Auto),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Config(ConfigError::new(
                "ZEN_WS_CASSETTE",
                "must be record, replay or auto, not a non-UTF-8 value",
            ))),
        }
    }
}

impl fmt::Display for CassetteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CassetteMode {
    type Err = Error;

    /// Like [`CassetteMode::from_env_value`], except that an empty string is an error.
    fn from_str(s: &str) -> Result<CassetteMode> {
        if s.trim().is_empty() {
            return Err(Error::Config(ConfigError::new(
                "ZEN_WS_CASSETTE",
                "must be record, replay or auto, not empty",
            )));
        }
        CassetteMode::from_env_value(Some(s))
    }
}

/// A recorded WebSocket session for a test: recorded once against the live
/// server, replayed afterwards.
///
/// The mode is, in order: the one set with [`mode`](Cassette::mode), else
/// `ZEN_WS_CASSETTE` (`record`, `replay`, `auto`), else `auto` (replay when
/// the file exists, record otherwise). [`start`](Cassette::start) returns a
/// [`CassetteSession`]: connect your client to [`CassetteSession::url`] with
/// the config passed through [`CassetteSession::apply`], run the test, close
/// the client, and call [`CassetteSession::finish`].
///
/// - **Record**: the URL is the live one, and `apply` records the session
///   into a temporary file beside the cassette ([`OpenMode::ReplaceAtomically`]);
///   `finish` commits it (rename over the cassette). A session dropped
///   without `finish` (a failed test) leaves the old cassette, or none, as it
///   was: never half a cassette. Missing directories are created.
/// - **Replay**: the URL is a [`ReplayServer`] playing the cassette (strict by
///   default, see [`replay_options`](Cassette::replay_options)), `apply`
///   changes nothing, and `finish` is [`ReplayServer::verify`].
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use zen_websocket::recorder::{Cassette, CassetteMode};
/// use zen_websocket::testing::{MockServer, Reply};
/// use zen_websocket::{Client, Config};
///
/// // The code under test: one JSON-RPC request.
/// fn server_time(url: &str, session: &zen_websocket::recorder::CassetteSession) -> zen_websocket::Result<serde_json::Value> {
///     let config = session.apply(Config::builder(url)).build()?;
///     let client = Client::connect(config)?;
///     let result = client.request("public/get_time", json!({}));
///     client.close()?;
///     result
/// }
///
/// let dir = std::env::temp_dir().join(format!("zen-doc-cassette-{}", std::process::id()));
/// let path = dir.join("get_time.jsonl");
///
/// // Record once against the "live" server (here a MockServer).
/// let live = MockServer::start()?;
/// live.set_handler(|m| {
///     let req = m.json().unwrap_or_default();
///     Reply::Text(json!({"jsonrpc": "2.0", "id": req["id"], "result": 1_700_000_000_000u64}).to_string())
/// });
/// let session = Cassette::new(&path).mode(CassetteMode::Record).start(&live.url())?;
/// assert_eq!(server_time(session.url(), &session)?, json!(1_700_000_000_000u64));
/// session.finish()?; // the cassette is committed now
/// drop(live);        // no live server from here on
///
/// // Replay: the same code, served from the cassette.
/// let session = Cassette::new(&path).mode(CassetteMode::Replay).start("wss://unused.example/ws")?;
/// assert_eq!(server_time(session.url(), &session)?, json!(1_700_000_000_000u64));
/// session.finish()?; // Ok: the client sent what was recorded
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cassette {
    path: PathBuf,
    mode: Option<CassetteMode>,
    options: ReplayOptions,
    recorder: Option<Recorder>,
}

impl Cassette {
    /// A cassette stored at `path` (a JSONL recording). Nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> Cassette {
        Cassette {
            path: path.into(),
            mode: None,
            options: ReplayOptions::default().strict(true),
            recorder: None,
        }
    }

    /// Record, replay or auto, whatever `ZEN_WS_CASSETTE` says. Defaults to
    /// the environment variable, and to [`CassetteMode::Auto`] without it.
    pub fn mode(mut self, mode: CassetteMode) -> Cassette {
        self.mode = Some(mode);
        self
    }

    /// How replay mode plays the cassette. Defaults to
    /// `ReplayOptions::default().strict(true)`.
    pub fn replay_options(mut self, options: ReplayOptions) -> Cassette {
        self.options = options;
        self
    }

    /// The recorder that writes the cassette in record mode. Defaults to
    /// [`Recorder::global`].
    pub fn recorder(mut self, recorder: &Recorder) -> Cassette {
        self.recorder = Some(recorder.clone());
        self
    }

    /// Where the cassette is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What [`start`](Cassette::start) would do now: [`CassetteMode::Record`]
    /// or [`CassetteMode::Replay`] (auto resolved against the file). Fails
    /// when `ZEN_WS_CASSETTE` is consulted and invalid.
    pub fn effective_mode(&self) -> Result<CassetteMode> {
        let mode = match self.mode {
            Some(mode) => mode,
            None => CassetteMode::from_env()?,
        };
        Ok(match mode {
            CassetteMode::Auto if self.path.is_file() => CassetteMode::Replay,
            CassetteMode::Auto => CassetteMode::Record,
            other => other,
        })
    }

    /// Starts a session: in record mode opens the temporary recording, in
    /// replay mode starts the [`ReplayServer`]. `live_url` is where a record
    /// session connects (unused when replaying).
    ///
    /// Fails with [`Error::Storage`] naming the path when the cassette cannot
    /// be written (record) or read (replay; a missing file too), and with
    /// [`Error::Config`] for an invalid `ZEN_WS_CASSETTE` or replay options.
    pub fn start(&self, live_url: &str) -> Result<CassetteSession> {
        match self.effective_mode()? {
            CassetteMode::Replay => {
                let server = ReplayServer::start(&self.path, self.options.clone())?;
                Ok(CassetteSession {
                    path: self.path.clone(),
                    url: server.url(),
                    kind: SessionKind::Replay(server),
                })
            }
            _ => {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::create_dir_all(dir).map_err(|e| Error::storage(dir, e))?;
                }
                let recorder = match &self.recorder {
                    Some(r) => r.clone(),
                    None => Recorder::global()?,
                };
                let file = recorder.open(&self.path, OpenMode::ReplaceAtomically)?;
                log::debug!(target: LOG, "recording cassette {}", self.path.display());
                Ok(CassetteSession {
                    path: self.path.clone(),
                    url: live_url.to_owned(),
                    kind: SessionKind::Record(file),
                })
            }
        }
    }
}

enum SessionKind {
    Record(RecordFile),
    Replay(ReplayServer),
}

/// One use of a [`Cassette`], from [`Cassette::start`] to
/// [`finish`](CassetteSession::finish).
///
/// Dropping it without `finish` abandons it: a recording is discarded (the
/// cassette stays as it was), a replay server stops without a verdict.
pub struct CassetteSession {
    path: PathBuf,
    url: String,
    kind: SessionKind,
}

impl fmt::Debug for CassetteSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassetteSession")
            .field("mode", &self.mode())
            .field("path", &self.path)
            .field("url", &self.url)
            .finish()
    }
}

impl CassetteSession {
    /// [`CassetteMode::Record`] or [`CassetteMode::Replay`].
    pub fn mode(&self) -> CassetteMode {
        match self.kind {
            SessionKind::Record(_) => CassetteMode::Record,
            SessionKind::Replay(_) => CassetteMode::Replay,
        }
    }

    /// True in record mode.
    pub fn is_recording(&self) -> bool {
        matches!(self.kind, SessionKind::Record(_))
    }

    /// Where the client connects: the live URL when recording, the replay
    /// server's when replaying.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cassette's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds what the mode needs to a client's configuration: when recording,
    /// [`ConfigBuilder::record_file`] with the cassette's file (any number of
    /// clients may share it; each entry carries its client's id); when
    /// replaying, nothing.
    pub fn apply(&self, builder: ConfigBuilder) -> ConfigBuilder {
        match &self.kind {
            SessionKind::Record(file) => builder.record_file(file),
            SessionKind::Replay(_) => builder,
        }
    }

    /// `Config::builder(self.url())` passed through [`apply`](Self::apply).
    pub fn builder(&self) -> ConfigBuilder {
        self.apply(Config::builder(self.url.as_str()))
    }

    /// The replay server, in replay mode.
    pub fn replay_server(&self) -> Option<&ReplayServer> {
        match &self.kind {
            SessionKind::Replay(server) => Some(server),
            SessionKind::Record(_) => None,
        }
    }

    /// The file being recorded, in record mode.
    pub fn record_file(&self) -> Option<&RecordFile> {
        match &self.kind {
            SessionKind::Record(file) => Some(file),
            SessionKind::Replay(_) => None,
        }
    }

    /// Ends the session; close the clients first.
    ///
    /// Record: writes, fsyncs and commits the cassette (renames the temporary
    /// file over it); [`Error::Storage`] if any write failed, and then the old
    /// cassette is left unchanged. Replay: [`ReplayServer::verify`], then stops
    /// the server.
    pub fn finish(self) -> Result<()> {
        match self.kind {
            SessionKind::Record(file) => {
                file.commit()?;
                log::debug!(target: LOG, "cassette {} recorded", self.path.display());
                Ok(())
            }
            SessionKind::Replay(mut server) => {
                let verdict = server.verify();
                server.stop();
                verdict
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_ignore() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn json_texts_match_as_values_ignoring_key_order_and_spacing() {
        assert!(text_matches(
            r#"{"a":1,"b":[1,2]}"#,
            r#"{ "b": [1, 2], "a": 1 }"#,
            &no_ignore()
        ));
        assert!(!text_matches(r#"{"a":1}"#, r#"{"a":2}"#, &no_ignore()));
        assert!(!text_matches(
            r#"{"a":1}"#,
            r#"{"a":1,"b":2}"#,
            &no_ignore()
        ));
        assert!(!text_matches(r#"[1,2]"#, r#"[2,1]"#, &no_ignore()));
        assert!(text_matches("hello", "hello", &no_ignore()));
        assert!(!text_matches("hello", "hello ", &no_ignore()));
    }

    #[test]
    fn ignored_fields_are_dropped_at_any_depth() {
        let ignore = vec!["id".to_owned(), "ts".to_owned()];
        assert!(text_matches(
            r#"{"id":1,"method":"m","params":{"ts":5,"x":1}}"#,
            r#"{"id":7,"method":"m","params":{"x":1,"ts":9}}"#,
            &ignore
        ));
        assert!(text_matches(
            r#"{"id":1,"method":"m"}"#,
            r#"{"method":"m"}"#,
            &ignore
        ));
        assert!(!text_matches(
            r#"{"id":1,"method":"m"}"#,
            r#"{"id":1,"method":"n"}"#,
            &ignore
        ));
    }

    #[test]
    fn a_redacted_value_in_the_recording_matches_any_value() {
        assert!(text_matches(
            r#"{"params":{"client_secret":"[REDACTED]","client_id":"abc"}}"#,
            r#"{"params":{"client_id":"abc","client_secret":"s3cret"}}"#,
            &no_ignore()
        ));
        assert!(text_matches(
            r#"{"auth":"[REDACTED]"}"#,
            r#"{"auth":{"user":"u","pass":"p"}}"#,
            &no_ignore()
        ));
        assert!(!text_matches(
            r#"{"params":{"client_secret":"[REDACTED]","client_id":"abc"}}"#,
            r#"{"params":{"client_id":"xyz","client_secret":"s3cret"}}"#,
            &no_ignore()
        ));
        assert!(redacted_glob(
            "GET /?token=[REDACTED]&x=1",
            "GET /?token=abc&x=1"
        ));
        assert!(redacted_glob("[REDACTED]", ""));
        assert!(redacted_glob("a[REDACTED]b[REDACTED]c", "aXXbYYc"));
        assert!(!redacted_glob("a[REDACTED]b[REDACTED]c", "aXXc"));
        assert!(!redacted_glob("ab[REDACTED]ba", "aba"));
        assert!(redacted_glob("é[REDACTED]é", "éé"));
    }

    #[test]
    fn frames_of_different_kinds_never_match() {
        let text = Expected::Frame(Frame::Text("AQI=".into()));
        assert!(!matches_expected(
            &text,
            &Got::Frame(Frame::Binary(vec![1, 2])),
            &no_ignore()
        ));
        let bin = Expected::Frame(Frame::Binary(vec![1, 2]));
        assert!(matches_expected(
            &bin,
            &Got::Frame(Frame::Binary(vec![1, 2])),
            &no_ignore()
        ));
        assert!(!matches_expected(
            &bin,
            &Got::Close(Some(1000)),
            &no_ignore()
        ));
        let close = Expected::Close(Some(1000));
        assert!(matches_expected(
            &close,
            &Got::Close(Some(1000)),
            &no_ignore()
        ));
        assert!(!matches_expected(
            &close,
            &Got::Close(Some(1001)),
            &no_ignore()
        ));
    }

    #[test]
    fn descriptions_are_bounded() {
        let long = describe_frame(&Frame::Text("x".repeat(5000)));
        assert!(long.len() < SHOWN_CHARS + 40, "{long}");
        assert!(long.contains("5000 bytes"), "{long}");
        let bin = describe_frame(&Frame::Binary(vec![0xab; 100]));
        assert!(bin.starts_with("binary (100 bytes) [ab ab"), "{bin}");
        assert_eq!(describe_close(None), "close (no code)");
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let cut = cut_reason(&reason);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(reason.starts_with(cut));
        assert_eq!(cut_reason("short"), "short");
    }

    #[test]
    fn the_env_value_is_parsed_leniently_and_refused_when_unknown() {
        use CassetteMode::*;
        let cases = [
            (None, Auto),
            (Some(""), Auto),
            (Some("  "), Auto),
            (Some("record"), Record),
            (Some("REPLAY"), Replay),
            (Some(" Auto\n"), Auto),
        ];
        for (value, mode) in cases {
            assert_eq!(
                CassetteMode::from_env_value(value).unwrap(),
                mode,
                "{value:?}"
            );
        }
        for bad in ["rec", "none", "1", "record replay"] {
            match CassetteMode::from_env_value(Some(bad)) {
                Err(Error::Config(e)) => assert_eq!(e.field, "ZEN_WS_CASSETTE"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!("replay".parse::<CassetteMode>().unwrap(), Replay);
        assert!("".parse::<CassetteMode>().is_err());
        for m in [Record, Replay, Auto] {
            assert_eq!(m.to_string().parse::<CassetteMode>().unwrap(), m);
        }
    }

    proptest::proptest! {
        #[test]
        fn comparing_arbitrary_texts_never_panics(
            a in "(\\PC|\\[REDACTED\\]|[{}\\[\\]\":,]){0,40}",
            b in "(\\PC|[{}\\[\\]\":,]){0,40}",
        ) {
            let _ = text_matches(&a, &b, &["id".to_owned()]);
            let _ = redacted_glob(&a, &b);
            proptest::prop_assert!(text_matches(&b, &b, &[]));
        }
    }

    #[test]
    fn replay_options_are_validated() {
        assert!(ReplayOptions::default().validate().is_ok());
        for speed in [0.0, -1.0, f64::NAN] {
            let o = ReplayOptions::default().timing(Timing::Recorded { speed });
            assert!(matches!(o.validate(), Err(Error::Config(e)) if e.field == "speed"));
        }
        assert!(ReplayOptions::default()
            .timing(Timing::Recorded {
                speed: f64::INFINITY
            })
            .validate()
            .is_ok());
        let o = ReplayOptions::default().outbound_timeout(Duration::ZERO);
        assert!(matches!(o.validate(), Err(Error::Config(e)) if e.field == "outbound_timeout"));
    }
}
