//! Every error category, provoked on purpose: `cargo run --example error_handling`.
//!
//! Each case runs against the embedded testing server (or a local socket) on
//! 127.0.0.1 and prints the error's category, the recovery the library
//! recommends, and `explain()`. A case that does not fail the way it should
//! makes the example exit non-zero.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use zen_websocket::rate_limit::{RateLimit, RateLimitMode};
use zen_websocket::testing::{MockServer, Reply};
use zen_websocket::{Client, Config, ConfigBuilder, Error, ErrorCategory, Event, TimeoutKind};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error_handling failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

fn quick(url: &str) -> ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .close_timeout(Duration::from_millis(500))
}

/// Print what a caller would look at, and check the category is the expected one.
fn show(
    title: &str,
    expected: ErrorCategory,
    result: Result<impl std::fmt::Debug, Error>,
) -> Result<(), Error> {
    let err = match result {
        Err(e) => e,
        Ok(v) => {
            return Err(Error::Assertion(format!(
                "{title}: expected a {expected:?} error, got Ok({v:?})"
            )))
        }
    };
    println!("{title}");
    println!("  category: {:?}", err.category());
    println!("  recovery: {:?}", err.recovery());
    println!("  explain:  {}", err.explain());
    if err.category() != expected {
        return Err(Error::Assertion(format!(
            "{title}: expected category {expected:?}, got {:?} ({err:?})",
            err.category()
        )));
    }
    Ok(())
}

fn run() -> Result<(), Error> {
    // Config: caught by build(), before anything is dialed.
    show(
        "config: a URL with the wrong scheme",
        ErrorCategory::Config,
        Config::builder("http://127.0.0.1/")
            .build()
            .map_err(Error::from),
    )?;
    show(
        "config: a zero retry delay",
        ErrorCategory::Config,
        Config::builder("ws://127.0.0.1/")
            .retry_delay(Duration::ZERO)
            .build()
            .map_err(Error::from),
    )?;

    // Connection refused: a port nothing listens on.
    let refused = RefusedPort::new()?;
    show(
        "connection: refused",
        ErrorCategory::Connection,
        Client::connect(quick(&format!("ws://{}/", refused.addr)).build()?),
    )?;

    // Connect timeout: the TCP connection is accepted by the kernel (backlog)
    // but nobody ever answers the upgrade.
    let mute = TcpListener::bind("127.0.0.1:0").map_err(|e| io("binding", e))?;
    let mute_url = format!("ws://{}/", mute.local_addr().map_err(|e| io("addr", e))?);
    show(
        "timeout: the upgrade is never answered (connect_timeout 300 ms)",
        ErrorCategory::Timeout,
        Client::connect(
            quick(&mute_url)
                .connect_timeout(Duration::from_millis(300))
                .build()?,
        ),
    )?;
    drop(mute);

    // HTTP status: the server refuses the upgrade.
    let server = MockServer::start()?;
    server.refuse_upgrades(Some(503));
    show(
        "connection: upgrade refused with HTTP 503",
        ErrorCategory::Connection,
        Client::connect(quick(&server.url()).build()?),
    )?;
    server.refuse_upgrades(Some(401));
    show(
        "auth: upgrade refused with HTTP 401",
        ErrorCategory::Auth,
        Client::connect(quick(&server.url()).build()?),
    )?;
    drop(server);

    // TLS: a certificate from a CA the client does not trust.
    let tls = MockServer::start_tls()?;
    show(
        "connection: TLS certificate not trusted",
        ErrorCategory::Connection,
        Client::connect(quick(&tls.url()).build()?),
    )?;
    drop(tls);

    // A JSON-RPC server for the request errors.
    let server = MockServer::builder()
        .handler(|m| {
            let Some(call) = m.json() else {
                return Reply::None;
            };
            match call["method"].as_str() {
                Some("public/hang") => Reply::None,
                Some("private/buy") => Reply::Text(
                    json!({"jsonrpc": "2.0", "id": call["id"],
                           "error": {"code": 10009, "message": "not_enough_funds"}})
                    .to_string(),
                ),
                _ => Reply::Text(
                    json!({"jsonrpc": "2.0", "id": call["id"], "result": call["params"]})
                        .to_string(),
                ),
            }
        })
        .start()?;
    let client = Client::connect(quick(&server.url()).build()?)?;
    show(
        "timeout: no response within the request timeout (200 ms)",
        ErrorCategory::Timeout,
        client.request_with_timeout("public/hang", json!({}), Duration::from_millis(200)),
    )?;
    show(
        "server: the request was answered with a JSON-RPC error",
        ErrorCategory::Server,
        client.request("private/buy", json!({"amount": 10})),
    )?;

    // Closed by the user: nothing can be sent after close().
    client.close()?;
    show(
        "closed by user: a send after close()",
        ErrorCategory::ClosedByUser,
        client.send_text("too late"),
    )?;

    // Rate limited: one message at once, then one every two seconds.
    let limited = Client::connect(
        quick(&server.url())
            .rate_limit(RateLimit::new(1.0, 0.5).mode(RateLimitMode::Reject))
            .build()?,
    )?;
    limited.send_text("first")?;
    show(
        "rate limited: the second message within the same instant",
        ErrorCategory::RateLimited,
        limited.send_text("second"),
    )?;
    limited.close()?;

    // Protocol: the server sends more than max_message_size. The connection
    // thread sees it, so it arrives as the cause of a Disconnected event.
    let small = Client::connect(
        quick(&server.url())
            .max_message_size(1024)
            .reconnect_on_error(false)
            .build()?,
    )?;
    let events = small.events();
    server.inject_text(&"x".repeat(5000));
    let deadline = Instant::now() + Duration::from_secs(5);
    let cause = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Disconnected { cause }) => break cause,
            Ok(_) => continue,
            Err(_) => return Err(Error::Timeout(TimeoutKind::Wait)),
        }
    };
    println!("protocol: a 5000-byte message with max_message_size 1024 (from Event::Disconnected)");
    println!("  category: {:?}", cause.category());
    println!("  recovery: {:?}", cause.recovery());
    println!("  explain:  {}", cause.explain());
    if cause.category() != ErrorCategory::Protocol {
        return Err(Error::Assertion(format!(
            "expected a protocol error, got {cause:?}"
        )));
    }
    small.close()?;
    println!("every category was provoked as expected");
    Ok(())
}

fn io(context: &str, e: std::io::Error) -> Error {
    Error::Assertion(format!("{context}: {e}"))
}

/// A loopback port that refuses connections: a listener is bound, one
/// connection to it is kept open and the listener is closed, so the port stays
/// taken (no one else gets it) while nothing listens on it.
struct RefusedPort {
    addr: SocketAddr,
    _held: (TcpStream, TcpStream),
}

impl RefusedPort {
    fn new() -> Result<RefusedPort, Error> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| io("binding", e))?;
        let addr = l.local_addr().map_err(|e| io("addr", e))?;
        let a = TcpStream::connect(addr).map_err(|e| io("connecting", e))?;
        let (b, _) = l.accept().map_err(|e| io("accepting", e))?;
        drop(l);
        Ok(RefusedPort {
            addr,
            _held: (a, b),
        })
    }
}
