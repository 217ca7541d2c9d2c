//! The [`Client`] handle, its [`Event`]s, [`ClientStats`] and [`ConnectionState`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::config::Config;
use crate::connection::transport;
use crate::connection::{self, Shared};
use crate::error::{ConfigError, Error, Result};
use crate::message::Message;
use crate::protocol::correlator::{LatencyStats, RequestCorrelator};
use crate::protocol::jsonrpc::{IdGenerator, Request, RequestId, Response};
use crate::protocol::subscriptions::SubscriptionTracker;
use crate::protocol::{JsonRpc, Protocol};
use crate::rate_limit::{MessageKind, RateLimit, TokenBucket};
use crate::recorder::{OpenMode, RecordFile, Recorder};
use std::path::PathBuf;

/// The state of a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection is being opened.
    Connecting,
    /// Open: sends go out.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Reconnecting,
    /// `close()` was called; the close handshake is under way.
    Closing,
    /// Terminal: closed by the user or the peer, or reconnection gave up.
    Closed,
}

impl ConnectionState {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            ConnectionState::Connecting => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Reconnecting => 2,
            ConnectionState::Closing => 3,
            ConnectionState::Closed => 4,
        }
    }

    pub(crate) fn from_u8(v: u8) -> ConnectionState {
        match v {
            0 => ConnectionState::Connecting,
            1 => ConnectionState::Connected,
            2 => ConnectionState::Reconnecting,
            3 => ConnectionState::Closing,
            _ => ConnectionState::Closed,
        }
    }
}

/// Who started a close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseInitiator {
    /// [`Client::close`] (or dropping the last handle).
    User,
    /// The server sent a close frame.
    Peer,
}

/// What a client reports on its [`Client::events`] channel.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first connection is open.
    Connected {
        /// The URL connected to.
        url: String,
    },
    /// A text or binary message from the server.
    Message(Message),
    /// The connection was lost; reconnection follows when enabled.
    Disconnected {
        /// Why.
        cause: Arc<Error>,
    },
    /// A reconnection attempt starts after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a disconnect.
        attempt: u32,
        /// The backoff delay before this attempt (zero for the first).
        delay: Duration,
        /// The disconnect cause, or the previous attempt's error.
        cause: Arc<Error>,
    },
    /// A reconnection attempt failed.
    ReconnectFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: Arc<Error>,
    },
    /// The connection is open again (after `on_connect` and the subscription restore).
    Reconnected {
        /// Which attempt succeeded.
        attempt: u32,
    },
    /// Terminal: the connection was closed with this code and reason.
    Closed {
        /// The close code (1000 for a user close).
        code: u16,
        /// The reason.
        reason: String,
        /// Who started it.
        initiator: CloseInitiator,
    },
    /// A subscription notification, classified by the client's protocol.
    Subscription {
        /// The channel, e.g. `ticker.BTC-PERPETUAL.100ms`.
        channel: String,
        /// The notification's data.
        data: serde_json::Value,
    },
    /// A response whose caller had already timed out (requests are never re-sent,
    /// so this says the server processed it after all).
    LateResponse(Box<Response>),
    /// The tracked subscriptions were restored after a reconnect.
    SubscriptionsRestored {
        /// The channels confirmed again.
        channels: Vec<String>,
    },
    /// Restoring subscriptions after a reconnect failed; they stay tracked and are
    /// tried again on the next reconnect.
    RestoreFailed {
        /// The channels that were asked for.
        channels: Vec<String>,
        /// Why it failed.
        error: Arc<Error>,
    },
    /// A sequenced channel (a Deribit `book.*` order book) skipped at least one
    /// update: a change named `received` as its predecessor where the last one
    /// seen was `expected`. Your copy of that book is stale: drop it. The client
    /// has already resubscribed the channel (unsubscribe, then subscribe; their
    /// answers are consumed, and the channel stays tracked), so its next data
    /// is a fresh snapshot; the gapped change, and any that build on it, are not
    /// delivered.
    SequenceGap {
        /// The channel, e.g. `book.BTC-PERPETUAL.100ms`.
        channel: String,
        /// The last sequence number (`change_id`) seen on the channel.
        expected: u64,
        /// The predecessor (`prev_change_id`) the next change named instead.
        received: u64,
    },
    /// Terminal: reconnection gave up.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last_error: Arc<Error>,
    },
}

