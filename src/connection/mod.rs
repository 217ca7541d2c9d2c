//! The connection thread: one per client. It waits for data on the socket (or
//! the next heartbeat deadline), drains what arrived, answers pings, delivers
//! events, and reconnects with backoff when the connection is lost.
//!
//! How it waits: the thread holds its own `try_clone` of the TCP socket and
//! blocks in `peek` with a read timeout set to the next heartbeat deadline. It
//! holds no lock while it waits, so a sender on any thread takes the socket
//! lock, writes and flushes at once. When `peek` reports data, the thread takes
//! the lock, switches the socket to non-blocking and reads frames until the
//! stream would block (which also drains bytes a TLS layer has already
//! decrypted), at most [`BURST`] messages per lock hold so that senders get a
//! turn. An idle connection therefore wakes only for heartbeats.

pub(crate) mod backoff;
pub(crate) mod heartbeat;
pub(crate) mod transport;

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, MutexGuard};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame as WsCloseFrame;
use tungstenite::Message as WsMessage;

use crate::client::{ClientStats, CloseInitiator, ConnectionState, Counters, Event};
use crate::config::{Config, EventPolicy};
use crate::error::{Error, Result, TimeoutKind};
use crate::message::Message;
use crate::protocol::correlator::{Completion, RequestCorrelator};
use crate::protocol::jsonrpc::{IdGenerator, Request};
use crate::protocol::subscriptions::SubscriptionTracker;
use crate::protocol::{Inbound, Protocol, Session};
use crate::rate_limit::{MessageInfo, MessageKind, TokenBucket};
use crate::recorder::{Direction, Entry, EntryKind, RecordFile};
use serde_json::Value;

use backoff::Backoff;
use heartbeat::{Heartbeat, HeartbeatAction};
use transport::{clamp_wait, is_would_block, would_block, Socket};

/// Messages read per lock hold before senders get a turn.
const BURST: usize = 256;

/// State shared by the [`crate::Client`] handles and the connection thread.
///
/// Lock order: `socket`, then `raw`, then `rtt`. `socket` is held for one write
/// (by senders) or one burst of non-blocking reads (by the thread), never
/// across a blocking wait for data.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) state: AtomicU8,
    pub(crate) closing: AtomicBool,
    pub(crate) socket: Mutex<Option<Socket>>,
    /// A clone of the TCP socket for `shutdown`, reachable while a burst holds `socket`.
    pub(crate) raw: Mutex<Option<TcpStream>>,
    pub(crate) events_rx: Receiver<Event>,
    pub(crate) doorbell_tx: Sender<()>,
    pub(crate) counters: Counters,
    pub(crate) rtt: Mutex<(Option<Duration>, Option<Duration>)>,
    pub(crate) protocol: Arc<dyn Protocol>,
    /// Inbound texts are parsed and classified only once this is set (a custom
    /// protocol, or the first request or subscription): a plain message stream
    /// pays nothing for JSON-RPC support.
    pub(crate) classify: AtomicBool,
    pub(crate) correlator: RequestCorrelator,
    pub(crate) ids: IdGenerator,
    pub(crate) subscriptions: Mutex<SubscriptionTracker>,
    pub(crate) limiter: Option<TokenBucket>,
    pub(crate) record: Option<RecordFile>,
}

