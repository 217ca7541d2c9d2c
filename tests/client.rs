//! The core client against real servers on loopback: connect, send, receive,
//! close, heartbeats, reconnection and errors.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use zen_websocket::testing::{Disconnect, MockServer, Reply};
use zen_websocket::{
    Client, CloseInitiator, Config, ConnectionState, Error, ErrorCategory, Event, EventPolicy,
    Message, ProtocolError, Recovery, TimeoutKind,
};

const T: Duration = Duration::from_secs(10);

fn fast(url: &str) -> zen_websocket::ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(20))
        .max_retry_delay(Duration::from_millis(100))
        .close_timeout(Duration::from_millis(500))
}

#[test]
fn text_binary_and_json_round_trip_through_the_echo_server() {
    let _w = watchdog("round_trip", T * 2);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    let (first, _) = wait_for(&events, T, |_| true);
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");
    assert_eq!(client.state(), ConnectionState::Connected);

    client.send_text("hello").unwrap();
    assert_eq!(next_text(&events, T), "hello");
    client.send_binary(vec![0u8, 1, 2, 255]).unwrap();
    assert_eq!(
        next_message(&events, T),
        Message::Binary(vec![0, 1, 2, 255])
    );
    client
        .send_json(&serde_json::json!({"op": "ping", "n": 1}))
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&next_text(&events, T)).unwrap();
    assert_eq!(echoed["op"], "ping");
    server
        .assert_message_sent(serde_json::json!({"op": "ping"}), T)
        .unwrap();

    let stats = client.stats();
    assert_eq!((stats.messages_out, stats.messages_in), (3, 3));
    assert_eq!(stats.bytes_out, stats.bytes_in);
    client.close().unwrap();
}

#[test]
fn injected_messages_reach_the_event_channel_in_order() {
    let _w = watchdog("inject", T * 2);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    for i in 0..200 {
        server.inject_text(&format!("m{i}"));
    }
    for i in 0..200 {
        assert_eq!(next_text(&events, T), format!("m{i}"));
    }
}

#[test]
fn the_query_string_and_headers_reach_the_server() {
    let _w = watchdog("query", T);
    let server = MockServer::start().unwrap();
    let url = format!("{}feed?symbol=BTC&depth=10", server.url());
    let client = Client::connect(
        fast(&url)
            .header("X-Client-Name", "zen-test")
            .build()
            .unwrap(),
    )
    .unwrap();
    let req = server.last_request().expect("a handshake");
    assert_eq!(req.query(), Some("symbol=BTC&depth=10"));
    assert_eq!(req.header("x-client-name"), Some("zen-test"));
    client.close().unwrap();
}

#[test]
fn wss_works_with_the_servers_ca_and_fails_without_it() {
    let _w = watchdog("wss", T * 2);
    let server = MockServer::start_tls().unwrap();
    let ca = server.ca_certificate_pem().expect("a CA");
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert_eq!(err.recovery(), Recovery::Stop);

    let client =
        Client::connect(fast(&server.url()).root_certificate(ca).build().unwrap()).unwrap();
    let events = client.events();
    for i in 0..50 {
        client.send_text(format!("secure {i}")).unwrap();
        assert_eq!(next_text(&events, T), format!("secure {i}"));
    }
    client.close().unwrap();

    let client = Client::connect(
        fast(&server.url())
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap(),
    )
    .unwrap();
    client.send_text("x").unwrap();
    assert_eq!(next_text(&client.events(), T), "x");
}

#[test]
fn a_refused_connection_reports_the_real_cause() {
    let _w = watchdog("refused", T);
    let port = RefusedPort::new();
    let err = Client::connect(fast(&port.url()).build().unwrap()).unwrap_err();
    assert!(matches!(err, Error::ConnectionRefused { .. }), "{err:?}");
    assert_eq!(err.category(), ErrorCategory::Connection);
    assert!(err.explain().contains("listening"));
}

#[test]
fn a_refused_upgrade_reports_the_http_status() {
    let _w = watchdog("status", T);
    let server = MockServer::start().unwrap();
    server.refuse_upgrades(Some(503));
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 503, .. }),
        "{err:?}"
    );
    server.refuse_upgrades(Some(401));
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Auth);
}