impl Event {
    /// True for the last event a client sends ([`Event::Closed`], [`Event::GaveUp`]).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Closed { .. } | Event::GaveUp { .. })
    }

    /// The message, if this is a message event.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Event::Message(m) => Some(m),
            _ => None,
        }
    }
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientStats {
    /// The connection state.
    pub state: ConnectionState,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent.
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Successful reconnections.
    pub reconnects: u64,
    /// Pings sent.
    pub pings_sent: u64,
    /// Pongs to our pings received.
    pub pongs_received: u64,
    /// The last ping round trip.
    pub last_rtt: Option<Duration>,
    /// The smoothed ping round trip (7/8 old + 1/8 new).
    pub smoothed_rtt: Option<Duration>,
    /// Messages dropped under [`crate::EventPolicy::DropNewest`].
    pub dropped_events: u64,
    /// Requests waiting for a response.
    pub pending_requests: usize,
    /// Request round trips (count, p50, p99) over the last 1024 responses.
    pub request_latency: LatencyStats,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) pongs_received: AtomicU64,
    pub(crate) dropped_events: AtomicU64,
}

/// Optional parts of a [`Config`] that other modules add (protocol, rate limit,
/// recording).
#[derive(Clone, Default)]
pub(crate) struct Extensions {
    /// The platform dialect; `None` means the default JSON-RPC dialect.
    pub(crate) protocol: Option<Arc<dyn Protocol>>,
    pub(crate) rate_limit: Option<RateLimit>,
    /// Where to record the session, if anywhere.
    pub(crate) record: Option<RecordTarget>,
}

/// Where a client records: a path (opened in append mode by the chosen
/// recorder, or the process-wide one) or a file the user already opened.
#[derive(Clone, Debug)]
pub(crate) enum RecordTarget {
    Path {
        path: PathBuf,
        recorder: Option<Recorder>,
    },
    File(RecordFile),
}

impl RecordTarget {
    pub(crate) fn open(&self) -> Result<RecordFile> {
        match self {
            RecordTarget::File(f) => Ok(f.clone()),
            RecordTarget::Path { path, recorder } => {
                let recorder = match recorder {
                    Some(r) => r.clone(),
                    None => Recorder::global()?,
                };
                // Append: a reconnect or a restart never erases a session.
                recorder.open(path, OpenMode::Append)
            }
        }
    }
}

impl Extensions {
    pub(crate) fn validate(&self) -> std::result::Result<(), ConfigError> {
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        if let Some(RecordTarget::Path { path, .. }) = &self.record {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "recorder",
                    "needs a path: call record_to(path) too",
                ));
            }
        }
        Ok(())
    }
}

impl crate::config::ConfigBuilder {
    /// The platform dialect: how to build subscribe messages, classify inbound
    /// messages, and what to do on every (re)connect (auth). Defaults to
    /// [`JsonRpc`](crate::protocol::JsonRpc).
    pub fn protocol(mut self, protocol: impl Protocol) -> Self {
        self.extensions().protocol = Some(Arc::new(protocol));
        self
    }

    /// The same, from a shared dialect.
    pub fn protocol_arc(mut self, protocol: Arc<dyn Protocol>) -> Self {
        self.extensions().protocol = Some(protocol);
        self
    }

    /// Record the session (both directions, close frames and lifecycle) to a JSONL
    /// file, appending, through the process-wide default [`Recorder`] (or the one
    /// set with [`recorder`](Self::recorder)). Credentials are redacted. Defaults
    /// to no recording.
    pub fn record_to(mut self, path: impl Into<PathBuf>) -> Self {
        let recorder = match self.extensions().record.take() {
            Some(RecordTarget::Path { recorder, .. }) => recorder,
            _ => None,
        };
        self.extensions().record = Some(RecordTarget::Path {
            path: path.into(),
            recorder,
        });
        self
    }

