//! One connection thread (`zen-ws-mock-conn-N`): TLS and WebSocket handshakes,
//! then a loop that answers what the client sends and runs the handle's
//! commands, sleeping on both at once between them.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, TryRecvError};
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::http;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame as WireCloseFrame;
use tungstenite::{Message as WireMessage, WebSocket};

use super::pipe::{self, Pipe, Transport};
use super::server::{Command, HandshakeInfo, Reply, Shared};
use crate::{CloseFrame, Message};

/// How long the TLS and WebSocket handshakes together may take, so that a
/// client that connects and sends nothing does not hold a thread forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the client's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a close reason can carry (125-byte control payload minus the code).
const MAX_CLOSE_REASON: usize = 123;
/// How many messages are read in a row before the commands get a turn, so a
/// client that floods the server cannot starve injections and disconnects.
const READ_BURST: usize = 64;

/// What a connection thread needs.
pub(super) struct ConnContext {
    pub(super) id: u64,
    pub(super) shared: Arc<Shared>,
    /// From the handle; disconnected when the handle removes the connection.
    pub(super) commands: Receiver<Command>,
    /// Disconnected when the server stops; reply delays sleep on it.
    pub(super) shutdown: Receiver<()>,
    pub(super) tls: Option<native_tls::TlsAcceptor>,
}

/// What the loop does after one step.
enum Flow {
    Continue,
    /// Nothing more to read for now.
    Idle,
    /// End the connection now (error, stop, or the client closed).
    End,
    /// Run the close handshake with this code and reason, then end.
    Close(u16, String),
    /// Stop reading and answering until the handle lets go.
    Silent,
}

/// The thread's body: start the reader thread, serve, then shut the socket
/// down and join the reader.
pub(super) fn run(stream: TcpStream, ctx: ConnContext) {
    if let Err(e) = start(&stream, &ctx) {
        log::debug!("mock server connection {}: cannot start: {e}", ctx.id);
    }
    // Ends the reader's blocking read, if the client has not hung up already.
    let _ = stream.shutdown(Shutdown::Both);
    // Drops the handle's clone of the socket, so the socket really closes.
    ctx.shared.unregister(ctx.id);
    log::debug!("mock server connection {} ended", ctx.id);
}

fn start(stream: &TcpStream, ctx: &ConnContext) -> io::Result<()> {
    // Writes of the handshakes are bounded too; reads are bounded by the pipe.
    // (The reader's clone shares these options, so no read timeout is set.)
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // Both clones before the spawn: once the reader runs, nothing may return early.
    let reader_socket = stream.try_clone()?;
    let writer_socket = stream.try_clone()?;
    let (bytes, incoming) = crossbeam_channel::bounded(pipe::QUEUED_CHUNKS);
    let reader = thread::Builder::new()
        .name(format!("zen-ws-mock-read-{}", ctx.id))
        .spawn(move || pipe::run_reader(reader_socket, bytes))?;
    let ready = incoming.clone();
    let pipe = Pipe::new(incoming, writer_socket, Instant::now() + HANDSHAKE_TIMEOUT);
    handshake(pipe, &ready, ctx);
    // Every receiver of the reader's channel is gone now (the pipe went with the
    // WebSocket), so a reader blocked on a full channel wakes; one blocked in
    // `read` wakes at the shutdown.
    drop(ready);
    let _ = stream.shutdown(Shutdown::Both);
    if reader.join().is_err() {
        log::error!("mock server connection {}: reader thread panicked", ctx.id);
    }
    Ok(())
}

fn handshake(pipe: Pipe, ready: &Receiver<Vec<u8>>, ctx: &ConnContext) {
    match &ctx.tls {
        Some(acceptor) => match acceptor.accept(pipe) {
            Ok(tls) => upgrade(tls, ready, ctx),
            Err(e) => log::debug!(
                "mock server connection {}: TLS handshake failed: {e}",
                ctx.id
            ),
        },
        None => upgrade(pipe, ready, ctx),
    }
}

fn upgrade<S: Transport>(stream: S, ready: &Receiver<Vec<u8>>, ctx: &ConnContext) {
    let mut ws = match tungstenite::accept_hdr(stream, UpgradeCallback(ctx)) {
        Ok(ws) => ws,
        Err(e) => {
            log::debug!("mock server connection {}: upgrade failed: {e}", ctx.id);
            return;
        }
    };
    let pipe = ws.get_mut().pipe();
    pipe.set_nonblocking();
    if let Err(e) = pipe.socket().set_write_timeout(None) {
        log::debug!(
            "mock server connection {}: socket setup failed: {e}",
            ctx.id
        );
        return;
    }
    serve(ws, ready, ctx);
}

