//! Dialing: TCP connect, TLS handshake and WebSocket upgrade under one deadline,
//! and the mapping of transport errors to [`Error`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

use crate::config::Config;
use crate::error::{Error, ProtocolError, TimeoutKind};

/// A TCP stream that enforces an overall deadline while one is set.
///
/// The TLS handshake and the upgrade make many small reads; a per-read timeout
/// alone would let a peer that trickles one byte at a time hold `connect` far
/// past `connect_timeout`. Before every read and write we shrink the socket
/// timeout to what is left of the deadline, and fail once it has passed.
#[derive(Debug)]
pub(crate) struct DeadlineStream {
    tcp: TcpStream,
    deadline: Option<Instant>,
}

impl DeadlineStream {
    fn arm(&self, write: bool) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect deadline"));
        }
        if write {
            self.tcp.set_write_timeout(Some(left))
        } else {
            self.tcp.set_read_timeout(Some(left))
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(false)?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(true)?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The byte stream under the WebSocket: plain TCP or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(DeadlineStream),
    Tls(Box<native_tls::TlsStream<DeadlineStream>>),
}

impl Stream {
    fn inner(&mut self) -> &mut DeadlineStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_mut(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open WebSocket and a second handle on its TCP socket.
///
/// `raw` is a `try_clone` of the same socket: the connection thread waits on it
/// (`peek`) without holding the WebSocket's lock, and `close()` can shut it down
/// to wake that wait.
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) ws: WebSocket<Stream>,
    pub(crate) raw: TcpStream,
}

impl Socket {
    /// Switch between blocking (sends, peeks) and non-blocking (draining reads).
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.raw.set_nonblocking(on)
    }

    pub(crate) fn shutdown(&self) {
        // Errors only mean it is already shut down or gone.
        let _ = self.raw.shutdown(Shutdown::Both);
    }
}

/// The tungstenite configuration derived from ours.
pub(crate) fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_message_size(Some(config.max_message_size))
        // A frame can never be larger than a message; checking the frame header
        // refuses an announced 2 GB frame before anything is allocated.
        .max_frame_size(Some(config.max_message_size))
}

/// Open a connection: resolve, connect, TLS, upgrade, all within `connect_timeout`.
pub(crate) fn dial(config: &Config) -> Result<Socket, Error> {
    let ep = &config.endpoint;
    let deadline = Instant::now() + config.connect_timeout;
    let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|source| Error::Dns {
            host: ep.host.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Dns {
            host: ep.host.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    let mut last = None;
    let mut tcp = None;
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(TimeoutKind::Connect));
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let tcp = match (tcp, last) {
        (Some(t), _) => t,
        (None, Some((addr, e))) => return Err(connect_error(addr, e)),
        (None, None) => return Err(Error::Timeout(TimeoutKind::Connect)),
    };
    tcp.set_nodelay(true)
        .map_err(|e| Error::io("configuring the socket", e))?;
    let raw = tcp
        .try_clone()
        .map_err(|e| Error::io("cloning the socket", e))?;
    let plain = DeadlineStream {
        tcp,
        deadline: Some(deadline),
    };
    let stream = if ep.tls {
        Stream::Tls(Box::new(tls_handshake(config, plain)?))
    } else {
        Stream::Plain(plain)
    };
    let mut ws = upgrade(config, stream)?;
    // The deadline only covers the opening; from now on reads block until data
    // (the connection thread waits with `peek`) and writes are bounded by
    // `write_timeout`.
    let inner = ws.get_mut().inner();
    inner.deadline = None;
    inner
        .tcp
        .set_read_timeout(None)
        .and_then(|_| inner.tcp.set_write_timeout(Some(config.write_timeout)))
        .map_err(|e| Error::io("configuring the socket", e))?;
    Ok(Socket { ws, raw })
}

fn connect_error(addr: &SocketAddr, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Error::ConnectionRefused {
            addr: addr.to_string(),
        },
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(TimeoutKind::Connect),
        _ => Error::io("connecting", e),
    }
}