#[test]
fn a_server_that_never_answers_the_upgrade_times_out_within_the_bound() {
    let _w = watchdog("silent_upgrade", T);
    let (tx, rx) = zen_websocket::crossbeam_channel::bounded::<()>(0);
    let rx = Arc::new(rx);
    let server = RawServer::start(move |_conn| {
        // Hold the connection open without answering until the test ends.
        let _ = rx.recv_timeout(Duration::from_secs(8));
    });
    let started = Instant::now();
    let err = Client::connect(
        fast(&server.url())
            .connect_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Connect)),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "connect overran its timeout: {took:?}"
    );
    drop(tx);
}

#[test]
fn a_trickling_handshake_cannot_stretch_the_connect_timeout() {
    let _w = watchdog("trickle", T);
    let server = RawServer::start(|mut conn| {
        let _ = read_request_key(&mut conn);
        // One byte every 50 ms: each read is quick, the whole never completes in time.
        for b in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n".iter() {
            if conn.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let started = Instant::now();
    let err = Client::connect(
        fast(&server.url())
            .connect_timeout(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Connect)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn invalid_config_never_dials() {
    let err = Config::builder("http://127.0.0.1:1/").build().unwrap_err();
    assert_eq!(err.field, "url");
    let err = Config::builder("ws://127.0.0.1:1/")
        .retry_delay(Duration::from_secs(10))
        .max_retry_delay(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "max_retry_delay");
    assert_eq!(Error::from(err).category(), ErrorCategory::Config);
}

#[test]
fn sends_from_many_threads_arrive_whole_and_in_per_thread_order() {
    let _w = watchdog("threads", T * 3);
    let server = MockServer::start().unwrap();
    server.set_handler(|_| Reply::None);
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    c.send_text(format!("t{t}-{i}-{}", "x".repeat(i % 97)))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.wait_for_received(2000, T).unwrap();
    let got = server.received();
    assert_eq!(got.len(), 2000);
    let mut next = [0usize; 8];
    for m in got {
        let text = m.as_text().unwrap().to_string();
        let mut parts = text.splitn(3, '-');
        let t: usize = parts.next().unwrap()[1..].parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next().unwrap(), "x".repeat(i % 97), "payload intact");
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(client.stats().messages_out, 2000);
}

#[test]
fn user_close_performs_the_handshake_and_never_reconnects() {
    let _w = watchdog("close", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    client.close().unwrap();
    assert_eq!(client.state(), ConnectionState::Closed);
    let (ev, skipped) = wait_for(&events, T, Event::is_terminal);
    assert!(
        matches!(
            ev,
            Event::Closed {
                code: 1000,
                initiator: CloseInitiator::User,
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(
        !skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. })),
        "{skipped:?}"
    );
    // The thread has ended: the channel is disconnected once drained.
    assert!(events.recv_timeout(T).is_err());
    let frames = server.close_frames();
    assert!(frames.iter().any(|f| f.code == 1000), "{frames:?}");
    assert_eq!(server.total_connections(), 1);
    assert!(matches!(client.send_text("late"), Err(Error::Closed)));
    client.close().unwrap(); // idempotent
}

#[test]
fn dropping_the_last_handle_closes_and_joins() {
    let _w = watchdog("drop", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    let clone = client.clone();
    drop(client);
    clone.send_text("still open").unwrap();
    assert_eq!(next_text(&events, T), "still open");
    drop(clone);
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(matches!(
        ev,
        Event::Closed {
            initiator: CloseInitiator::User,
            ..
        }
    ));
    assert!(events.recv_timeout(T).is_err(), "thread still running");
}

#[test]
fn close_returns_promptly_when_the_peer_never_answers() {
    let _w = watchdog("close_silent", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .close_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    server.wait_for_connections(1, T).unwrap();
    server.simulate_disconnect(Disconnect::Silent);
    let started = Instant::now();
    client.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

fn reconnects_after(how: Disconnect) {
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    server.simulate_disconnect(how);
    let (ev, skipped) = wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    assert!(matches!(ev, Event::Reconnected { attempt: 1 }), "{ev:?}");
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "{skipped:?}"
    );
    let first = skipped
        .iter()
        .find_map(|e| match e {
            Event::Reconnecting {
                attempt: 1, delay, ..
            } => Some(*delay),
            _ => None,
        })
        .expect("a Reconnecting event");
    assert_eq!(first, Duration::ZERO, "the first retry is immediate");
    assert_eq!(server.total_connections(), 2);
    client.send_text("after").unwrap();
    assert_eq!(next_text(&events, T), "after");
    assert_eq!(client.stats().reconnects, 1);
}

#[test]
fn a_going_away_close_reconnects() {
    let _w = watchdog("going_away", T);
    reconnects_after(Disconnect::GoingAway);
}

#[test]
fn a_normal_server_close_reconnects() {
    let _w = watchdog("normal", T);
    reconnects_after(Disconnect::Normal);
}

#[test]
fn an_abrupt_tcp_drop_reconnects() {
    let _w = watchdog("abrupt", T);
    reconnects_after(Disconnect::Abrupt);
}

#[test]
fn a_policy_close_is_final_and_reports_the_code() {
    let _w = watchdog("policy", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    server.simulate_disconnect(Disconnect::Code(1008, "banned".into()));
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    match ev {
        Event::Closed {
            code,
            reason,
            initiator,
        } => {
            assert_eq!((code, reason.as_str()), (1008, "banned"));
            assert_eq!(initiator, CloseInitiator::Peer);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.total_connections(), 1);
}

#[test]
fn without_reconnect_on_error_a_close_is_reported_with_the_peers_code() {
    let _w = watchdog("no_reconnect", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .reconnect_on_error(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    server.simulate_disconnect(Disconnect::Code(4000, "maintenance".into()));
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(
        matches!(&ev, Event::Closed { code: 4000, reason, initiator: CloseInitiator::Peer } if reason == "maintenance"),
        "{ev:?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(client.send_text("x"), Err(Error::Closed)));
}

#[test]
fn a_dead_peer_is_detected_by_heartbeats_within_the_deadline() {
    let _w = watchdog("dead_peer", T * 2);
    let server = MockServer::start().unwrap();
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    let client = Client::connect(
        fast(&server.url())
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    // Heartbeats work while the peer answers.
    let deadline = Instant::now() + T;
    while client.stats().pongs_received < 2 {
        assert!(Instant::now() < deadline, "no pongs: {:?}", client.stats());
        let _ = events.recv_timeout(Duration::from_millis(50));
    }
    assert!(client.stats().last_rtt.is_some());
    assert!(server.ping_count() >= 2);

    server.simulate_disconnect(Disconnect::Silent);
    let silent_at = Instant::now();
    let cause = wait_disconnected(&events, T);
    let detected = silent_at.elapsed();
    assert!(
        matches!(*cause, Error::Timeout(TimeoutKind::Pong)),
        "{cause:?}"
    );
    // Detection needs at most one interval to the next ping plus the pong deadline.
    assert!(
        detected <= interval + timeout + Duration::from_millis(700),
        "took {detected:?}"
    );
    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    client.send_text("alive again").unwrap();
    assert_eq!(next_text(&events, T), "alive again");
}

#[test]
fn sends_while_reconnecting_fail_at_once_with_a_recoverable_error() {
    let _w = watchdog("send_reconnecting", T);
    let mut server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .retry_delay(Duration::from_millis(200))
            .max_retry_delay(Duration::from_millis(200))
            .retry_count(None)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    server.stop();
    wait_for(&events, T, |e| {
        matches!(e, Event::Reconnecting { attempt: 2, .. })
    });
    let started = Instant::now();
    let err = client.send_text("while down").unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(matches!(err, Error::NotConnected), "{err:?}");
    assert_eq!(err.recovery(), Recovery::Retry);
    assert_eq!(client.state(), ConnectionState::Reconnecting);
    server.restart().unwrap();
    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    client.send_text("back").unwrap();
    assert_eq!(next_text(&events, T), "back");
}

#[test]
fn retries_are_exhausted_with_a_terminal_event() {
    let _w = watchdog("exhausted", T);
    let mut server = MockServer::start().unwrap();
    let client =
        Client::connect(fast(&server.url()).retry_count(Some(3)).build().unwrap()).unwrap();
    let events = client.events();
    server.stop();
    let (ev, skipped) = wait_for(&events, T, Event::is_terminal);
    match ev {
        Event::GaveUp {
            attempts,
            last_error,
        } => {
            assert_eq!(attempts, 3);
            assert!(
                matches!(*last_error, Error::ConnectionRefused { .. }),
                "{last_error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let tries = skipped
        .iter()
        .filter(|e| matches!(e, Event::Reconnecting { .. }))
        .count();
    assert_eq!(tries, 3);
    let failed = skipped
        .iter()
        .filter(|e| matches!(e, Event::ReconnectFailed { .. }))
        .count();
    assert_eq!(failed, 3);
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(client.send_text("x"), Err(Error::Closed)));
}

#[test]
fn the_retry_counter_resets_only_after_a_stable_connection() {
    let _w = watchdog("stable", T * 2);
    let server = MockServer::start().unwrap();
    // stable_after is tiny: every reconnect is "stable", so one retry always suffices.
    let client = Client::connect(
        fast(&server.url())
            .retry_count(Some(1))
            .stable_after(Duration::from_millis(1))
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    for n in 1..=3 {
        server.wait_for_connections(n, T).unwrap();
        std::thread::sleep(Duration::from_millis(5)); // let the connection become "stable"
        server.simulate_disconnect(Disconnect::GoingAway);
        wait_for(&events, T, |e| {
            matches!(e, Event::Reconnected { attempt: 1 })
        });
    }
    client.close().unwrap();

    // With a long stable_after the single retry is used up by the first flap.
    let client = Client::connect(
        fast(&server.url())
            .retry_count(Some(1))
            .stable_after(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    let before = server.total_connections();
    server.simulate_disconnect(Disconnect::GoingAway);
    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    server.wait_for_connections(before + 1, T).unwrap();
    server.simulate_disconnect(Disconnect::GoingAway);
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(matches!(ev, Event::GaveUp { attempts: 1, .. }), "{ev:?}");
}

#[test]
fn an_oversized_message_is_a_protocol_error_and_reconnects() {
    let _w = watchdog("oversized", T);
    let server = MockServer::start().unwrap();
    let client =
        Client::connect(fast(&server.url()).max_message_size(1000).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    server.inject_text(&"y".repeat(5000));
    let cause = wait_disconnected(&events, T);
    assert!(
        matches!(
            *cause,
            Error::Protocol(ProtocolError::MessageTooLarge { max: 1000, .. })
        ),
        "{cause:?}"
    );
    assert_eq!(cause.category(), ErrorCategory::Protocol);
    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
}

#[test]
fn invalid_utf8_in_a_text_frame_is_a_protocol_error() {
    let _w = watchdog("utf8", T);
    let server = RawServer::start(|mut conn| {
        if accept_upgrade(&mut conn).is_ok() {
            let _ = conn.write_all(&frame(0x1, &[b'o', b'k', 0xff, 0xfe]));
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
        }
    });
    let client = Client::connect(
        fast(&server.url())
            .reconnect_on_error(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    let cause = wait_disconnected(&events, T);
    assert!(
        matches!(*cause, Error::Protocol(ProtocolError::InvalidUtf8)),
        "{cause:?}"
    );
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(matches!(ev, Event::Closed { .. }));
    drop(client);
}

#[test]
fn an_announced_huge_frame_is_refused_without_allocating_it() {
    let _w = watchdog("huge_frame", T);
    let server = RawServer::start(|mut conn| {
        if accept_upgrade(&mut conn).is_ok() {
            // A binary frame header announcing 2 GiB, and nothing behind it.
            let mut head = vec![0x82, 127];
            head.extend_from_slice(&(2u64 << 30).to_be_bytes());
            let _ = conn.write_all(&head);
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
        }
    });
    let client = Client::connect(
        fast(&server.url())
            .reconnect_on_error(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let cause = wait_disconnected(&client.events(), T);
    assert!(
        matches!(
            *cause,
            Error::Protocol(ProtocolError::MessageTooLarge { .. })
        ),
        "{cause:?}"
    );
}

#[test]
fn a_wrong_accept_key_is_a_handshake_error() {
    let _w = watchdog("accept_key", T);
    let server = RawServer::start(|mut conn| {
        if read_request_key(&mut conn).is_ok() {
            let _ = conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n");
        }
    });
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::Handshake(_))),
        "{err:?}"
    );
}

#[test]
fn a_redirect_is_reported_not_followed() {
    let _w = watchdog("redirect", T);
    let server = RawServer::start(|mut conn| {
        if read_request_key(&mut conn).is_ok() {
            let _ = conn.write_all(b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    match err {
        Error::Protocol(ProtocolError::Redirect { status, location }) => {
            assert_eq!(status, 301);
            assert_eq!(location.as_deref(), Some("ws://127.0.0.1:1/elsewhere"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_after_the_upgrade_is_a_protocol_error_not_a_panic() {
    let _w = watchdog("garbage", T);
    let server = RawServer::start(|mut conn| {
        if accept_upgrade(&mut conn).is_ok() {
            let _ = conn.write_all(b"\x0f\x0fthis is not a websocket frame at all");
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
        }
    });
    let client = Client::connect(
        fast(&server.url())
            .reconnect_on_error(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let cause = wait_disconnected(&client.events(), T);
    assert_eq!(cause.category(), ErrorCategory::Protocol, "{cause:?}");
}

#[test]
fn a_server_ping_is_answered_with_its_payload() {
    let _w = watchdog("server_ping", T);
    let (tx, rx) = zen_websocket::crossbeam_channel::bounded::<Vec<u8>>(1);
    let server = RawServer::start(move |mut conn| {
        if accept_upgrade(&mut conn).is_err() {
            return;
        }
        let _ = conn.write_all(&frame(0x9, b"are-you-there"));
        // The client's pong is masked: unmask it here.
        let mut head = [0u8; 6];
        if std::io::Read::read_exact(&mut conn, &mut head).is_ok() && head[0] == 0x8A {
            let len = (head[1] & 0x7f) as usize;
            let mut payload = vec![0u8; len];
            if std::io::Read::read_exact(&mut conn, &mut payload).is_ok() {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= head[2 + i % 4];
                }
                let _ = tx.send(payload);
            }
        }
        let mut sink = [0u8; 64];
        while matches!(std::io::Read::read(&mut conn, &mut sink), Ok(n) if n > 0) {}
    });
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let pong = rx.recv_timeout(T).expect("a pong");
    assert_eq!(pong, b"are-you-there");
    drop(client);
}

#[test]
fn a_slow_consumer_loses_nothing_under_the_block_policy() {
    let _w = watchdog("block", T * 2);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).event_capacity(4).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    for i in 0..500 {
        server.inject_text(&format!("n{i}"));
    }
    // Nobody reads for a while: the connection thread waits, TCP pushes back.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..500 {
        assert_eq!(next_text(&events, T), format!("n{i}"));
    }
    assert_eq!(client.stats().dropped_events, 0);
}

#[test]
fn the_drop_policy_counts_what_it_drops_and_keeps_lifecycle_events() {
    let _w = watchdog("drop_policy", T * 2);
    let server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .event_capacity(8)
            .event_policy(EventPolicy::DropNewest)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();
    for i in 0..100 {
        server.inject_text(&format!("d{i}"));
    }
    server.inject_text("last");
    // The echo of this marker proves every injected frame was processed.
    let deadline = Instant::now() + T;
    while client.stats().messages_in < 101 {
        assert!(Instant::now() < deadline, "{:?}", client.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = events
        .try_iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count() as u64;
    let dropped = client.stats().dropped_events;
    assert!(dropped > 0);
    assert_eq!(
        delivered + dropped,
        101,
        "every message delivered or counted"
    );
    client.close().unwrap();
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(matches!(ev, Event::Closed { .. }));
}

#[test]
fn close_wakes_a_connection_thread_blocked_on_a_full_channel() {
    let _w = watchdog("close_full", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(fast(&server.url()).event_capacity(1).build().unwrap()).unwrap();
    server.wait_for_connections(1, T).unwrap();
    for i in 0..50 {
        server.inject_text(&format!("f{i}"));
    }
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    client.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn close_during_backoff_returns_at_once() {
    let _w = watchdog("close_backoff", T);
    let mut server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .retry_delay(Duration::from_secs(20))
            .max_retry_delay(Duration::from_secs(20))
            .retry_count(None)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    server.stop();
    wait_for(&events, T, |e| {
        matches!(e, Event::Reconnecting { attempt: 2, .. })
    });
    let started = Instant::now();
    client.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (ev, _) = wait_for(&events, T, Event::is_terminal);
    assert!(matches!(
        ev,
        Event::Closed {
            initiator: CloseInitiator::User,
            ..
        }
    ));
}

#[test]
fn an_idle_connection_sends_only_heartbeats() {
    let _w = watchdog("idle", T);
    let server = MockServer::start().unwrap();
    let client = Client::connect(
        fast(&server.url())
            .heartbeat_interval(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    let deadline = Instant::now() + T;
    while client.stats().pings_sent < 3 {
        assert!(Instant::now() < deadline);
        let _ = events.recv_timeout(Duration::from_millis(20));
    }
    let s = client.stats();
    assert_eq!(s.messages_out, 0);
    assert!(s.pings_sent >= 3);
    assert!(s.smoothed_rtt.is_some());
    client.close().unwrap();
}

#[test]
fn a_server_that_hangs_up_during_the_upgrade_is_a_connection_error() {
    let _w = watchdog("hangup_upgrade", T);
    let server = RawServer::start(|mut conn| {
        // Read the request, then close without answering.
        let _ = read_request_key(&mut conn);
    });
    let err = Client::connect(fast(&server.url()).build().unwrap()).unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Connection, "{err:?}");
    assert_eq!(err.recovery(), Recovery::Reconnect);
}