/// The upgrade callback: records the request, then accepts or refuses it.
///
/// A trait impl rather than a closure: tungstenite's `Callback` fixes the large
/// `ErrorResponse` error type, which clippy would flag on a closure or function.
struct UpgradeCallback<'a>(&'a ConnContext);

impl Callback for UpgradeCallback<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let ctx = self.0;
        let info = HandshakeInfo {
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_owned()),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        };
        ctx.shared.observe(|o| o.last_request = Some(info));
        match ctx.shared.refuse_status() {
            None => {
                // Counted here, before the 101 goes out, so a test sees the count as
                // soon as its client is connected.
                ctx.shared.upgraded(ctx.id);
                Ok(response)
            }
            Some(status) => Err(refusal(status)),
        }
    }
}

/// An HTTP error response with `status` (500 if that is not a 3xx–5xx status).
fn refusal(status: u16) -> ErrorResponse {
    let status = http::StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.is_redirection() || s.is_client_error() || s.is_server_error())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "upgrade refused by MockServer with HTTP {}",
        status.as_u16()
    );
    let built = http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CONNECTION, "close")
        .body(Some(body));
    built.unwrap_or_else(|_| {
        // Only reachable if a header above were invalid; they are constants.
        let mut plain = ErrorResponse::new(None);
        *plain.status_mut() = status;
        plain
    })
}

/// The upgraded connection's loop.
fn serve<S: Transport>(mut ws: WebSocket<S>, ready: &Receiver<Vec<u8>>, ctx: &ConnContext) {
    loop {
        let mut flow = commands(&mut ws, ctx);
        for _ in 0..READ_BURST {
            if !matches!(flow, Flow::Continue) {
                break;
            }
            flow = read_one(&mut ws, ctx);
        }
        match flow {
            Flow::Continue => {}
            Flow::Idle => {
                // Everything the client sent is consumed (the pipe said
                // WouldBlock): sleep until it sends more or a command comes.
                let mut select = Select::new();
                select.recv(ready);
                select.recv(&ctx.commands);
                select.ready();
            }
            Flow::End => return,
            Flow::Close(code, reason) => {
                return close_gracefully(&mut ws, ready, ctx, code, &reason)
            }
            Flow::Silent => {
                // Half-open: no more reads or writes (so no pongs either). Wait for
                // the handle to drop the connection (Abrupt, stop); ignore the rest.
                while ctx.commands.recv().is_ok() {}
                return;
            }
        }
    }
}