    /// Record through this recorder (one writer thread shared by many clients)
    /// instead of the process-wide one; combine with [`record_to`](Self::record_to).
    pub fn recorder(mut self, recorder: &Recorder) -> Self {
        let ext = self.extensions();
        ext.record = Some(match ext.record.take() {
            Some(RecordTarget::Path { path, .. }) => RecordTarget::Path {
                path,
                recorder: Some(recorder.clone()),
            },
            // No path yet: remember the recorder until record_to names one.
            _ => RecordTarget::Path {
                path: PathBuf::new(),
                recorder: Some(recorder.clone()),
            },
        });
        self
    }

    /// Record into a file already opened with [`Recorder::open`] (for instance
    /// one file shared by a pool of connections, each entry tagged with its
    /// connection id).
    pub fn record_file(mut self, file: &RecordFile) -> Self {
        self.extensions().record = Some(RecordTarget::File(file.clone()));
        self
    }

    /// Rate-limit everything this client sends (requests, subscriptions, plain
    /// sends) through a token bucket. Defaults to no limit.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.extensions().rate_limit = Some(limit);
        self
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A connected WebSocket client. Cheap to clone; every clone talks to the same
/// connection, from any thread.
///
/// [`Client::connect`] blocks until the connection is open. A connection thread
/// (`zen-ws-conn-<id>`) then reads the socket, answers pings, sends heartbeats
/// and reconnects. Sends are written by the calling thread. Closing, or dropping
/// the last clone, performs the close handshake and joins the thread.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::{testing::MockServer, Client, Config, Event, Message};
///
/// let server = MockServer::start()?; // a local echo server
/// let client = Client::connect(Config::new(server.url())?)?;
/// client.send_text("hello")?;
/// let events = client.events();
/// loop {
///     match events.recv_timeout(Duration::from_secs(5)) {
///         Ok(Event::Message(Message::Text(t))) => {
///             assert_eq!(t, "hello");
///             break;
///         }
///         Ok(_) => continue,
///         Err(e) => panic!("no echo: {e}"),
///     }
/// }
/// client.close()?;
/// # Ok::<(), zen_websocket::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Owns the thread; its `Drop` (when the last `Client` clone goes) closes.
struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    done: Receiver<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Errors here can only mean "already closed".
        let _ = close_and_join(&self.shared, &self.thread, &self.done);
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.handle.shared.id)
            .field("url", &self.handle.shared.config.url())
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connect and return once the connection is open (or fail with the real cause:
    /// refused, DNS, TLS, timeout, HTTP status of a refused upgrade).
    pub fn connect(config: Config) -> Result<Client> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if config.debug {
            log::debug!(target: "zen_websocket", "conn {id}: connecting to {}", config.url());
        }
        // The recording opens first: a path that cannot be written fails the
        // connect before anything is dialed.
        let record = match &config.extension.record {
            Some(target) => Some(target.open()?),
            None => None,
        };
        let socket = transport::dial(&config)?;
        let (events_tx, events_rx) = crossbeam_channel::bounded(config.event_capacity);
        let (doorbell_tx, doorbell_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let custom_protocol = config.extension.protocol.is_some();
        let protocol = config
            .extension
            .protocol
            .clone()
            .unwrap_or_else(|| Arc::new(JsonRpc::default()));
        let limiter = match &config.extension.rate_limit {
            Some(l) => Some(TokenBucket::new(l.clone())?),
            None => None,
        };
        let shared = Arc::new(Shared {
            protocol,
            classify: AtomicBool::new(custom_protocol),
            correlator: RequestCorrelator::new(),
            ids: IdGenerator::new(),
            subscriptions: Mutex::new(SubscriptionTracker::new()),
            limiter,
            record,
            id,
            state: AtomicU8::new(ConnectionState::Connecting.to_u8()),
            closing: AtomicBool::new(false),
            socket: Mutex::new(None),
            raw: Mutex::new(None),
            events_rx,
            doorbell_tx,
            counters: Counters::default(),
            rtt: Mutex::new((None, None)),
            config,
        });
        let conn = connection::Conn::new(shared.clone(), events_tx, doorbell_rx, done_tx);
        let opened = conn.open_first(socket)?;
        let thread = std::thread::Builder::new()
            .name(format!("zen-ws-conn-{id}"))
            .stack_size(shared.config.thread_stack_size)
            .spawn(move || opened.run())
            .map_err(|e| Error::io("spawning the connection thread", e))?;
        Ok(Client {
            handle: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
                done: done_rx,
            }),
        })
    }

    /// The client's id (unique in this process; also the thread's name suffix).
    pub fn id(&self) -> u64 {
        self.handle.shared.id
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &Config {
        &self.handle.shared.config
    }

    /// The event channel: messages and lifecycle events. Every call returns a handle
    /// to the same channel; each event goes to one receiver.
    pub fn events(&self) -> Receiver<Event> {
        self.handle.shared.events_rx.clone()
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.handle.shared.state()
    }

    /// True when connected.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Connected
    }

    /// Send a text message.
    pub fn send_text(&self, text: impl Into<String>) -> Result<()> {
        self.send(Message::Text(text.into()))
    }

    /// Send a binary message.
    pub fn send_binary(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        self.send(Message::Binary(data.into()))
    }

    /// Send a value as a JSON text message.
    pub fn send_json(&self, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string(value).map_err(|e| Error::Json(e.to_string()))?;
        self.send(Message::Text(text))
    }

    /// Send a message. It is written to the socket on the calling thread before
    /// this returns. While not connected, fails at once with
    /// [`Error::NotConnected`] (recoverable) or [`Error::Closed`].
    pub fn send(&self, message: Message) -> Result<()> {
        self.handle.shared.send(message)
    }

    /// Send a JSON-RPC request and block until its response (or
    /// `request_timeout`).
    ///
    /// - the `result` on success; a JSON-RPC error is [`Error::Rpc`];
    /// - [`Error::Timeout`]`(Request)` when no response came in time (the slot is
    ///   freed; a response arriving later comes as [`Event::LateResponse`]);
    /// - [`Error::Disconnected`] when the connection dropped while waiting. A
    ///   request is never re-sent automatically.
    ///
    /// Many threads may have requests in flight on one client.
    ///
    /// ```
    /// use serde_json::json;
    /// use zen_websocket::{testing::{MockServer, Reply}, Client, Config};
    ///
    /// let server = MockServer::start()?;
    /// // Answer every request with its own params.
    /// server.set_handler(|m| {
    ///     let req = m.json().unwrap_or_default();
    ///     Reply::Text(json!({"jsonrpc": "2.0", "id": req["id"], "result": req["params"]}).to_string())
    /// });
    /// let client = Client::connect(Config::new(server.url())?)?;
    /// let result = client.request("public/echo", json!({"x": 1}))?;
    /// assert_eq!(result, json!({"x": 1}));
    /// # Ok::<(), zen_websocket::Error>(())
    /// ```
    pub fn request(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value> {
        self.request_with_timeout(method, params, self.handle.shared.config.request_timeout)
    }

    /// [`request`](Self::request) with its own timeout.
    pub fn request_with_timeout(
        &self,
        method: &str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let s = &self.handle.shared;
        s.request(Request::new(s.ids.next(), method, params), timeout)
    }

    /// A request with an id of your choosing. An id that is already pending is
    /// refused with [`Error::DuplicateRequestId`] before anything is sent.
    pub fn request_with_id(
        &self,
        id: RequestId,
        method: &str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.handle
            .shared
            .request(Request::new(id, method, params), timeout)
    }

    /// Send a JSON-RPC notification (no id, no response).
    pub fn notify(&self, method: &str, params: serde_json::Value) -> Result<()> {
        let text = crate::protocol::jsonrpc::Notification::new(method, params).to_text();
        self.handle
            .shared
            .send_with(Message::Text(text), Some(method), MessageKind::Text)
    }

    /// Send several requests as one JSON-RPC batch (one frame); each result comes
    /// back in the order of `calls`. The whole batch shares `timeout`.
    pub fn batch_request(
        &self,
        calls: &[(&str, serde_json::Value)],
        timeout: Duration,
    ) -> Result<Vec<Result<serde_json::Value>>> {
        let s = &self.handle.shared;
        let requests: Vec<Request> = calls
            .iter()
            .map(|(m, p)| Request::new(s.ids.next(), *m, p.clone()))
            .collect();
        s.batch(requests, timeout)
    }

    /// Subscribe to channels through the protocol's subscribe message; returns the
    /// channels the server confirmed. Confirmed channels are tracked and restored
    /// after every reconnect (when `restore_subscriptions` is on).
    pub fn subscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<Vec<String>> {
        let channels: Vec<String> = channels.iter().map(|c| c.as_ref().to_owned()).collect();
        self.handle.shared.subscribe(channels, true)
    }

    /// Unsubscribe; the channels are untracked once the server confirms.
    pub fn unsubscribe<S: AsRef<str>>(&self, channels: &[S]) -> Result<()> {
        let channels: Vec<String> = channels.iter().map(|c| c.as_ref().to_owned()).collect();
        self.handle.shared.subscribe(channels, false).map(|_| ())
    }

    /// The tracked (confirmed) subscriptions.
    pub fn subscriptions(&self) -> Vec<String> {
        self.handle.shared.subscriptions.lock().channels()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        self.handle.shared.stats()
    }

    /// Close: send a close frame (1000), wait up to `close_timeout` for the peer's
    /// reply, stop the connection thread and join it. Idempotent.
    pub fn close(&self) -> Result<()> {
        close_and_join(&self.handle.shared, &self.handle.thread, &self.handle.done)
    }
}

