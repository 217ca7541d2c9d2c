//! The testing server, driven by plain tungstenite clients.
//!
//! Every client socket has read and write timeouts and every test has a
//! watchdog, so a hang fails fast instead of stalling CI.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame as WireCloseFrame;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message as WireMessage, WebSocket};
use zen_websocket::testing::{Disconnect, Matcher, MockServer, Reply};
use zen_websocket::{Error, Message};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Generous bound for anything that should happen "at once" on loopback.
const SOON: Duration = Duration::from_secs(5);
/// How long a test may run before the watchdog kills the process.
const WATCHDOG: Duration = Duration::from_secs(30);

/// Kills the test process if the test is still running after [`WATCHDOG`].
struct Watchdog {
    _done: crossbeam_channel::Sender<()>,
}

fn watchdog(name: &'static str) -> Watchdog {
    let (done, rx) = crossbeam_channel::bounded::<()>(0);
    thread::spawn(move || {
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
            eprintln!("watchdog: test `{name}` still running after {WATCHDOG:?}; aborting");
            std::process::exit(101);
        }
    });
    Watchdog { _done: done }
}

fn tcp(server: &MockServer) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&server.addr(), SOON)?;
    stream.set_read_timeout(Some(SOON))?;
    stream.set_write_timeout(Some(SOON))?;
    Ok(stream)
}

/// A plain client with socket timeouts.
fn connect(server: &MockServer) -> Result<WebSocket<TcpStream>, Box<dyn std::error::Error>> {
    connect_to(server, server.url())
}

fn connect_to(
    server: &MockServer,
    request: impl IntoClientRequest,
) -> Result<WebSocket<TcpStream>, Box<dyn std::error::Error>> {
    let (ws, _) = tungstenite::client(request, tcp(server)?).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// A TLS client trusting the server's CA, with socket timeouts.
fn connect_tls(
    server: &MockServer,
) -> Result<WebSocket<MaybeTlsStream<TcpStream>>, Box<dyn std::error::Error>> {
    let ca = server.ca_certificate_pem().ok_or("not a TLS server")?;
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(ca.as_bytes())?)
        .build()?;
    let (ws, _) = tungstenite::client_tls_with_config(
        server.url(),
        tcp(server)?,
        None,
        Some(Connector::NativeTls(connector)),
    )
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn set_client_read_timeout(ws: &WebSocket<TcpStream>, t: Duration) -> io::Result<()> {
    ws.get_ref().set_read_timeout(Some(t))
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Read until a data or close message (pongs skipped).
fn read_data<S: io::Read + io::Write>(ws: &mut WebSocket<S>) -> tungstenite::Result<WireMessage> {
    loop {
        match ws.read()? {
            WireMessage::Ping(_) | WireMessage::Pong(_) => {}
            other => return Ok(other),
        }
    }
}

/// Expect a close frame with `code`, then the end of the connection.
fn expect_close<S: io::Read + io::Write>(
    ws: &mut WebSocket<S>,
    code: u16,
    reason: &str,
) -> TestResult {
    match read_data(ws)? {
        WireMessage::Close(Some(WireCloseFrame { code: c, reason: r })) => {
            assert_eq!(u16::from(c), code);
            assert_eq!(r.as_str(), reason);
        }
        other => panic!("expected a close frame with {code}, got {other:?}"),
    }
    // Reading on sends our close reply and waits for the server to hang up.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => Ok(()),
        other => panic!("expected the connection to end after the close handshake, got {other:?}"),
    }
}

/// Wait (bounded) for `condition`; for state that has no waiting API.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn echoes_text_and_binary() -> TestResult {
    let _w = watchdog("echoes_text_and_binary");
    let server = MockServer::start()?;
    assert!(server.url().starts_with("ws://127.0.0.1:"));
    assert!(server.ca_certificate_pem().is_none());
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("hello"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("hello"));
    ws.send(WireMessage::binary(vec![0u8, 1, 2, 255]))?;
    assert_eq!(
        read_data(&mut ws)?,
        WireMessage::binary(vec![0u8, 1, 2, 255])
    );
    assert_eq!(
        server.received(),
        vec![Message::from("hello"), Message::from(vec![0u8, 1, 2, 255])]
    );
    assert_eq!(server.received_count(), 2);
    assert_eq!(server.connection_count(), 1);
    assert_eq!(server.total_connections(), 1);
    Ok(())
}

