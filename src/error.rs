//! The one error type of the crate, its category and its recovery strategy.
//!
//! Every fallible call returns [`Error`]. A caller that wants to decide what to
//! do next asks [`Error::category`] (what kind of failure this is) or
//! [`Error::recovery`] (what the library recommends: reconnect, retry, wait, or
//! stop). [`Error::explain`] gives one line for a human, with a suggestion.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCategory {
    /// The network path failed: refused, reset, DNS, TLS transport, dropped link.
    Connection,
    /// The peer broke the WebSocket or application protocol.
    Protocol,
    /// A deadline passed; [`Error::Timeout`] says which one.
    Timeout,
    /// The caller sent faster than the limit allows.
    RateLimited,
    /// Credentials were refused.
    Auth,
    /// The configuration is invalid; retrying cannot help.
    Config,
    /// The user closed the client.
    ClosedByUser,
    /// The server answered a request with an error.
    Server,
    /// A local file (a recording or a cassette) could not be read or written.
    Storage,
}

/// What the library recommends after an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Reconnect (the client does this by itself when `reconnect_on_error` is on).
    Reconnect,
    /// The same call may succeed if made again (for instance once reconnected).
    Retry,
    /// Wait at least this long, then retry.
    RetryAfter(Duration),
    /// Do not retry: the same call will fail the same way.
    Stop,
}

/// Which deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// `connect_timeout`: TCP connect, TLS handshake and upgrade together.
    Connect,
    /// No pong arrived within `heartbeat_timeout`.
    Pong,
    /// A request got no response within its timeout.
    Request,
    /// The peer did not answer the close handshake within `close_timeout`.
    Close,
    /// A write could not complete within `write_timeout` (the peer stopped reading).
    Write,
    /// The rate limiter could not grant tokens within its wait bound.
    RateLimit,
    /// A test assertion or a recorder flush waited too long.
    Wait,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Pong => "pong",
            TimeoutKind::Request => "request",
            TimeoutKind::Close => "close",
            TimeoutKind::Write => "write",
            TimeoutKind::RateLimit => "rate limit",
            TimeoutKind::Wait => "wait",
        })
    }
}

/// An invalid configuration value: which field, and which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field (builder method) whose value is invalid, e.g. `"retry_delay"`.
    pub field: &'static str,
    /// The rule the value broke, e.g. `"must be greater than zero"`.
    pub rule: String,
}

impl ConfigError {
    /// A new error for `field` breaking `rule`.
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        ConfigError {
            field,
            rule: rule.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config `{}`: {}", self.field, self.rule)
    }
}

impl std::error::Error for ConfigError {}

/// A violation of the WebSocket protocol or of the expected message format.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message (or frame) larger than `max_message_size` was announced or received.
    MessageTooLarge {
        /// Its size in bytes (as announced).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// The opening handshake was malformed (bad `Sec-WebSocket-Accept`, junk, bad headers).
    Handshake(String),
    /// A malformed frame or sequence of frames.
    Frame(String),
    /// A message that should have been JSON (or JSON-RPC) was not.
    InvalidJson(String),
    /// The server redirected the upgrade; we do not follow redirects.
    Redirect {
        /// The HTTP status (301, 302, 307, 308).
        status: u16,
        /// The `Location` header, if any.
        location: Option<String>,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MessageTooLarge { size, max } => {
                write!(f, "message of {size} bytes exceeds max_message_size {max}")
            }
            ProtocolError::InvalidUtf8 => f.write_str("text frame is not valid UTF-8"),
            ProtocolError::Handshake(d) => write!(f, "bad opening handshake: {d}"),
            ProtocolError::Frame(d) => write!(f, "bad frame: {d}"),
            ProtocolError::InvalidJson(d) => write!(f, "invalid JSON: {d}"),
            ProtocolError::Redirect { status, location } => write!(
                f,
                "upgrade redirected with HTTP {status} to {}",
                location.as_deref().unwrap_or("(no location)")
            ),
        }
    }
}

/// Errors of the connection pool.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool has no clients.
    Empty,
    /// No client is connected.
    NoneConnected,
    /// No client with this id is in the pool.
    UnknownClient(u64),
    /// Every attempt failed: for `send_balanced`/`request_balanced`, before the
    /// message reached the wire; for `Pool::start`, every client failed to
    /// connect. One `(pool client id, cause)` per attempt.
    AttemptsExhausted(Vec<(u64, Error)>),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Empty => f.write_str("the pool has no clients"),
            PoolError::NoneConnected => f.write_str("no client of the pool is connected"),
            PoolError::UnknownClient(id) => write!(f, "no client with id {id} in the pool"),
            PoolError::AttemptsExhausted(attempts) => {
                write!(f, "{} attempts failed:", attempts.len())?;
                for (i, (id, e)) in attempts.iter().enumerate() {
                    write!(f, " [{}] client {id}: {e};", i + 1)?;
                }
                Ok(())
            }
        }
    }
}