fn tls_handshake(
    config: &Config,
    plain: DeadlineStream,
) -> Result<native_tls::TlsStream<DeadlineStream>, Error> {
    let mut builder = native_tls::TlsConnector::builder();
    for cert in &config.tls.root_certificates {
        let parsed = native_tls::Certificate::from_pem(cert)
            .or_else(|_| native_tls::Certificate::from_der(cert))
            .map_err(|e| Error::Tls {
                detail: format!("root certificate is neither PEM nor DER: {e}"),
            })?;
        builder.add_root_certificate(parsed);
    }
    if config.tls.danger_accept_invalid_certs {
        log::warn!(target: "zen_websocket", "TLS certificate verification is DISABLED (danger_accept_invalid_certs)");
        builder.danger_accept_invalid_certs(true);
        builder.danger_accept_invalid_hostnames(true);
    }
    let connector = builder.build().map_err(|e| Error::Tls {
        detail: e.to_string(),
    })?;
    match connector.connect(&config.endpoint.host, plain) {
        Ok(s) => Ok(s),
        // Our stream never returns WouldBlock except through a socket timeout, so an
        // interrupted handshake means the deadline passed.
        Err(native_tls::HandshakeError::WouldBlock(_)) => Err(Error::Timeout(TimeoutKind::Connect)),
        Err(native_tls::HandshakeError::Failure(e)) => {
            let detail = e.to_string();
            let lower = detail.to_ascii_lowercase();
            if lower.contains("timed out") || lower.contains("deadline") {
                Err(Error::Timeout(TimeoutKind::Connect))
            } else if lower.contains("reset") || lower.contains("unexpected eof") {
                Err(Error::io(
                    "in the TLS handshake",
                    io::Error::new(io::ErrorKind::ConnectionReset, detail),
                ))
            } else {
                Err(Error::Tls { detail })
            }
        }
    }
}

fn upgrade(config: &Config, stream: Stream) -> Result<WebSocket<Stream>, Error> {
    use tungstenite::client::IntoClientRequest;
    let ep = &config.endpoint;
    let mut request = ep
        .url()
        .into_client_request()
        .map_err(|e| Error::Protocol(ProtocolError::Handshake(e.to_string())))?;
    for (name, value) in &config.headers {
        // Validated in `ConfigBuilder::build`, so these conversions cannot fail; a
        // failure is still reported rather than unwrapped.
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::Protocol(ProtocolError::Handshake(e.to_string())))?;
        let value = tungstenite::http::HeaderValue::from_str(value)
            .map_err(|e| Error::Protocol(ProtocolError::Handshake(e.to_string())))?;
        request.headers_mut().append(name, value);
    }
    match tungstenite::client::client_with_config(request, stream, Some(ws_config(config))) {
        Ok((ws, _response)) => Ok(ws),
        Err(HandshakeError::Interrupted(_)) => Err(Error::Timeout(TimeoutKind::Connect)),
        Err(HandshakeError::Failure(e)) => Err(handshake_error(e)),
    }
}

fn handshake_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return Error::Protocol(ProtocolError::Redirect { status, location });
            }
            let body = resp.body().as_ref().map(|b| {
                let cut = &b[..b.len().min(512)];
                String::from_utf8_lossy(cut).into_owned()
            });
            Error::HttpStatus { status, body }
        }
        tungstenite::Error::Io(io) => match io.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Error::Timeout(TimeoutKind::Connect)
            }
            _ => Error::io("upgrading", io),
        },
        // The peer closed before the handshake finished: a lost connection,
        // not a malformed handshake.
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete)
        | tungstenite::Error::ConnectionClosed => Error::io(
            "upgrading",
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection during the upgrade",
            ),
        ),
        other => Error::Protocol(ProtocolError::Handshake(other.to_string())),
    }
}

/// Map an error of an open WebSocket.
pub(crate) fn ws_error(e: tungstenite::Error, context: &'static str) -> Error {
    use tungstenite::error::{CapacityError, ProtocolError as WsProtocol};
    match e {
        // On the send path tungstenite refuses these before writing a byte (the
        // peer's close is under way): "not connected", so a pool may fail over.
        tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(WsProtocol::SendAfterClosing)
            if context == "sending" =>
        {
            Error::NotConnected
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => Error::io(
            context,
            io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
        ),
        tungstenite::Error::Io(io) => match io.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock if context == "sending" => {
                Error::Timeout(TimeoutKind::Write)
            }
            _ => Error::io(context, io),
        },
        tungstenite::Error::Tls(t) => Error::Tls {
            detail: t.to_string(),
        },
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Error::Protocol(ProtocolError::MessageTooLarge {
                size,
                max: max_size,
            })
        }
        tungstenite::Error::Capacity(c) => Error::Protocol(ProtocolError::Frame(c.to_string())),
        tungstenite::Error::Protocol(WsProtocol::ResetWithoutClosingHandshake) => Error::io(
            context,
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection dropped without a close frame",
            ),
        ),
        tungstenite::Error::Utf8(_) => Error::Protocol(ProtocolError::InvalidUtf8),
        tungstenite::Error::WriteBufferFull(_) => Error::Timeout(TimeoutKind::Write),
        other => Error::Protocol(ProtocolError::Frame(other.to_string())),
    }
}

/// True for the "no frame yet" outcomes of a non-blocking or timed read.
pub(crate) fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if is_would_block(io))
}

/// A read timeout is `WouldBlock` on Unix and `TimedOut` on Windows.
pub(crate) fn is_would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Clamp a wait so `set_read_timeout` never gets zero (which means "forever").
pub(crate) fn clamp_wait(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}