#[test]
fn injection_reaches_every_open_connection() -> TestResult {
    let _w = watchdog("injection_reaches_every_open_connection");
    let server = MockServer::start()?;
    assert_eq!(server.inject_text("nobody"), 0);
    let mut a = connect(&server)?;
    let mut b = connect(&server)?;
    assert_eq!(server.inject_text("tick"), 2);
    assert_eq!(server.inject_binary(&[7, 8]), 2);
    for ws in [&mut a, &mut b] {
        assert_eq!(read_data(ws)?, WireMessage::text("tick"));
        assert_eq!(read_data(ws)?, WireMessage::binary(vec![7u8, 8]));
    }
    // Injected messages are not "received".
    assert_eq!(server.received_count(), 0);
    Ok(())
}

#[test]
fn every_matcher_kind_finds_its_message() -> TestResult {
    let _w = watchdog("every_matcher_kind_finds_its_message");
    let server = MockServer::builder().handler(|_| Reply::None).start()?;
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("plain"))?;
    ws.send(WireMessage::text(
        r#"{"op":"subscribe","args":{"channel":"trades","depth":5},"id":41}"#,
    ))?;
    ws.send(WireMessage::binary(vec![9u8; 3]))?;

    assert_eq!(
        server.assert_message_sent("plain", SOON)?,
        Message::from("plain")
    );
    let found = server.assert_message_sent(Matcher::regex(r#""id":\d+"#)?, SOON)?;
    assert!(found.as_text().unwrap_or("").contains("subscribe"));
    server.assert_message_sent(regex::Regex::new("^plain$")?, SOON)?;
    server.assert_message_sent(
        json!({"op": "subscribe", "args": {"channel": "trades"}}),
        SOON,
    )?;
    server.assert_message_sent(Matcher::json(json!({"id": 41})), SOON)?;
    let binary =
        server.assert_message_sent(Matcher::predicate(|m| !m.is_text() && m.len() == 3), SOON)?;
    assert_eq!(binary, Message::from(vec![9u8; 3]));
    Ok(())
}

#[test]
fn assertion_waits_for_a_message_that_comes_later() -> TestResult {
    let _w = watchdog("assertion_waits_for_a_message_that_comes_later");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    let sender = thread::spawn(move || -> tungstenite::Result<WebSocket<TcpStream>> {
        thread::sleep(Duration::from_millis(100));
        ws.send(WireMessage::text("late"))?;
        Ok(ws)
    });
    let started = Instant::now();
    server.assert_message_sent("late", SOON)?;
    assert!(started.elapsed() >= Duration::from_millis(90));
    let _ws = sender.join().map_err(|_| "sender panicked")??;
    Ok(())
}

#[test]
fn a_failed_assertion_lists_what_was_received() -> TestResult {
    let _w = watchdog("a_failed_assertion_lists_what_was_received");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("first"))?;
    ws.send(WireMessage::text("y".repeat(5000)))?;
    ws.send(WireMessage::binary(vec![0xde, 0xad]))?;
    server.wait_for_received(3, SOON)?;

    let err = server
        .assert_message_sent(json!({"op": "missing"}), Duration::from_millis(100))
        .unwrap_err();
    let Error::Assertion(text) = &err else {
        panic!("expected an assertion error, got {err:?}");
    };
    assert!(text.contains(r#"JsonSubset({"op":"missing"})"#), "{text}");
    assert!(text.contains("received 3 message(s)"), "{text}");
    assert!(text.contains(r#"[1] text "first""#), "{text}");
    assert!(text.contains("(5000 bytes)"), "{text}");
    assert!(text.contains("binary (2 bytes) [de ad]"), "{text}");
    assert!(
        text.len() < 1000,
        "long messages must be cut: {} bytes",
        text.len()
    );

    let err = server
        .wait_for_received(10, Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(err, Error::Assertion(ref t) if t.contains("at least 10")),
        "{err}"
    );
    let err = server
        .wait_for_connections(5, Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(err, Error::Assertion(ref t) if t.contains("1 accepted")),
        "{err}"
    );

    server.clear_received();
    assert_eq!(server.received_count(), 0);
    let err = server
        .assert_message_sent("first", Duration::from_millis(50))
        .unwrap_err();
    assert!(err.to_string().contains("nothing was received"), "{err}");
    Ok(())
}

#[test]
fn normal_disconnect_closes_with_1000() -> TestResult {
    let _w = watchdog("normal_disconnect_closes_with_1000");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    server.wait_for_connections(1, SOON)?;
    server.simulate_disconnect(Disconnect::Normal);
    expect_close(&mut ws, 1000, "")?;
    eventually("the connection to be gone", || {
        server.connection_count() == 0
    });
    // The server saw our close reply.
    assert_eq!(server.close_frames().first().map(|f| f.code), Some(1000));
    // It still accepts new connections.
    let mut again = connect(&server)?;
    again.send(WireMessage::text("still here"))?;
    assert_eq!(read_data(&mut again)?, WireMessage::text("still here"));
    Ok(())
}

#[test]
fn going_away_closes_with_1001() -> TestResult {
    let _w = watchdog("going_away_closes_with_1001");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    server.simulate_disconnect(Disconnect::GoingAway);
    expect_close(&mut ws, 1001, "")
}

#[test]
fn custom_disconnect_sends_its_code_and_reason() -> TestResult {
    let _w = watchdog("custom_disconnect_sends_its_code_and_reason");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    server.simulate_disconnect(Disconnect::Code(4000, "maintenance".into()));
    expect_close(&mut ws, 4000, "maintenance")
}

#[test]
fn abrupt_disconnect_ends_the_stream_without_a_close_frame() -> TestResult {
    let _w = watchdog("abrupt_disconnect_ends_the_stream_without_a_close_frame");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    server.simulate_disconnect(Disconnect::Abrupt);
    assert_eq!(server.connection_count(), 0);
    match ws.read() {
        // EOF without a close frame (or a reset, depending on timing).
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected end of stream without a close frame, got {other:?}"),
    }
    Ok(())
}

#[test]
fn silent_server_keeps_the_socket_but_answers_nothing() -> TestResult {
    let _w = watchdog("silent_server_keeps_the_socket_but_answers_nothing");
    let mut server = MockServer::start()?;
    let mut ws = connect(&server)?;
    // The connection works before...
    ws.send(WireMessage::text("before"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("before"));

    server.simulate_disconnect(Disconnect::Silent);
    assert_eq!(
        server.connection_count(),
        1,
        "a silent connection is still open"
    );
    assert_eq!(
        server.inject_text("lost"),
        0,
        "silent connections get no injections"
    );

    set_client_read_timeout(&ws, Duration::from_millis(300))?;
    ws.send(WireMessage::Ping(b"anyone?".to_vec().into()))?;
    match ws.read() {
        Err(e) if is_timeout(&e) => {}
        other => panic!("expected no pong from a silent server, got {other:?}"),
    }
    ws.send(WireMessage::text("echo?"))?;
    match ws.read() {
        Err(e) if is_timeout(&e) => {}
        other => panic!("expected no echo from a silent server, got {other:?}"),
    }

    // stop() ends the half-open connection too.
    set_client_read_timeout(&ws, SOON)?;
    server.stop();
    match ws.read() {
        Err(e) if is_timeout(&e) => panic!("stop did not close the silent connection"),
        Err(_) => {}
        Ok(m) => panic!("expected the connection to end, got {m:?}"),
    }
    Ok(())
}

#[test]
fn reply_delay_slows_echoes_and_pongs() -> TestResult {
    let _w = watchdog("reply_delay_slows_echoes_and_pongs");
    let delay = Duration::from_millis(200);
    let server = MockServer::builder().reply_delay(delay).start()?;
    let mut ws = connect(&server)?;

    let started = Instant::now();
    ws.send(WireMessage::text("slow"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("slow"));
    assert!(
        started.elapsed() >= delay,
        "echo came after {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    ws.send(WireMessage::Ping(b"p".to_vec().into()))?;
    match ws.read()? {
        WireMessage::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert!(
        started.elapsed() >= delay,
        "pong came after {:?}",
        started.elapsed()
    );
    assert_eq!(server.ping_count(), 1);

    // And it can be turned off again.
    server.set_reply_delay(Duration::ZERO);
    ws.send(WireMessage::text("fast"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("fast"));
    Ok(())
}

#[test]
fn pings_are_answered_and_counted() -> TestResult {
    let _w = watchdog("pings_are_answered_and_counted");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    for i in 0..3u8 {
        ws.send(WireMessage::Ping(vec![i].into()))?;
        match ws.read()? {
            WireMessage::Pong(p) => assert_eq!(&p[..], &[i]),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    assert_eq!(server.ping_count(), 3);
    assert_eq!(server.received_count(), 0, "pings are not data messages");
    Ok(())
}

#[test]
fn refused_upgrades_get_the_http_status() -> TestResult {
    let _w = watchdog("refused_upgrades_get_the_http_status");
    let server = MockServer::start()?;
    server.refuse_upgrades(Some(503));
    match tungstenite::client(format!("{}refused", server.url()), tcp(&server)?) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status().as_u16(), 503);
            let body = response.body().clone().unwrap_or_default();
            assert!(String::from_utf8_lossy(&body).contains("503"));
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("expected HTTP 503, got an upgrade"),
    }
    assert_eq!(server.total_connections(), 0);
    assert_eq!(
        server.last_request().map(|r| r.path),
        Some("/refused".to_owned())
    );

    server.refuse_upgrades(None);
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("in"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("in"));
    assert_eq!(server.total_connections(), 1);
    Ok(())
}

#[test]
fn restart_serves_again_on_the_same_port() -> TestResult {
    let _w = watchdog("restart_serves_again_on_the_same_port");
    let mut server = MockServer::start()?;
    let addr = server.addr();
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("one"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("one"));

    server.stop();
    assert!(!server.is_running());
    assert!(ws.read().is_err(), "stop must drop open connections");
    let refused = TcpStream::connect_timeout(&addr, SOON).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

    server.restart()?;
    assert_eq!(server.addr(), addr);
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("two"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("two"));
    server.wait_for_connections(2, SOON)?;
    assert_eq!(
        server.received(),
        vec![Message::from("one"), Message::from("two")],
        "restarts keep what was received"
    );

    // restart() while running stops first, with the client connected.
    server.restart()?;
    assert!(ws.read().is_err());
    let _ws = connect(&server)?;
    assert_eq!(server.total_connections(), 3);
    Ok(())
}

#[test]
fn stop_is_idempotent_and_refuses_new_connections() -> TestResult {
    let _w = watchdog("stop_is_idempotent_and_refuses_new_connections");
    let mut server = MockServer::start()?;
    let addr = server.addr();
    // A client stuck in the handshake must not keep stop() waiting.
    let _idle = tcp(&server)?;
    let _ws = connect(&server)?;
    let started = Instant::now();
    server.stop();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(server.connection_count(), 0);
    let refused = TcpStream::connect_timeout(&addr, SOON).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    assert!(format!("{server:?}").contains("running: false"));
    Ok(())
}

#[test]
fn dropping_a_server_with_busy_connections_returns_promptly() -> TestResult {
    let _w = watchdog("dropping_a_server_with_busy_connections_returns_promptly");
    let server = MockServer::builder()
        .reply_delay(Duration::from_secs(60))
        .start()?;
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("sleeps in the reply delay"))?;
    server.wait_for_received(1, SOON)?;
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn last_request_keeps_the_query_string_and_headers() -> TestResult {
    let _w = watchdog("last_request_keeps_the_query_string_and_headers");
    let server = MockServer::start()?;
    assert!(server.last_request().is_none());
    let mut request = format!("{}stream?token=abc&x=1", server.url()).into_client_request()?;
    request
        .headers_mut()
        .insert("X-Api-Key", "k3y".parse().map_err(|_| "bad header")?);
    request.headers_mut().insert(
        "User-Agent",
        "zen-test/1".parse().map_err(|_| "bad header")?,
    );
    let _ws = connect_to(&server, request)?;
    let info = server.last_request().ok_or("no request recorded")?;
    assert_eq!(info.path, "/stream?token=abc&x=1");
    assert_eq!(info.query(), Some("token=abc&x=1"));
    assert_eq!(info.header("x-api-key"), Some("k3y"));
    assert_eq!(info.header("USER-AGENT"), Some("zen-test/1"));
    assert!(info.headers.iter().any(|(n, _)| n == "sec-websocket-key"));
    assert!(
        !format!("{info:?}").contains("k3y"),
        "Debug must redact credentials"
    );
    Ok(())
}

#[test]
fn handlers_can_reply_with_many_messages_or_a_close() -> TestResult {
    let _w = watchdog("handlers_can_reply_with_many_messages_or_a_close");
    let server = MockServer::start()?;
    server.set_handler(|m| match m.as_text() {
        Some("many") => Reply::Many(vec![
            Message::from("a"),
            Message::from(vec![1u8]),
            Message::from("c"),
        ]),
        Some("bin") => Reply::Binary(vec![42]),
        Some("close") => Reply::Close(4001, "asked to".into()),
        _ => Reply::None,
    });
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("many"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("a"));
    assert_eq!(read_data(&mut ws)?, WireMessage::binary(vec![1u8]));
    assert_eq!(read_data(&mut ws)?, WireMessage::text("c"));
    ws.send(WireMessage::text("bin"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::binary(vec![42u8]));
    ws.send(WireMessage::text("close"))?;
    expect_close(&mut ws, 4001, "asked to")
}

#[test]
fn a_panicking_handler_closes_its_connection_with_1011() -> TestResult {
    let _w = watchdog("a_panicking_handler_closes_its_connection_with_1011");
    let server = MockServer::builder()
        .handler(|m| {
            if m.as_text() == Some("boom") {
                panic!("handler failure on purpose");
            }
            Reply::from(m.clone())
        })
        .start()?;
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("boom"))?;
    expect_close(&mut ws, 1011, "handler panicked")?;
    // The server lives on.
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("fine"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("fine"));
    Ok(())
}

#[test]
fn client_close_frames_are_recorded() -> TestResult {
    let _w = watchdog("client_close_frames_are_recorded");
    let server = MockServer::start()?;
    let mut ws = connect(&server)?;
    ws.close(Some(WireCloseFrame {
        code: 1000u16.into(),
        reason: "done".into(),
    }))?;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
    eventually("the close frame to be recorded", || {
        !server.close_frames().is_empty()
    });
    let frames = server.close_frames();
    assert_eq!((frames[0].code, frames[0].reason.as_str()), (1000, "done"));
    eventually("the connection to be gone", || {
        server.connection_count() == 0
    });
    Ok(())
}

#[test]
fn wss_serves_a_certificate_trusted_through_the_ca() -> TestResult {
    let _w = watchdog("wss_serves_a_certificate_trusted_through_the_ca");
    let server = MockServer::start_tls()?;
    assert!(server.url().starts_with("wss://localhost:"));
    let mut ws = connect_tls(&server)?;
    ws.send(WireMessage::text("secure"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("secure"));
    ws.send(WireMessage::binary(vec![1u8; 100_000]))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::binary(vec![1u8; 100_000]));
    assert_eq!(server.inject_text("pushed"), 1);
    assert_eq!(read_data(&mut ws)?, WireMessage::text("pushed"));
    server.simulate_disconnect(Disconnect::GoingAway);
    expect_close(&mut ws, 1001, "")
}

#[test]
fn wss_is_refused_by_a_client_that_does_not_trust_the_ca() -> TestResult {
    let _w = watchdog("wss_is_refused_by_a_client_that_does_not_trust_the_ca");
    let server = MockServer::start_tls()?;
    let result = tungstenite::client_tls_with_config(server.url(), tcp(&server)?, None, None);
    assert!(
        result.is_err(),
        "an untrusted certificate must fail the handshake"
    );
    // The failed handshake does not hurt the server.
    let mut ws = connect_tls(&server)?;
    ws.send(WireMessage::text("ok"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("ok"));
    Ok(())
}

#[test]
fn garbage_instead_of_a_handshake_does_not_hurt_the_server() -> TestResult {
    let _w = watchdog("garbage_instead_of_a_handshake_does_not_hurt_the_server");
    use std::io::Write;
    let server = MockServer::start()?;
    let mut raw = tcp(&server)?;
    raw.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage")?;
    drop(raw);
    let mut raw = tcp(&server)?;
    raw.write_all(&[0xffu8; 64])?;
    drop(raw);
    let mut ws = connect(&server)?;
    ws.send(WireMessage::text("fine"))?;
    assert_eq!(read_data(&mut ws)?, WireMessage::text("fine"));
    Ok(())
}

#[test]
fn many_clients_in_parallel_are_all_echoed() -> TestResult {
    let _w = watchdog("many_clients_in_parallel_are_all_echoed");
    let server = Arc::new(MockServer::start()?);
    let echoed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let server = Arc::clone(&server);
            let echoed = Arc::clone(&echoed);
            thread::spawn(move || -> Result<(), String> {
                let mut ws = connect(&server).map_err(|e| e.to_string())?;
                for j in 0..50 {
                    let text = format!("{i}-{j}");
                    ws.send(WireMessage::text(text.clone()))
                        .map_err(|e| e.to_string())?;
                    let back = read_data(&mut ws).map_err(|e| e.to_string())?;
                    if back != WireMessage::text(text) {
                        return Err(format!("wrong echo {back:?}"));
                    }
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client.join().map_err(|_| "client panicked")??;
    }
    assert_eq!(echoed.load(Ordering::Relaxed), 400);
    assert_eq!(server.received_count(), 400);
    assert_eq!(server.total_connections(), 8);
    Ok(())
}