impl Shared {
    pub(crate) fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: ConnectionState) {
        self.state.store(s.to_u8(), Ordering::Release);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn check_sendable(&self) -> Result<()> {
        match self.state() {
            ConnectionState::Connected => Ok(()),
            ConnectionState::Closing | ConnectionState::Closed => Err(Error::Closed),
            _ => Err(Error::NotConnected),
        }
    }

    /// Write one message on the calling thread.
    pub(crate) fn send(&self, message: Message) -> Result<()> {
        let kind = if message.is_text() {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let method = match (&self.limiter, &message) {
            // Method-based costs need the method: only parse when a limiter is set.
            (Some(_), Message::Text(t)) if t.starts_with('{') => serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_owned)),
            _ => None,
        };
        self.send_with(message, method.as_deref(), kind)
    }

    /// Write one message, charged to the rate limiter as `kind`/`method`.
    pub(crate) fn send_with(
        &self,
        message: Message,
        method: Option<&str>,
        kind: MessageKind,
    ) -> Result<()> {
        self.check_sendable()?;
        if let Some(limiter) = &self.limiter {
            let mut info = MessageInfo::new(kind, message.len());
            if let Some(m) = method {
                info = info.with_method(m);
            }
            limiter.acquire(&info)?;
        }
        self.write(message)
    }

    /// Write without state or rate checks (used while opening a connection).
    pub(crate) fn write(&self, message: Message) -> Result<()> {
        let len = message.len() as u64;
        // Copy only when recording; the entry is written after the lock is released.
        let recorded = self.record.as_ref().map(|_| message.clone());
        let ws = match message {
            Message::Text(t) => WsMessage::Text(t.into()),
            Message::Binary(b) => WsMessage::Binary(b.into()),
        };
        let mut guard = self.socket.lock();
        let sock = guard.as_mut().ok_or(Error::NotConnected)?;
        // Stamped under the lock, before the write: a reply can only be read
        // (and stamped) after we release it, so the file keeps cause before effect.
        let ts = recorded.as_ref().map(|_| SystemTime::now());
        if let Err(e) = sock.ws.send(ws) {
            let err = transport::ws_error(e, "sending");
            // A failed write leaves the stream in an unknown state: cut it so the
            // connection thread notices at once and reconnects. (NotConnected means
            // a close handshake is under way and nothing was written: leave it be.)
            if !matches!(err, Error::NotConnected) {
                sock.shutdown();
            }
            return Err(err);
        }
        drop(guard);
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(len, Ordering::Relaxed);
        if let (Some(m), Some(ts)) = (recorded, ts) {
            self.record_message(Direction::Out, m, ts);
        }
        Ok(())
    }

    pub(crate) fn record_message(&self, dir: Direction, m: Message, ts: SystemTime) {
        if let Some(file) = &self.record {
            let kind = match m {
                Message::Text(t) => EntryKind::Text(t),
                Message::Binary(b) => EntryKind::Binary(b),
            };
            file.record(Entry {
                ts,
                dir,
                kind,
                conn: Some(self.id),
            });
        }
    }

    pub(crate) fn record_entry(&self, dir: Direction, kind: EntryKind) {
        if let Some(file) = &self.record {
            file.record(Entry::now(dir, kind, Some(self.id)));
        }
    }

    /// Start the close handshake from the closing thread (best effort).
    pub(crate) fn send_close_frame(&self) {
        let mut guard = self.socket.lock();
        if let Some(sock) = guard.as_mut() {
            let ts = SystemTime::now();
            let frame = WsCloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if sock
                .ws
                .close(Some(frame))
                .and_then(|_| sock.ws.flush())
                .is_err()
            {
                sock.shutdown();
            }
            drop(guard);
            if let Some(file) = &self.record {
                file.record(Entry {
                    ts,
                    dir: Direction::Out,
                    kind: EntryKind::Close {
                        code: Some(1000),
                        reason: String::new(),
                    },
                    conn: Some(self.id),
                });
            }
        }
    }

    /// Cut the TCP connection so a blocked read returns.
    pub(crate) fn shutdown_socket(&self) {
        if let Some(raw) = self.raw.lock().as_ref() {
            let _ = raw.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Register, send, wait: the request path shared by `request`, `subscribe`
    /// and the opening session.
    pub(crate) fn request(&self, req: Request, timeout: Duration) -> Result<Value> {
        self.classify.store(true, Ordering::Release);
        let pending = self.correlator.register(req.id.clone(), &req.method)?;
        let text = self.protocol.encode_request(&req);
        // On a failed send `pending` drops here and frees its slot.
        self.send_with(Message::Text(text), Some(&req.method), MessageKind::Request)?;
        pending.wait(timeout)
    }

    pub(crate) fn batch(
        &self,
        requests: Vec<Request>,
        timeout: Duration,
    ) -> Result<Vec<Result<Value>>> {
        self.classify.store(true, Ordering::Release);
        let mut pending = Vec::with_capacity(requests.len());
        for r in &requests {
            pending.push(self.correlator.register(r.id.clone(), &r.method)?);
        }
        let text = crate::protocol::jsonrpc::encode_batch(&requests);
        self.check_sendable()?;
        if let Some(limiter) = &self.limiter {
            let infos: Vec<MessageInfo<'_>> = requests
                .iter()
                .map(|r| MessageInfo::new(MessageKind::Request, text.len()).with_method(&r.method))
                .collect();
            limiter.acquire_all(&infos)?;
        }
        self.write(Message::Text(text))?;
        let deadline = Instant::now() + timeout;
        Ok(pending
            .into_iter()
            .map(|p| p.wait(deadline.saturating_duration_since(Instant::now())))
            .collect())
    }

    /// Subscribe (`subscribe == true`) or unsubscribe, tracking the outcome.
    pub(crate) fn subscribe(&self, channels: Vec<String>, subscribe: bool) -> Result<Vec<String>> {
        if channels.is_empty() {
            return Err(Error::Config(crate::error::ConfigError::new(
                "channels",
                "must name at least one channel",
            )));
        }
        let id = self.ids.next();
        let req = if subscribe {
            self.subscriptions.lock().requested(&channels, id.clone());
            self.protocol.subscribe_request(&channels, &id)
        } else {
            self.subscriptions
                .lock()
                .requested_unsubscribe(&channels, id.clone());
            self.protocol.unsubscribe_request(&channels, &id)
        };
        match self.request(req, self.config.request_timeout) {
            Ok(result) => {
                let listed = self.protocol.confirmed_channels(&result);
                // Normally already tracked by the connection thread; this only
                // matters for a response that never went through `classify`.
                self.subscriptions.lock().confirmed(&id, listed.clone());
                Ok(match (subscribe, listed) {
                    (true, Some(listed)) => listed,
                    _ => channels,
                })
            }
            Err(e) => {
                self.subscriptions.lock().failed(&id);
                Err(e)
            }
        }
    }

    pub(crate) fn stats(&self) -> ClientStats {
        let c = &self.counters;
        let (last_rtt, smoothed_rtt) = *self.rtt.lock();
        ClientStats {
            state: self.state(),
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            pings_sent: c.pings_sent.load(Ordering::Relaxed),
            pongs_received: c.pongs_received.load(Ordering::Relaxed),
            last_rtt,
            smoothed_rtt,
            dropped_events: c.dropped_events.load(Ordering::Relaxed),
            pending_requests: self.correlator.pending(),
            request_latency: self.correlator.latency(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The user closed; `reply_seen` when the peer's close reply already arrived.
    UserClose { reply_seen: bool },
    /// The peer sent a close frame.
    PeerClosed { code: u16, reason: String },
    /// The connection failed.
    Lost(Error),
}

enum Drain {
    /// The stream would block: wait for data again.
    Empty,
    /// The burst limit was reached with data possibly left in buffers.
    More,
    Ended(End),
}

/// The connection thread's own state.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    events: Sender<Event>,
    doorbell: Receiver<()>,
    // Dropped when the thread ends, which tells `close()` it is done.
    _done: Sender<()>,
    heartbeat: Heartbeat,
    backoff: Backoff,
    peek: Option<TcpStream>,
    connected_at: Instant,
    /// While a connection is being opened (`on_connect`, restore), events wait
    /// here so that they follow the `Connected`/`Reconnected` event.
    backlog: Option<Vec<Event>>,
    /// The read timeout last set on the socket (`None`: unknown).
    armed: Option<Option<Duration>>,
    /// Reused between bursts to save an allocation per wake-up.
    batch: Vec<Message>,
}

impl Conn {
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: Sender<Event>,
        doorbell: Receiver<()>,
        done: Sender<()>,
    ) -> Conn {
        let c = &shared.config;
        let now = Instant::now();
        Conn {
            heartbeat: Heartbeat::new(c.heartbeat_interval, c.heartbeat_timeout, now),
            backoff: Backoff::new(c.retry_delay, c.max_retry_delay),
            shared,
            events,
            doorbell,
            _done: done,
            peek: None,
            connected_at: now,
            backlog: None,
            armed: None,
            batch: Vec::new(),
        }
    }

    fn debug(&self, what: std::fmt::Arguments<'_>) {
        if self.shared.config.debug {
            log::debug!(target: "zen_websocket", "conn {}: {what}", self.shared.id);
        }
    }

    /// Install the first socket (on the caller's thread, before the thread starts).
    pub(crate) fn open_first(mut self, socket: Socket) -> Result<Conn> {
        self.install(socket)?;
        // Written before the opening so that auth frames follow it in the file.
        let url = self.shared.config.url();
        self.shared
            .record_entry(Direction::Internal, EntryKind::Connected { url });
        if let Err(e) = self.open() {
            self.drop_socket();
            return Err(e);
        }
        self.shared.set_state(ConnectionState::Connected);
        let url = self.shared.config.url();
        self.debug(format_args!("connected to {url}"));
        let backlog = self.backlog.take();
        self.emit_lifecycle(Event::Connected { url });
        self.emit_all(backlog);
        Ok(self)
    }

    /// The protocol's opening on a fresh socket: `on_connect` (auth, platform
    /// heartbeats), then the subscription restore. Runs before user sends resume.
    fn open(&mut self) -> Result<()> {
        self.backlog = Some(Vec::new());
        let protocol = self.shared.protocol.clone();
        protocol.on_connect(&mut Opening { conn: self })?;
        if self.shared.config.restore_subscriptions {
            self.restore();
        }
        Ok(())
    }

    fn restore(&mut self) {
        let shared = self.shared.clone();
        let Some(channels) = shared.subscriptions.lock().restore_plan() else {
            return;
        };
        let id = shared.ids.next();
        shared.subscriptions.lock().requested(&channels, id.clone());
        let req = shared.protocol.subscribe_request(&channels, &id);
        match (Opening { conn: self }).request_raw(req) {
            Ok(result) => {
                let listed = shared.protocol.confirmed_channels(&result);
                shared.subscriptions.lock().confirmed(&id, listed.clone());
                let channels = listed.unwrap_or(channels);
                self.debug(format_args!("restored {} subscriptions", channels.len()));
                self.emit_lifecycle(Event::SubscriptionsRestored { channels });
            }
            Err(e) => {
                shared.subscriptions.lock().failed(&id);
                if !shared.is_closing() {
                    self.emit_lifecycle(Event::RestoreFailed {
                        channels,
                        error: Arc::new(e),
                    });
                }
            }
        }
    }

    fn emit_all(&mut self, backlog: Option<Vec<Event>>) {
        for ev in backlog.unwrap_or_default() {
            let policy = self.shared.config.event_policy;
            if self.emit(ev, policy).is_err() {
                break;
            }
        }
    }

    fn drain_buffered(&mut self) -> Result<()> {
        loop {
            match self.drain() {
                Drain::Empty => return Ok(()),
                Drain::More => continue,
                Drain::Ended(End::UserClose { .. }) => return Err(Error::Closed),
                Drain::Ended(End::PeerClosed { code, reason }) => {
                    return Err(Error::PeerClosed { code, reason })
                }
                Drain::Ended(End::Lost(e)) => return Err(e),
            }
        }
    }

    /// Wait up to `left` for data and drain it (used while opening).
    fn pump(&mut self, left: Duration, done: impl Fn() -> bool) -> Result<()> {
        // What tungstenite or TLS already buffered is invisible to `peek`; and
        // if that already answered the caller, waiting for more would stall it.
        self.drain_buffered()?;
        if left.is_zero() || done() {
            return Ok(());
        }
        self.armed = None;
        let peek = self.peek.as_ref().ok_or(Error::NotConnected)?;
        peek.set_read_timeout(Some(clamp_wait(left)))
            .map_err(|e| Error::io("opening", e))?;
        let mut probe = [0u8; 1];
        match peek.peek(&mut probe) {
            Ok(_) => self.drain_buffered(),
            Err(e) if is_would_block(&e) || e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(Error::io("opening", e)),
        }
    }

    fn install(&mut self, socket: Socket) -> Result<()> {
        let peek = socket
            .raw
            .try_clone()
            .map_err(|e| Error::io("cloning the socket", e))?;
        let raw = socket
            .raw
            .try_clone()
            .map_err(|e| Error::io("cloning the socket", e))?;
        *self.shared.socket.lock() = Some(socket);
        *self.shared.raw.lock() = Some(raw);
        self.peek = Some(peek);
        self.armed = None;
        let now = Instant::now();
        self.heartbeat.restart(now);
        self.connected_at = now;
        Ok(())
    }

    fn drop_socket(&mut self) {
        let old = self.shared.socket.lock().take();
        *self.shared.raw.lock() = None;
        self.peek = None;
        if let Some(s) = old {
            s.shutdown();
        }
        // Their answers can never come now: fail every pending request at once.
        let failed = self.shared.correlator.fail_all(|| Error::Disconnected);
        self.shared.subscriptions.lock().clear_pending();
        if failed > 0 {
            self.debug(format_args!("failed {failed} pending requests"));
        }
    }

    /// The thread's main loop: serve, reconnect, until closed or given up.
    pub(crate) fn run(mut self) {
        loop {
            let end = self.serve();
            self.debug(format_args!("connection ended: {end:?}"));
            let cause = match end {
                End::UserClose { reply_seen } => {
                    self.finish_close(reply_seen);
                    self.emit_closed(1000, String::new(), CloseInitiator::User);
                    break;
                }
                End::PeerClosed { code, reason } => {
                    self.drop_socket();
                    if self.shared.is_closing() {
                        self.emit_closed(code, reason, CloseInitiator::User);
                        break;
                    }
                    if !self.shared.config.reconnect_on_error || refuses_reconnect(code) {
                        self.emit_closed(code, reason, CloseInitiator::Peer);
                        break;
                    }
                    Error::PeerClosed { code, reason }
                }
                End::Lost(e) => {
                    self.drop_socket();
                    if self.shared.is_closing() {
                        self.emit_closed(1000, String::new(), CloseInitiator::User);
                        break;
                    }
                    e
                }
            };
            let cause = Arc::new(cause);
            if !self.shared.config.reconnect_on_error || !cause.is_recoverable() {
                self.emit_lifecycle(Event::Disconnected {
                    cause: cause.clone(),
                });
                self.emit_closed(1006, cause.to_string(), CloseInitiator::Peer);
                break;
            }
            match self.reconnect(cause) {
                Reconnect::Done => continue,
                Reconnect::Closing => {
                    self.drop_socket();
                    self.emit_closed(1000, String::new(), CloseInitiator::User);
                    break;
                }
                Reconnect::GaveUp => break,
            }
        }
        self.drop_socket();
        self.shared.set_state(ConnectionState::Closed);
    }

    fn emit_closed(&mut self, code: u16, reason: String, initiator: CloseInitiator) {
        self.shared.set_state(ConnectionState::Closed);
        self.emit_lifecycle(Event::Closed {
            code,
            reason,
            initiator,
        });
    }

    /// Serve one open connection until it ends.
    fn serve(&mut self) -> End {
        let mut probe = [0u8; 1];
        // Bytes that arrived with the handshake response (or during the opening)
        // may already sit in tungstenite's buffer, invisible to `peek`: drain first.
        loop {
            match self.drain() {
                Drain::Empty => break,
                Drain::More => continue,
                Drain::Ended(end) => return end,
            }
        }
        loop {
            if self.shared.is_closing() {
                return End::UserClose { reply_seen: false };
            }
            if let Err(end) = self.tick() {
                return end;
            }
            let Some(peek) = self.peek.as_ref() else {
                return End::Lost(Error::NotConnected);
            };
            let wait = self
                .heartbeat
                .next_wake()
                .map(|t| clamp_wait(t.saturating_duration_since(Instant::now())));
            // setsockopt on every wake-up is a syscall per burst; a timeout that
            // is at most 2 ms off the deadline is reused.
            let stale = match (self.armed, wait) {
                (Some(None), None) => false,
                (Some(Some(old)), Some(new)) => old.abs_diff(new) > Duration::from_millis(2),
                _ => true,
            };
            if stale {
                if let Err(e) = peek.set_read_timeout(wait) {
                    return End::Lost(Error::io("waiting for data", e));
                }
                self.armed = Some(wait);
            }
            match peek.peek(&mut probe) {
                Ok(_) => loop {
                    match self.drain() {
                        Drain::Empty => break,
                        Drain::More => {
                            if self.shared.is_closing() {
                                return End::UserClose { reply_seen: false };
                            }
                            if let Err(end) = self.tick() {
                                return end;
                            }
                        }
                        Drain::Ended(end) => return end,
                    }
                },
                Err(e) if is_would_block(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.shared.is_closing() {
                        return End::UserClose { reply_seen: false };
                    }
                    return End::Lost(Error::io("waiting for data", e));
                }
            }
        }
    }

    /// Heartbeat duties: send a due ping, or declare the peer dead.
    fn tick(&mut self) -> std::result::Result<(), End> {
        match self.heartbeat.poll(Instant::now()) {
            HeartbeatAction::Idle => Ok(()),
            HeartbeatAction::PeerDead => Err(End::Lost(Error::Timeout(TimeoutKind::Pong))),
            HeartbeatAction::Ping(payload) => {
                let mut guard = self.shared.socket.lock();
                let sock = guard.as_mut().ok_or(End::Lost(Error::NotConnected))?;
                sock.ws
                    .send(WsMessage::Ping(payload.into()))
                    .map_err(|e| End::Lost(transport::ws_error(e, "sending a ping")))?;
                self.shared
                    .counters
                    .pings_sent
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Read everything available (up to a burst), then deliver it.
    fn drain(&mut self) -> Drain {
        let closing = self.shared.is_closing();
        let mut batch = std::mem::take(&mut self.batch);
        let mut end = None;
        let mut stopped = false;
        {
            let shared = self.shared.clone();
            let mut guard = shared.socket.lock();
            let Some(sock) = guard.as_mut() else {
                return Drain::Ended(End::Lost(Error::NotConnected));
            };
            if let Err(e) = sock.set_nonblocking(true) {
                return Drain::Ended(End::Lost(Error::io("reading", e)));
            }
            for _ in 0..BURST {
                match sock.ws.read() {
                    Ok(WsMessage::Text(t)) => batch.push(Message::Text(t.as_str().to_owned())),
                    Ok(WsMessage::Binary(b)) => batch.push(Message::Binary(b.to_vec())),
                    Ok(WsMessage::Ping(_)) | Ok(WsMessage::Frame(_)) => {}
                    Ok(WsMessage::Pong(p)) => self.on_pong(&p),
                    Ok(WsMessage::Close(frame)) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                            .unwrap_or((1005, String::new()));
                        self.shared.record_entry(
                            Direction::In,
                            EntryKind::Close {
                                code: Some(code),
                                reason: reason.clone(),
                            },
                        );
                        end = Some(if closing {
                            End::UserClose { reply_seen: true }
                        } else {
                            End::PeerClosed { code, reason }
                        });
                        stopped = true;
                        break;
                    }
                    Err(e) if would_block(&e) => {
                        stopped = true;
                        break;
                    }
                    Err(e) => {
                        end = Some(if closing {
                            End::UserClose { reply_seen: true }
                        } else {
                            End::Lost(transport::ws_error(e, "reading"))
                        });
                        stopped = true;
                        break;
                    }
                }
            }

            if let Err(e) = sock.set_nonblocking(false) {
                end.get_or_insert(End::Lost(Error::io("reading", e)));
            }
            // Pongs and close replies that tungstenite queued while reading go out now.
            if let Err(e) = sock.ws.flush() {
                if end.is_none() {
                    end = Some(End::Lost(transport::ws_error(e, "sending")));
                }
            }
            // Hand the lock to a waiting sender rather than re-taking it ourselves.
            MutexGuard::unlock_fair(guard);
        }
        let delivered = self.deliver(&mut batch);
        self.batch = batch;
        if let Err(end) = delivered {
            return Drain::Ended(end);
        }
        match end {
            Some(e) => Drain::Ended(e),
            None if !stopped => Drain::More,
            None => Drain::Empty,
        }
    }

    fn on_pong(&mut self, payload: &[u8]) {
        if self.heartbeat.on_pong(payload, Instant::now()).is_some() {
            self.shared
                .counters
                .pongs_received
                .fetch_add(1, Ordering::Relaxed);
            *self.shared.rtt.lock() = (self.heartbeat.last_rtt(), self.heartbeat.smoothed_rtt());
        }
    }

    fn deliver(&mut self, batch: &mut Vec<Message>) -> std::result::Result<(), End> {
        if batch.is_empty() {
            return Ok(());
        }
        // One pass for the counters and the recording's buffer sizes.
        let (text, binary) = batch.iter().fold((0, 0), |(t, b), m| match m {
            Message::Text(s) => (t + s.len(), b),
            Message::Binary(v) => (t, b + v.len()),
        });
        let c = &self.shared.counters;
        c.messages_in
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        c.bytes_in
            .fetch_add((text + binary) as u64, Ordering::Relaxed);
        if let Some(file) = &self.shared.record {
            // Recorded before delivery (the file shows what arrived even if the
            // consumer never reads it), as one hand-over per burst, stamped once:
            // the frames of a burst arrived together.
            let mut burst = file.new_burst(
                SystemTime::now(),
                Direction::In,
                Some(self.shared.id),
                (batch.len(), text, binary),
            );
            for m in batch.iter() {
                match m {
                    Message::Text(t) => burst.push_text(t),
                    Message::Binary(b) => burst.push_binary(b),
                }
            }
            file.record_burst(burst);
        }
        let classify = self.shared.classify.load(Ordering::Acquire);
        for m in batch.drain(..) {
            let ev = if classify {
                match self.classify(m) {
                    Some(ev) => ev,
                    None => continue,
                }
            } else {
                Event::Message(m)
            };
            self.emit(ev, self.shared.config.event_policy)?;
        }
        Ok(())
    }

    /// Route one inbound message through the protocol: responses to their
    /// callers, heartbeats answered, notifications as typed events.
    fn classify(&mut self, m: Message) -> Option<Event> {
        let Message::Text(text) = &m else {
            return Some(Event::Message(m));
        };
        let parsed: Option<Value> = match text.as_bytes().first() {
            Some(b'{') | Some(b'[') => serde_json::from_str(text).ok(),
            _ => None,
        };
        match self.shared.protocol.classify(text, parsed.as_ref()) {
            Inbound::Response(responses) => {
                let mut late = None;
                for r in responses {
                    // Track a subscription's outcome here, before the caller is
                    // woken: a disconnect right after (drop_socket clears the
                    // pending subscribe requests) must not lose a confirmation
                    // the caller is about to be told about.
                    {
                        let mut subs = self.shared.subscriptions.lock();
                        if subs.is_pending(&r.id) {
                            match &r.outcome {
                                Ok(result) => {
                                    let listed = self.shared.protocol.confirmed_channels(result);
                                    subs.confirmed(&r.id, listed);
                                }
                                Err(_) => {
                                    subs.failed(&r.id);
                                }
                            }
                        }
                    }
                    if let Completion::Late(r) = self.shared.correlator.complete(r) {
                        // Only the last of a batch of late answers is kept as the
                        // event; earlier ones are delivered first.
                        if let Some(prev) = late.replace(r) {
                            let _ =
                                self.emit(Event::LateResponse(Box::new(prev)), EventPolicy::Block);
                        }
                    }
                }
                late.map(|r| Event::LateResponse(Box::new(r)))
            }
            Inbound::Subscription { channel, data } => Some(Event::Subscription { channel, data }),
            // The resubscribe goes out first: the sooner the server has it, the
            // fewer changes are dropped while the fresh snapshot is awaited.
            Inbound::SequenceGap {
                channel,
                expected,
                received,
            } => {
                self.resubscribe(&channel);
                Some(Event::SequenceGap {
                    channel,
                    expected,
                    received,
                })
            }
            Inbound::Discard => None,
            Inbound::Heartbeat { reply } => {
                if let Some(reply) = reply {
                    // Platform heartbeats must be answered even when the limiter is
                    // empty: a missed answer ends the session.
                    if let Err(e) = self.shared.write(Message::Text(reply)) {
                        self.debug(format_args!("heartbeat reply failed: {e}"));
                    }
                }
                None
            }
            _ => Some(Event::Message(m)),
        }
    }

    /// After a sequence gap: unsubscribe `channel`, then subscribe it again, for
    /// a fresh snapshot. Both are written now, from this thread, without waiting
    /// for their answers (this thread is the one that reads them). They are
    /// registered detached, so their answers are consumed instead of surfacing
    /// as `LateResponse`; the SubscriptionTracker is not involved, since the
    /// channel stays wanted throughout (it stays tracked, and a reconnect
    /// meanwhile restores it with the rest). Like platform heartbeat answers,
    /// they bypass the rate limiter: this thread must never sleep on it, and
    /// the protocol reports at most one gap per channel until its snapshot
    /// arrives, which bounds them. A failed write has cut the socket; the
    /// reconnect then restores the channel, and `fail_all` frees the slots.
    /// (A user's unsubscribe of the same channel written at the same moment
    /// can reach the server before these two, which then leaves it
    /// subscribed while the tracker drops it; unsubscribing again ends it.)
    fn resubscribe(&self, channel: &str) {
        let shared = &self.shared;
        let channels = [channel.to_owned()];
        for subscribe in [false, true] {
            let id = shared.ids.next();
            let req = if subscribe {
                shared.protocol.subscribe_request(&channels, &id)
            } else {
                shared.protocol.unsubscribe_request(&channels, &id)
            };
            let sent = shared
                .correlator
                .register_detached(id, &req.method)
                .and_then(|()| shared.write(Message::Text(shared.protocol.encode_request(&req))));
            if let Err(e) = sent {
                self.debug(format_args!("resubscribing {channel} failed: {e}"));
                return;
            }
        }
        self.debug(format_args!("resubscribing {channel} after a sequence gap"));
    }

    /// Lifecycle events are never dropped.
    fn emit_lifecycle(&mut self, ev: Event) {
        match &ev {
            Event::Disconnected { cause } => self.shared.record_entry(
                Direction::Internal,
                EntryKind::Disconnected {
                    cause: cause.to_string(),
                },
            ),
            Event::Reconnecting { attempt, delay, .. } => self.shared.record_entry(
                Direction::Internal,
                EntryKind::Reconnecting {
                    attempt: *attempt,
                    delay_ms: delay.as_millis().min(u64::MAX as u128) as u64,
                },
            ),
            _ => {}
        }
        let _ = self.emit(ev, EventPolicy::Block);
    }

    /// Put an event on the channel under `policy`. While blocked on a full channel
    /// the thread still wakes for `close()`; the time blocked does not count
    /// against the peer's pong deadline.
    fn emit(&mut self, ev: Event, policy: EventPolicy) -> std::result::Result<(), End> {
        if let Some(backlog) = self.backlog.as_mut() {
            backlog.push(ev);
            return Ok(());
        }
        let ev = match self.events.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Ok(()),
            Err(TrySendError::Full(ev)) => ev,
        };
        if policy == EventPolicy::DropNewest && !ev.is_lifecycle() {
            self.shared
                .counters
                .dropped_events
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let blocked_at = Instant::now();
        let mut ev = ev;
        // Wait in slices so that `close()` is noticed while the consumer is away.
        loop {
            match self.events.send_timeout(ev, Duration::from_millis(20)) {
                Ok(()) | Err(SendTimeoutError::Disconnected(_)) => break,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.shared.is_closing() {
                        return Err(End::UserClose { reply_seen: false });
                    }
                    ev = back;
                }
            }
        }
        self.heartbeat.extend(blocked_at.elapsed());
        Ok(())
    }

    /// After a user close: wait (bounded) for the peer's close reply, then drop the socket.
    fn finish_close(&mut self, reply_seen: bool) {
        if !reply_seen {
            let deadline = Instant::now() + self.shared.config.close_timeout;
            let mut probe = [0u8; 1];
            'wait: while let Some(peek) = self.peek.as_ref() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || peek.set_read_timeout(Some(clamp_wait(left))).is_err() {
                    break;
                }
                match peek.peek(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if is_would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                let mut guard = self.shared.socket.lock();
                let Some(sock) = guard.as_mut() else { break };
                if sock.set_nonblocking(true).is_err() {
                    break;
                }
                // Discard data that was in flight; stop at the close reply. The
                // deadline is checked on every read so a flood cannot hold us.
                while Instant::now() < deadline {
                    match sock.ws.read() {
                        Ok(WsMessage::Close(frame)) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                                .unwrap_or((1005, String::new()));
                            self.shared.record_entry(
                                Direction::In,
                                EntryKind::Close {
                                    code: Some(code),
                                    reason,
                                },
                            );
                            break 'wait;
                        }
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(_) => break 'wait,
                    }
                }
                let _ = sock.set_nonblocking(false);
            }
        }
        if let Some(sock) = self.shared.socket.lock().as_mut() {
            let _ = sock.set_nonblocking(false);
            let _ = sock.ws.flush();
        }
        self.drop_socket();
    }

    fn reconnect(&mut self, cause: Arc<Error>) -> Reconnect {
        self.shared.set_state(ConnectionState::Reconnecting);
        self.emit_lifecycle(Event::Disconnected {
            cause: cause.clone(),
        });
        if self.connected_at.elapsed() >= self.shared.config.stable_after {
            self.backoff.reset();
        }
        let mut last = cause;
        loop {
            let attempts = self.backoff.attempt();
            if let Some(max) = self.shared.config.retry_count {
                if attempts >= max {
                    self.debug(format_args!("giving up after {attempts} attempts"));
                    self.shared.set_state(ConnectionState::Closed);
                    self.emit_lifecycle(Event::GaveUp {
                        attempts,
                        last_error: last,
                    });
                    return Reconnect::GaveUp;
                }
            }
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempt();
            self.debug(format_args!(
                "reconnect attempt {attempt} in {delay:?} after: {last}"
            ));
            self.emit_lifecycle(Event::Reconnecting {
                attempt,
                delay,
                cause: last.clone(),
            });
            if self.wait_or_close(delay) {
                return Reconnect::Closing;
            }
            let result = transport::dial(&self.shared.config)
                .and_then(|s| self.install(s))
                .and_then(|()| {
                    self.shared
                        .record_entry(Direction::Internal, EntryKind::Reconnected { attempt });
                    self.open()
                });
            if self.shared.is_closing() {
                return Reconnect::Closing;
            }
            match result {
                Ok(()) => {
                    self.shared.set_state(ConnectionState::Connected);
                    self.shared
                        .counters
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    self.debug(format_args!("reconnected on attempt {attempt}"));
                    let backlog = self.backlog.take();
                    self.emit_lifecycle(Event::Reconnected { attempt });
                    self.emit_all(backlog);
                    return Reconnect::Done;
                }
                Err(e) => {
                    self.drop_socket();
                    // Events of a failed opening are kept, in order.
                    let backlog = self.backlog.take();
                    self.emit_all(backlog);
                    let e = Arc::new(e);
                    self.debug(format_args!("attempt {attempt} failed: {e}"));
                    self.emit_lifecycle(Event::ReconnectFailed {
                        attempt,
                        error: e.clone(),
                    });
                    // An error answer from the venue while opening (a transient
                    // "retry later" to a set-up request) costs one attempt, not
                    // the whole client; auth, TLS and config errors still stop.
                    if !e.is_recoverable() && !matches!(*e, Error::Rpc { .. }) {
                        self.shared.set_state(ConnectionState::Closed);
                        self.emit_lifecycle(Event::GaveUp {
                            attempts: attempt,
                            last_error: e,
                        });
                        return Reconnect::GaveUp;
                    }
                    last = e;
                }
            }
        }
    }

    /// Sleep for `delay`, returning early (true) when the client is closing.
    fn wait_or_close(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            if self.shared.is_closing() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // A ring means "look at the closing flag"; a timeout means the wait is over.
            if self.doorbell.recv_timeout(left).is_err() {
                return self.shared.is_closing();
            }
        }
    }
}