/// The error type of zen-websocket.
///
/// Each variant is one outcome a caller handles differently; its doc says what
/// to do. Use [`Error::category`] and [`Error::recovery`] to decide generically.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid. Fix the named field; never retry.
    Config(ConfigError),
    /// The host name could not be resolved. Check the URL; retrying may help if DNS is flaky.
    Dns {
        /// The host that failed to resolve.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// Nothing listens at the address (TCP connection refused). Reconnect later.
    ConnectionRefused {
        /// The address dialed.
        addr: String,
    },
    /// An I/O error on an established or establishing connection (reset, broken pipe). Reconnect.
    Io {
        /// What the library was doing.
        context: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, wrong host name, no common cipher).
    /// Fix the trust configuration; retrying will not help.
    Tls {
        /// The TLS library's description.
        detail: String,
    },
    /// The server answered the upgrade with an HTTP status instead of 101.
    HttpStatus {
        /// The status code.
        status: u16,
        /// The start of the response body, if any (at most 512 bytes, lossy UTF-8).
        body: Option<String>,
    },
    /// The peer violated the protocol. The client reconnects.
    Protocol(ProtocolError),
    /// A deadline passed; the kind says which.
    Timeout(TimeoutKind),
    /// The client is not connected right now (connecting, reconnecting or disconnected).
    /// Nothing was sent; retry once [`crate::Event::Reconnected`] arrives.
    NotConnected,
    /// The connection dropped while a request was pending. The request may or may not
    /// have been processed by the server; it is never re-sent automatically.
    Disconnected,
    /// The client was closed (by [`crate::Client::close`], or it gave up reconnecting).
    Closed,
    /// The peer closed the connection with this code and reason.
    PeerClosed {
        /// The close code (1000 normal, 1001 going away, …).
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// Reconnection gave up after this many attempts; `last` is the last attempt's error.
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The cause of the last failure.
        last: Box<Error>,
    },
    /// The server answered a JSON-RPC request with an error object.
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The error message.
        message: String,
        /// The optional `data` member.
        data: Option<serde_json::Value>,
    },
    /// Sending now would exceed the rate limit. Wait `retry_after`, then retry.
    RateLimited {
        /// How long until enough tokens are available.
        retry_after: Duration,
    },
    /// The server refused the credentials. Fix them; retrying will not help.
    Auth {
        /// What the server said.
        detail: String,
    },
    /// A request id is already pending on this client; nothing was sent.
    DuplicateRequestId(String),
    /// A value could not be encoded as JSON.
    Json(String),
    /// A local file (recording, cassette) could not be opened, read or written.
    Storage {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A cassette replay saw a different outbound frame from the one recorded.
    ReplayMismatch {
        /// Which recorded outbound frame (1-based) was expected.
        index: usize,
        /// The recorded frame.
        expected: String,
        /// What the client sent instead (or `(nothing)` at a timeout).
        received: String,
    },
    /// A test assertion of the testing server failed; the text lists what was received.
    Assertion(String),
    /// The connection pool failed.
    Pool(PoolError),
}