/// Run the commands queued by the handle.
fn commands<S: Transport>(ws: &mut WebSocket<S>, ctx: &ConnContext) -> Flow {
    let mut wrote = false;
    loop {
        match ctx.commands.try_recv() {
            Ok(Command::Send(message)) => {
                if !alive(ws.write(to_wire(message))) {
                    return Flow::End;
                }
                wrote = true;
            }
            Ok(Command::Close(code, reason)) => return Flow::Close(code, reason),
            Ok(Command::Silent(ack)) => {
                // What was injected before the silence was promised to the client.
                if wrote {
                    let _ = ws.flush();
                }
                let _ = ack.send(());
                return Flow::Silent;
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => return Flow::End,
        }
    }
    if wrote && !alive(ws.flush()) {
        return Flow::End;
    }
    Flow::Continue
}

/// Read (at most) one message and act on it.
fn read_one<S: Transport>(ws: &mut WebSocket<S>, ctx: &ConnContext) -> Flow {
    let message = match ws.read() {
        Ok(WireMessage::Text(text)) => Message::Text(text.as_str().to_owned()),
        Ok(WireMessage::Binary(data)) => Message::Binary(data.to_vec()),
        Ok(WireMessage::Ping(_)) => {
            ctx.shared.observe(|o| o.pings += 1);
            // tungstenite queued the pong; it goes out with the flush, after the delay.
            if !pause(ctx, ctx.shared.reply_delay()) || !alive(ws.flush()) {
                return Flow::End;
            }
            return Flow::Continue;
        }
        Ok(WireMessage::Pong(_)) | Ok(WireMessage::Frame(_)) => return Flow::Continue,
        Ok(WireMessage::Close(frame)) => {
            record_close(ctx, frame);
            // tungstenite queued the close reply; flushing sends it, and for a
            // server it then reports ConnectionClosed.
            finish_close(ws);
            return Flow::End;
        }
        Err(e) if no_frame_yet(&e) => {
            // A write that could not finish (TLS may need to read first) is
            // still buffered: push it out before sleeping.
            return if alive(ws.flush()) {
                Flow::Idle
            } else {
                Flow::End
            };
        }
        Err(e) => {
            log::debug!("mock server connection {}: read failed: {e}", ctx.id);
            return Flow::End;
        }
    };
    ctx.shared.observe(|o| o.received.push(message.clone()));
    let handler = ctx.shared.handler();
    let reply = match panic::catch_unwind(AssertUnwindSafe(|| handler(&message))) {
        Ok(reply) => reply,
        Err(_) => {
            log::warn!("mock server handler panicked; closing the connection with 1011");
            return Flow::Close(1011, "handler panicked".to_owned());
        }
    };
    if reply == Reply::None {
        return Flow::Continue;
    }
    if !pause(ctx, ctx.shared.reply_delay()) {
        return Flow::End;
    }
    let sent = match reply {
        Reply::None => Ok(()),
        Reply::Text(t) => ws.send(WireMessage::text(t)),
        Reply::Binary(b) => ws.send(WireMessage::binary(b)),
        Reply::Many(messages) => messages
            .into_iter()
            .try_for_each(|m| ws.write(to_wire(m)))
            .and_then(|()| ws.flush()),
        Reply::Close(code, reason) => return Flow::Close(code, reason),
    };
    if alive(sent) {
        Flow::Continue
    } else {
        Flow::End
    }
}

/// Send a close frame, then wait (bounded) for the client's answer.
fn close_gracefully<S: Transport>(
    ws: &mut WebSocket<S>,
    ready: &Receiver<Vec<u8>>,
    ctx: &ConnContext,
    code: u16,
    reason: &str,
) {
    let frame = WireCloseFrame {
        code: CloseCode::from(code),
        reason: cut_reason(reason).into(),
    };
    if !alive(ws.close(Some(frame))) {
        return;
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        // Commands no longer apply, but a stop (disconnection) ends the wait.
        loop {
            match ctx.commands.try_recv() {
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        match ws.read() {
            Ok(WireMessage::Close(frame)) => record_close(ctx, frame),
            // Data after our close frame is allowed but has no one to answer it.
            Ok(_) => {}
            Err(e) if no_frame_yet(&e) => {
                let mut select = Select::new();
                select.recv(ready);
                select.recv(&ctx.commands);
                if select.ready_deadline(deadline).is_err() {
                    log::debug!(
                        "mock server connection {}: no close reply within {CLOSE_TIMEOUT:?}",
                        ctx.id
                    );
                    return;
                }
            }
            // ConnectionClosed: the handshake is complete.
            Err(_) => return,
        }
    }
}

/// Send the close reply tungstenite queued; for a server, the flush then
/// reports ConnectionClosed, and the socket can go.
fn finish_close<S: Transport>(ws: &mut WebSocket<S>) {
    let _ = ws.flush();
}

fn record_close(ctx: &ConnContext, frame: Option<WireCloseFrame>) {
    let frame = match frame {
        Some(f) => CloseFrame::new(u16::from(f.code), f.reason.as_str()),
        None => CloseFrame::new(1005, ""),
    };
    ctx.shared.observe(|o| o.close_frames.push(frame));
}

/// Sleep `delay`, waking early if the server stops. False: the server stopped.
fn pause(ctx: &ConnContext, delay: Duration) -> bool {
    if delay.is_zero() {
        return true;
    }
    // Nobody ever sends on `shutdown`: it only disconnects, at stop.
    !matches!(
        ctx.shutdown.recv_timeout(delay),
        Err(RecvTimeoutError::Disconnected)
    )
}

/// True when the connection survives this result. A write that would block
/// (possible under TLS, which may need to read) stays buffered in tungstenite
/// and goes out with a later flush.
fn alive(result: tungstenite::Result<()>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => no_frame_yet(&e),
    }
}

/// Nothing to read right now: the pipe's WouldBlock (and, defensively, the
/// TimedOut and Interrupted a socket could report).
fn no_frame_yet(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    ))
}

fn to_wire(message: Message) -> WireMessage {
    match message {
        Message::Text(t) => WireMessage::text(t),
        Message::Binary(b) => WireMessage::binary(b),
    }
}

/// `reason` cut to at most 123 bytes, on a character boundary.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(cut_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = cut_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
    }

    #[test]
    fn refusals_use_the_status_or_fall_back_to_500() {
        assert_eq!(refusal(503).status().as_u16(), 503);
        assert_eq!(refusal(401).status().as_u16(), 401);
        assert_eq!(refusal(200).status().as_u16(), 500);
        assert_eq!(refusal(1000).status().as_u16(), 500);
        assert!(refusal(503).body().as_deref().unwrap_or("").contains("503"));
    }
}