fn close_and_join(
    shared: &Arc<Shared>,
    thread: &Mutex<Option<JoinHandle<()>>>,
    done: &Receiver<()>,
) -> Result<()> {
    let first = !shared.closing.swap(true, Ordering::SeqCst);
    if first {
        if shared.state() != ConnectionState::Closed {
            shared.set_state(ConnectionState::Closing);
        }
        // Wake the thread if it sleeps in a backoff wait or on a full event channel.
        let _ = shared.doorbell_tx.try_send(());
        shared.send_close_frame();
    }
    let Some(handle) = thread.lock().take() else {
        return Ok(());
    };
    // The thread waits for the peer's close reply itself; give it close_timeout
    // (plus the time a dial in progress may still take), then cut the socket so
    // that any read it blocks in returns.
    let grace = shared.config.close_timeout + Duration::from_millis(200);
    let started = Instant::now();
    if done.recv_timeout(grace).is_err() {
        shared.shutdown_socket();
        // A dial in progress cannot be interrupted; it is bounded by connect_timeout.
        let _ = done.recv_timeout(shared.config.connect_timeout + grace);
    }
    if shared.config.debug {
        log::debug!(target: "zen_websocket", "conn {}: closed in {:?}", shared.id, started.elapsed());
    }
    if handle.join().is_err() {
        log::error!(target: "zen_websocket", "conn {}: connection thread panicked", shared.id);
    }
    shared.set_state(ConnectionState::Closed);
    // Everything this client recorded is on disk when close() returns.
    match &shared.record {
        Some(file) => file.flush(),
        None => Ok(()),
    }
}

// Client handles are shared across threads by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Client>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_within_56_bytes() {
        // Every slot of the bounded event channel is allocated up front
        // (ARCHITECTURE.md, "Events and back-pressure"): box large payloads.
        assert!(
            std::mem::size_of::<Event>() <= 56,
            "Event is {} bytes",
            std::mem::size_of::<Event>()
        );
    }
}