impl Error {
    /// The category of this error.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Config(_) => ErrorCategory::Config,
            Error::Dns { .. }
            | Error::ConnectionRefused { .. }
            | Error::Io { .. }
            | Error::Tls { .. }
            | Error::NotConnected
            | Error::Disconnected
            | Error::PeerClosed { .. }
            | Error::RetriesExhausted { .. } => ErrorCategory::Connection,
            Error::HttpStatus { status, .. } => match status {
                401 | 403 => ErrorCategory::Auth,
                429 => ErrorCategory::RateLimited,
                _ => ErrorCategory::Connection,
            },
            Error::Protocol(_) | Error::Json(_) => ErrorCategory::Protocol,
            Error::Timeout(_) => ErrorCategory::Timeout,
            Error::Closed => ErrorCategory::ClosedByUser,
            Error::Rpc { .. } => ErrorCategory::Server,
            Error::RateLimited { .. } => ErrorCategory::RateLimited,
            Error::Auth { .. } => ErrorCategory::Auth,
            Error::DuplicateRequestId(_) => ErrorCategory::Config,
            Error::Storage { .. } | Error::ReplayMismatch { .. } | Error::Assertion(_) => {
                ErrorCategory::Storage
            }
            Error::Pool(PoolError::AttemptsExhausted(_))
            | Error::Pool(PoolError::NoneConnected) => ErrorCategory::Connection,
            Error::Pool(_) => ErrorCategory::Config,
        }
    }

    /// What the library recommends doing after this error.
    pub fn recovery(&self) -> Recovery {
        match self {
            Error::Config(_) | Error::DuplicateRequestId(_) | Error::Json(_) => Recovery::Stop,
            Error::Tls { .. } | Error::Auth { .. } | Error::Closed => Recovery::Stop,
            Error::HttpStatus { status, .. } => match status {
                400..=404 | 426 => Recovery::Stop,
                429 => Recovery::RetryAfter(Duration::from_secs(1)),
                _ => Recovery::Reconnect,
            },
            Error::Protocol(ProtocolError::Redirect { .. }) => Recovery::Stop,
            Error::Dns { .. }
            | Error::ConnectionRefused { .. }
            | Error::Io { .. }
            | Error::Protocol(_)
            | Error::PeerClosed { .. } => Recovery::Reconnect,
            Error::Timeout(TimeoutKind::Connect)
            | Error::Timeout(TimeoutKind::Pong)
            | Error::Timeout(TimeoutKind::Write) => Recovery::Reconnect,
            Error::Timeout(_) | Error::NotConnected | Error::Disconnected => Recovery::Retry,
            Error::RetriesExhausted { .. } => Recovery::Stop,
            Error::Rpc { .. } => Recovery::Stop,
            Error::RateLimited { retry_after } => Recovery::RetryAfter(*retry_after),
            Error::Storage { .. } | Error::ReplayMismatch { .. } | Error::Assertion(_) => {
                Recovery::Stop
            }
            Error::Pool(PoolError::AttemptsExhausted(_))
            | Error::Pool(PoolError::NoneConnected) => Recovery::Retry,
            Error::Pool(_) => Recovery::Stop,
        }
    }

    /// True when retrying (or reconnecting) may succeed.
    pub fn is_recoverable(&self) -> bool {
        !matches!(self.recovery(), Recovery::Stop)
    }

    /// One line for a human: what happened and what to try.
    ///
    /// ```
    /// use zen_websocket::{Error, TimeoutKind};
    /// let text = Error::Timeout(TimeoutKind::Connect).explain();
    /// assert!(text.contains("connect_timeout"));
    /// ```
    pub fn explain(&self) -> String {
        let hint = match self {
            Error::Config(e) => format!("fix the `{}` setting", e.field),
            Error::Dns { .. } => "check the host name in the URL and the machine's DNS".into(),
            Error::ConnectionRefused { .. } => {
                "is the server running and listening on that port?".into()
            }
            Error::Io { .. } => "the link failed; the client reconnects by itself".into(),
            Error::Tls { .. } => {
                "check the certificate chain and host name, or add the CA with `root_certificate`"
                    .into()
            }
            Error::HttpStatus { status, .. } => match status {
                401 | 403 => "the server refused the credentials or headers".into(),
                404 => "check the path of the URL".into(),
                429 => "the server is rate limiting connections; slow down".into(),
                _ => "the server refused the WebSocket upgrade".into(),
            },
            Error::Protocol(_) => "the peer sent something invalid; the client reconnects".into(),
            Error::Timeout(k) => match k {
                TimeoutKind::Connect => "the server did not answer in time; raise `connect_timeout` or check the network".into(),
                TimeoutKind::Pong => "the peer stopped answering pings; it is treated as dead".into(),
                TimeoutKind::Request => "no response in time; raise `request_timeout` or check the server".into(),
                TimeoutKind::Close => "the peer did not finish the close handshake; the socket was dropped".into(),
                TimeoutKind::Write => "the peer stopped reading; raise `write_timeout` or check it".into(),
                TimeoutKind::RateLimit => "the rate limiter's wait bound passed; send less often".into(),
                TimeoutKind::Wait => "the awaited condition did not happen in time".into(),
            },
            Error::NotConnected => "wait for the reconnection (Event::Reconnected), then retry".into(),
            Error::Disconnected => "the connection dropped; the request may or may not have been processed".into(),
            Error::Closed => "the client is closed; connect a new one".into(),
            Error::PeerClosed { .. } => "the server closed the connection".into(),
            Error::RetriesExhausted { .. } => "raise `retry_count` (or use None for forever) or fix the cause".into(),
            Error::Rpc { .. } => "the server rejected the request; check its method and params".into(),
            Error::RateLimited { retry_after } => format!("wait {retry_after:?} before sending again"),
            Error::Auth { .. } => "check the API key and secret".into(),
            Error::DuplicateRequestId(_) => "use a fresh id for each pending request".into(),
            Error::Json(_) => "the value cannot be written as JSON".into(),
            Error::Storage { .. } => "check that the directory exists, is writable and has space".into(),
            Error::ReplayMismatch { .. } => "the code under test sent something other than the cassette recorded; re-record it if that is intended".into(),
            Error::Assertion(_) => "the test expectation was not met".into(),
            Error::Pool(_) => "check the pool's clients with `pool.health()`".into(),
        };
        format!("{self} ({hint})")
    }

    pub(crate) fn io(context: &'static str, source: io::Error) -> Error {
        Error::Io { context, source }
    }

    pub(crate) fn storage(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Storage {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Dns { host, source } => write!(f, "cannot resolve host `{host}`: {source}"),
            Error::ConnectionRefused { addr } => write!(f, "connection refused by {addr}"),
            Error::Io { context, source } => write!(f, "I/O error while {context}: {source}"),
            Error::Tls { detail } => write!(f, "TLS handshake failed: {detail}"),
            Error::HttpStatus { status, body } => match body {
                Some(b) if !b.is_empty() => {
                    write!(f, "upgrade refused with HTTP {status}: {b}")
                }
                _ => write!(f, "upgrade refused with HTTP {status}"),
            },
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Timeout(k) => write!(f, "{k} timeout"),
            Error::NotConnected => f.write_str("not connected"),
            Error::Disconnected => f.write_str("disconnected while the request was pending"),
            Error::Closed => f.write_str("the client is closed"),
            Error::PeerClosed { code, reason } => {
                write!(f, "closed by the peer with code {code}")?;
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
            Error::RetriesExhausted { attempts, last } => {
                write!(f, "gave up after {attempts} reconnection attempts: {last}")
            }
            Error::Rpc { code, message, .. } => write!(f, "JSON-RPC error {code}: {message}"),
            Error::RateLimited { retry_after } => {
                write!(f, "rate limited; retry after {retry_after:?}")
            }
            Error::Auth { detail } => write!(f, "authentication failed: {detail}"),
            Error::DuplicateRequestId(id) => write!(f, "request id {id} is already pending"),
            Error::Json(d) => write!(f, "JSON encoding failed: {d}"),
            Error::Storage { path, source } => write!(f, "{}: {source}", path.display()),
            Error::ReplayMismatch {
                index,
                expected,
                received,
            } => write!(
                f,
                "cassette mismatch at outbound frame {index}: expected {expected}, received {received}"
            ),
            Error::Assertion(d) => write!(f, "assertion failed: {d}"),
            Error::Pool(e) => write!(f, "pool: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Dns { source, .. }
            | Error::Io { source, .. }
            | Error::Storage { source, .. } => Some(source),
            Error::RetriesExhausted { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        Error::Pool(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Errors travel through channels and Results on hot paths; keep them small.
        assert!(
            std::mem::size_of::<Error>() <= 64,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn config_errors_name_the_field_and_never_retry() {
        let e = Error::from(ConfigError::new("retry_delay", "must be greater than zero"));
        assert_eq!(e.category(), ErrorCategory::Config);
        assert_eq!(e.recovery(), Recovery::Stop);
        assert!(e.to_string().contains("retry_delay"));
        assert!(e.explain().contains("retry_delay"));
    }

    #[test]
    fn connection_failures_reconnect() {
        let e = Error::ConnectionRefused {
            addr: "127.0.0.1:1".into(),
        };
        assert_eq!(e.category(), ErrorCategory::Connection);
        assert_eq!(e.recovery(), Recovery::Reconnect);
        assert_eq!(
            Error::Timeout(TimeoutKind::Pong).recovery(),
            Recovery::Reconnect
        );
        assert!(Error::NotConnected.is_recoverable());
    }

    #[test]
    fn auth_and_rate_limits_have_their_own_strategy() {
        assert_eq!(
            Error::HttpStatus {
                status: 401,
                body: None
            }
            .category(),
            ErrorCategory::Auth
        );
        let d = Duration::from_millis(250);
        assert_eq!(
            Error::RateLimited { retry_after: d }.recovery(),
            Recovery::RetryAfter(d)
        );
        assert_eq!(Error::Closed.category(), ErrorCategory::ClosedByUser);
    }
}