/// What `on_connect` may do on a connection being opened: requests are answered
/// by pumping the socket on this thread, since the connection is not serving yet.
struct Opening<'a> {
    conn: &'a mut Conn,
}

impl Opening<'_> {
    fn request_raw(&mut self, req: Request) -> Result<Value> {
        let shared = self.conn.shared.clone();
        shared.classify.store(true, Ordering::Release);
        let pending = shared.correlator.register(req.id.clone(), &req.method)?;
        if let Some(limiter) = &shared.limiter {
            limiter.acquire(&MessageInfo::new(MessageKind::Request, 0).with_method(&req.method))?;
        }
        shared.write(Message::Text(shared.protocol.encode_request(&req)))?;
        let deadline = Instant::now() + shared.config.request_timeout;
        while shared.correlator.is_pending(&req.id) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || shared.is_closing() {
                break;
            }
            self.conn
                .pump(left, || !shared.correlator.is_pending(&req.id))?;
        }
        pending.wait(Duration::ZERO)
    }
}

impl Session for Opening<'_> {
    fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.conn.shared.ids.next();
        self.request_raw(Request::new(id, method, params))
    }

    fn send_text(&mut self, text: &str) -> Result<()> {
        self.conn.shared.write(Message::Text(text.to_owned()))
    }
}

enum Reconnect {
    Done,
    Closing,
    GaveUp,
}

/// Peer close codes that say the same connection would be refused again.
fn refuses_reconnect(code: u16) -> bool {
    matches!(code, 1003 | 1007 | 1008 | 1010)
}

impl Event {
    fn is_lifecycle(&self) -> bool {
        !matches!(self, Event::Message(_))
    }
}
