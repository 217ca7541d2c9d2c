//! The Deribit adapter against the embedded `DeribitServer` on loopback:
//! authentication and tokens, platform heartbeats, subscriptions, re-auth and
//! restore after a reconnect, token refresh, error mapping, cancel on
//! disconnect, order-book gap detection, `private/buy`, the example's flow,
//! and secrets kept out of `Debug`.

mod support;

// The example itself, so that its flow is tested as shipped.
#[allow(dead_code)] // `main` is the example's entry point; these tests drive the rest.
#[path = "../examples/deribit.rs"]
mod example;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use zen_websocket::adapters::deribit::{
    Credentials, DeribitClient, DeribitConfig, DeribitConfigBuilder, Notification, TESTNET_URL,
};
use zen_websocket::crossbeam_channel::{self, Receiver};
use zen_websocket::testing::DeribitServer;
use zen_websocket::{Error, ErrorCategory, Event};

const T: Duration = Duration::from_secs(10);
const TICKER: &str = "ticker.BTC-PERPETUAL.100ms";
const ORDERS: &str = "user.orders.BTC-PERPETUAL.raw";
const BOOK: &str = "book.BTC-PERPETUAL.100ms";

/// A config for `server` with fast reconnection and short timeouts.
fn config(server: &DeribitServer) -> DeribitConfigBuilder {
    DeribitConfig::builder()
        .url(server.url())
        .client_options(|b| {
            b.connect_timeout(Duration::from_secs(2))
                .retry_delay(Duration::from_millis(20))
                .max_retry_delay(Duration::from_millis(100))
                .close_timeout(Duration::from_millis(500))
                .request_timeout(Duration::from_secs(5))
        })
}

fn demo(server: &DeribitServer) -> DeribitConfigBuilder {
    config(server).credentials(
        DeribitServer::DEMO_CLIENT_ID,
        DeribitServer::DEMO_CLIENT_SECRET,
    )
}

/// The next subscription notification, skipping lifecycle events.
fn next_notification(client: &DeribitClient) -> Notification {
    let (event, _) = wait_for(&client.events(), T, |e| {
        matches!(e, Event::Subscription { .. })
    });
    Notification::from_event(event).expect("a subscription event")
}

/// The params of the recorded requests of `method` on every connection.
fn params_of(server: &DeribitServer, method: &str) -> Vec<Value> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == method)
        .map(|r| r.params)
        .collect()
}

#[test]
fn auth_succeeds_and_the_tokens_are_stored() {
    let _w = watchdog("auth_ok", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();

    let tokens = client.tokens().expect("tokens after auth");
    assert!(
        tokens.access_token().starts_with("zen-access-"),
        "{tokens:?}"
    );
    assert!(tokens.refresh_token().starts_with("zen-refresh-"));
    assert_eq!(tokens.expires_in(), Duration::from_secs(900));
    assert_eq!(tokens.scope(), "connection mainaccount");
    assert_eq!(server.auth_count(), 1);

    let conn = server.connection(1).unwrap();
    assert!(conn.authenticated);
    assert_eq!(conn.methods, ["public/auth", "public/set_heartbeat"]);
    assert_eq!(
        params_of(&server, "public/auth")[0]["grant_type"],
        "client_credentials"
    );
    assert_eq!(
        params_of(&server, "public/set_heartbeat"),
        [json!({"interval": 30})]
    );
    client.close().unwrap();
}

#[test]
fn invalid_credentials_fail_connect_with_an_auth_error() {
    let _w = watchdog("auth_refused", T);
    let server = DeribitServer::start().unwrap();
    let config = config(&server)
        .credentials(DeribitServer::DEMO_CLIENT_ID, "wrong-secret")
        .build()
        .unwrap();
    match DeribitClient::connect(config) {
        Err(e @ Error::Auth { .. }) => {
            assert_eq!(e.category(), ErrorCategory::Auth);
            assert!(e.to_string().contains("13004"), "{e}");
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    assert_eq!((server.auth_count(), server.auth_failures()), (0, 1));
    // The first connect reports the cause; it never loops on refused credentials.
    assert_eq!(server.total_connections(), 1);
}

#[test]
fn test_requests_are_answered_automatically() {
    let _w = watchdog("heartbeat", T);
    let server = DeribitServer::builder()
        .heartbeat_interval_override(Duration::from_millis(50))
        .start()
        .unwrap();
    let client = DeribitClient::connect(config(&server).build().unwrap()).unwrap();
    server.wait_for_test_answers(3, T).unwrap();
    assert!(server.heartbeats_sent() >= 3);
    let conn = server.connection(1).unwrap();
    assert_eq!(conn.heartbeat_interval, Some(Duration::from_millis(50)));
    assert!(conn.test_answers >= 3);
    // Heartbeats and the answers to our `public/test` never reach the user.
    client.close().unwrap();
    let leaked: Vec<Event> = client
        .events()
        .try_iter()
        .filter(|e| matches!(e, Event::Message(_) | Event::LateResponse(_)))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[test]
fn public_and_private_subscriptions_deliver_notifications_and_unsubscribe() {
    let _w = watchdog("subscriptions", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();

    assert_eq!(client.subscribe(&[TICKER]).unwrap(), [TICKER]);
    assert_eq!(client.subscribe(&[ORDERS]).unwrap(), [ORDERS]);
    assert_eq!(client.subscriptions(), [TICKER, ORDERS]);
    let conn = server.connection(1).unwrap();
    assert_eq!(
        &conn.methods[2..],
        ["public/subscribe", "private/subscribe"]
    );
    assert_eq!(conn.subscriptions, [TICKER, ORDERS]);

    assert_eq!(server.publish(TICKER, json!({"mark_price": 42000.5})), 1);
    let n = next_notification(&client);
    assert_eq!(n.channel, TICKER);
    assert_eq!(n.data, json!({"mark_price": 42000.5}));
    assert_eq!(server.publish(ORDERS, json!([{"order_id": "o-1"}])), 1);
    let n = next_notification(&client);
    assert_eq!(
        (n.channel.as_str(), &n.data[0]["order_id"]),
        (ORDERS, &json!("o-1"))
    );

    client.unsubscribe(&[TICKER]).unwrap();
    assert_eq!(client.subscriptions(), [ORDERS]);
    assert_eq!(server.connection(1).unwrap().subscriptions, [ORDERS]);
    assert_eq!(server.publish(TICKER, json!({})), 0);
    client.unsubscribe(&[ORDERS]).unwrap();
    assert!(client.subscriptions().is_empty());
    assert_eq!(
        server
            .connection(1)
            .unwrap()
            .methods
            .last()
            .map(String::as_str),
        Some("private/unsubscribe")
    );
    client.close().unwrap();
}

#[test]
fn a_private_subscription_without_auth_is_an_auth_error() {
    let _w = watchdog("private_unauthorized", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(config(&server).build().unwrap()).unwrap();
    assert!(client.tokens().is_none());
    match client.subscribe(&[ORDERS]) {
        Err(e @ Error::Auth { .. }) => assert!(e.to_string().contains("13009"), "{e}"),
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    assert!(client.subscriptions().is_empty());
    // A public channel still works on the same connection.
    assert_eq!(client.subscribe(&[TICKER]).unwrap(), [TICKER]);
    client.close().unwrap();
}

#[test]
fn a_reconnect_authenticates_before_restoring_subscriptions() {
    let _w = watchdog("reconnect", T * 2);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    client.subscribe(&[TICKER]).unwrap();
    client.subscribe(&[ORDERS]).unwrap();
    let first_token = client.tokens().unwrap();
    let events = client.events();

    assert_eq!(server.disconnect_all(), 1);
    let (restored, skipped) = wait_for(&events, T, |e| {
        matches!(e, Event::SubscriptionsRestored { .. })
    });
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnected { .. })),
        "{skipped:?}"
    );
    let Event::SubscriptionsRestored { channels } = restored else {
        unreachable!()
    };
    assert_eq!(channels, [TICKER, ORDERS]);

    // On the new connection: auth, then heartbeat, then one restore (mixed
    // channels → private/subscribe, which needs the auth before it).
    let conn = server.connection(2).expect("a second connection");
    assert_eq!(
        conn.methods,
        ["public/auth", "public/set_heartbeat", "private/subscribe"]
    );
    assert!(conn.position("public/auth") < conn.position("private/subscribe"));
    assert_eq!(conn.subscriptions, [TICKER, ORDERS]);
    assert_eq!(server.auth_count(), 2);
    assert_ne!(
        client.tokens().unwrap().access_token(),
        first_token.access_token()
    );

    // Notifications flow again, on the new connection only.
    assert_eq!(server.publish(TICKER, json!({"n": 2})), 1);
    let n = next_notification(&client);
    assert_eq!((n.channel.as_str(), &n.data), (TICKER, &json!({"n": 2})));
    client.close().unwrap();
}

#[test]
fn tokens_are_refreshed_before_they_expire() {
    let _w = watchdog("refresh", T * 2);
    let server = DeribitServer::builder()
        .token_expiry(Duration::from_secs(2))
        .start()
        .unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    let first = client.tokens().unwrap();
    assert_eq!(first.expires_in(), Duration::from_secs(2));

    // Due at 80 % of 2 s; the second refresh uses the first one's refresh
    // token, so once the server saw it the client had stored new tokens.
    server.wait_for_refreshes(2, T).unwrap();
    let grants: Vec<Value> = params_of(&server, "public/auth")
        .into_iter()
        .map(|p| p["grant_type"].clone())
        .collect();
    assert_eq!(grants[0], "client_credentials");
    assert!(
        grants[1..].iter().all(|g| g == "refresh_token"),
        "{grants:?}"
    );
    assert_ne!(
        client.tokens().unwrap().access_token(),
        first.access_token()
    );
    // Refreshes ran on the same connection; nothing reconnected.
    assert_eq!(server.total_connections(), 1);
    assert_eq!(server.auth_count(), 1);
    client.close().unwrap();
}

#[test]
fn a_failed_refresh_is_retried() {
    let _w = watchdog("refresh_retry", T * 2);
    let server = DeribitServer::builder()
        .token_expiry(Duration::from_secs(1))
        .start()
        .unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    server.fail_method("public/auth", 10028, "too_many_requests");
    // The initial auth, then two refused refreshes (1 s apart, then 2 s).
    server
        .wait_until(T, "two refused refreshes", |s| {
            params_of(s, "public/auth").len() >= 3
        })
        .unwrap();
    assert_eq!(server.refresh_count(), 0);
    server.clear_failures();
    server.wait_for_refreshes(1, T).unwrap();
    assert_eq!(server.total_connections(), 1);
    client.close().unwrap();
}

#[test]
fn deribit_error_codes_are_typed() {
    let _w = watchdog("error_codes", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(config(&server).build().unwrap()).unwrap();
    assert!(client
        .request("public/get_time", json!({}))
        .unwrap()
        .is_u64());

    server.fail_method("public/get_time", 10028, "too_many_requests");
    match client.request("public/get_time", json!({})) {
        Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, Duration::from_secs(1)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    server.fail_method("public/get_time", 13009, "unauthorized");
    assert!(matches!(
        client.request("public/get_time", json!({})),
        Err(Error::Auth { .. })
    ));
    server.fail_method("public/get_time", 11050, "bad_request");
    match client.request_with_timeout("public/get_time", json!({}), T) {
        Err(Error::Rpc { code, message, .. }) => {
            assert_eq!((code, message.as_str()), (11050, "bad_request"))
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    assert!(matches!(
        client.request("public/no_such_method", json!({})),
        Err(Error::Rpc { code: -32601, .. })
    ));
    server.clear_failures();
    assert!(client.request("public/get_time", json!({})).is_ok());
    client.close().unwrap();
}

#[test]
fn cancel_on_disconnect_is_enabled_on_every_connect_when_configured() {
    let _w = watchdog("cancel_on_disconnect", T * 2);
    let server = DeribitServer::start().unwrap();
    let client =
        DeribitClient::connect(demo(&server).cancel_on_disconnect(true).build().unwrap()).unwrap();
    let expected = [
        "public/auth",
        "public/set_heartbeat",
        "private/enable_cancel_on_disconnect",
    ];
    let conn = server.connection(1).unwrap();
    assert_eq!(conn.methods, expected);
    assert!(conn.cancel_on_disconnect);

    server.disconnect_all();
    wait_for(&client.events(), T, |e| {
        matches!(e, Event::Reconnected { .. })
    });
    let conn = server.connection(2).unwrap();
    assert_eq!(conn.methods, expected);
    assert!(conn.cancel_on_disconnect);
    client.close().unwrap();

    // Not configured: not sent.
    let plain = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    assert!(!server.connection(3).unwrap().cancel_on_disconnect);
    plain.close().unwrap();
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let _w = watchdog("secrets", T);
    let secret = "s3cr3t-that-must-not-leak";
    let server = DeribitServer::builder()
        .credentials("leak-test-id", secret)
        .start()
        .unwrap();
    let config = config(&server)
        .credentials("leak-test-id", secret)
        .build()
        .unwrap();
    let client = DeribitClient::connect(config.clone()).unwrap();
    let tokens = client.tokens().unwrap();
    let shown = format!(
        "{config:?} {client:?} {tokens:?} {:?} {:?} {server:?} {:?}",
        config.credentials(),
        client.client(),
        server.requests()
    );
    for leaked in [secret, tokens.access_token(), tokens.refresh_token()] {
        assert!(!shown.contains(leaked), "`{leaked}` in {shown}");
    }
    assert!(shown.contains("[REDACTED]"));
    client.close().unwrap();
}

#[test]
fn wss_works_with_the_test_ca() {
    let _w = watchdog("wss", T);
    let server = DeribitServer::builder().tls(true).start().unwrap();
    let ca = server.ca_certificate_pem().unwrap();
    assert!(server.url().starts_with("wss://localhost:"));
    let config = demo(&server)
        .client_options(move |b| b.root_certificate(ca.into_bytes()))
        .build()
        .unwrap();
    let client = DeribitClient::connect(config).unwrap();
    assert!(client.tokens().is_some());
    client.subscribe(&[TICKER]).unwrap();
    server.publish(TICKER, json!({"tls": true}));
    assert_eq!(next_notification(&client).data, json!({"tls": true}));
    client.close().unwrap();
}

#[test]
fn close_is_idempotent_and_later_calls_fail_with_closed() {
    let _w = watchdog("close", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    client.close().unwrap();
    client.close().unwrap();
    assert!(matches!(
        client.request("public/get_time", json!({})),
        Err(Error::Closed)
    ));
    // Dropping after close joins nothing twice and does not hang.
    drop(client);
    server
        .wait_until(T, "the connection to end", |s| s.connection_count() == 0)
        .unwrap();

    // Dropping without close does the same: close handshake, threads joined.
    let dropped = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    server
        .wait_until(T, "a second connection", |s| s.connection_count() == 1)
        .unwrap();
    drop(dropped);
    server
        .wait_until(T, "the second connection to end", |s| {
            s.connection_count() == 0
        })
        .unwrap();
}

#[test]
fn closing_the_inner_client_first_still_closes_cleanly() {
    let _w = watchdog("inner_close", T);
    let server = DeribitServer::builder()
        .token_expiry(Duration::from_secs(1))
        .start()
        .unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    client.client().close().unwrap();
    // The refresh thread finds the client closed (`Error::Closed`) and ends
    // by itself; `close` joins it at once either way.
    let started = std::time::Instant::now();
    client.close().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(client.subscribe(&[TICKER]), Err(Error::Closed)));
    assert_eq!(server.refresh_count(), 0);
}

/// Against Deribit's test network; needs internet and an API key:
/// `DERIBIT_CLIENT_ID=… DERIBIT_CLIENT_SECRET=… cargo test --all-features --test deribit -- --ignored`
#[test]
#[ignore = "needs internet access and Deribit testnet credentials"]
fn live_testnet_auth_and_ticker() {
    let _w = watchdog("live", Duration::from_secs(60));
    let (Ok(id), Ok(secret)) = (
        std::env::var("DERIBIT_CLIENT_ID"),
        std::env::var("DERIBIT_CLIENT_SECRET"),
    ) else {
        panic!("set DERIBIT_CLIENT_ID and DERIBIT_CLIENT_SECRET");
    };
    let config = DeribitConfig::builder()
        .credentials(id, secret)
        .build()
        .unwrap();
    let client = DeribitClient::connect(config).unwrap();
    assert!(client.tokens().is_some());
    client.subscribe(&[TICKER]).unwrap();
    let n = next_notification(&client);
    assert_eq!(n.channel, TICKER);
    assert!(client
        .request("public/get_time", json!({}))
        .unwrap()
        .is_u64());
    client.close().unwrap();
}

/// Reproduces a stall of the client's opening path, which the server's pings
/// after answers normally hide: an answer drained before the connection thread
/// starts waiting is noticed only at the request timeout. Un-ignore once
/// `Opening::request_raw`/`Conn::pump` stop waiting after a drain that
/// completed the request.
#[test]
fn opening_requests_never_wait_for_their_timeout() {
    let _w = watchdog("opening_stall", Duration::from_secs(120));
    let server = DeribitServer::builder()
        .ping_after_replies(false)
        .tls(true)
        .start()
        .unwrap();
    let ca = server.ca_certificate_pem().unwrap();
    for round in 0..20 {
        let ca = ca.clone();
        let config = demo(&server)
            .cancel_on_disconnect(true)
            .client_options(move |b| b.root_certificate(ca.into_bytes()))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let client = DeribitClient::connect(config).unwrap();
        let took = started.elapsed();
        client.close().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "round {round}: connect took {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Order books: gaps, resubscribes, fresh snapshots.

/// Every event of a client, kept so a test can check afterwards that none of
/// them was a `LateResponse` (or a second gap).
struct Seen {
    events: Receiver<Event>,
    all: Vec<String>,
}

impl Seen {
    fn new(client: &DeribitClient) -> Seen {
        Seen {
            events: client.events(),
            all: Vec::new(),
        }
    }

    /// The next event that `pred` accepts; every event is remembered.
    fn next(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.all.push(format!("{e:?}"));
                    if pred(&e) {
                        return e;
                    }
                }
                Err(e) => panic!("no {what} within {T:?} ({e}); saw {:#?}", self.all),
            }
        }
    }

    /// The next notification on `channel`, as (type, prev_change_id, change_id).
    fn book(&mut self, channel: &str) -> (String, Option<u64>, u64) {
        let Event::Subscription { data, .. } = self.next(
            channel,
            |e| matches!(e, Event::Subscription { channel: c, .. } if c == channel),
        ) else {
            unreachable!()
        };
        (
            data["type"].as_str().unwrap_or_default().to_owned(),
            data["prev_change_id"].as_u64(),
            data["change_id"].as_u64().expect("a change_id"),
        )
    }

    fn gap(&mut self) -> (String, u64, u64) {
        match self.next("sequence gap", |e| matches!(e, Event::SequenceGap { .. })) {
            Event::SequenceGap {
                channel,
                expected,
                received,
            } => (channel, expected, received),
            _ => unreachable!(),
        }
    }

    /// After close: drain the rest and check the whole history.
    fn assert_clean(mut self, gaps: usize) {
        self.all
            .extend(self.events.try_iter().map(|e| format!("{e:?}")));
        let late: Vec<&String> = self
            .all
            .iter()
            .filter(|e| e.starts_with("LateResponse"))
            .collect();
        assert!(late.is_empty(), "{late:#?}");
        let seen_gaps = self
            .all
            .iter()
            .filter(|e| e.starts_with("SequenceGap"))
            .count();
        assert_eq!(seen_gaps, gaps, "{:#?}", self.all);
    }
}

/// The (un)subscribe requests the server saw after the first `skip` requests,
/// as (method, channels).
fn channel_requests(server: &DeribitServer, skip: usize) -> Vec<(String, Value)> {
    server
        .requests()
        .into_iter()
        .skip(skip)
        .filter(|r| r.method.ends_with("subscribe"))
        .map(|r| (r.method, r.params["channels"].clone()))
        .collect()
}

#[test]
fn a_book_gap_is_reported_and_only_that_channel_is_resubscribed_for_a_fresh_snapshot() {
    let _w = watchdog("book_gap", T * 2);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    let mut seen = Seen::new(&client);
    assert_eq!(client.subscribe(&[BOOK, TICKER]).unwrap(), [BOOK, TICKER]);

    // A snapshot, then changes chained by prev_change_id.
    for _ in 0..3 {
        assert_eq!(server.publish_book(BOOK), 1);
    }
    assert_eq!(seen.book(BOOK), ("snapshot".into(), None, 1000));
    assert_eq!(seen.book(BOOK), ("change".into(), Some(1000), 1001));
    assert_eq!(seen.book(BOOK), ("change".into(), Some(1001), 1002));

    // Change 1003 is lost on the way: 1004 names it as its predecessor.
    let before = server.requests().len();
    assert_eq!(server.publish_book_gap(BOOK), 1);
    assert_eq!(seen.gap(), (BOOK.to_owned(), 1002, 1003));

    // The server answers the new subscription with a fresh snapshot; the
    // gapped change itself was never delivered.
    assert_eq!(seen.book(BOOK), ("snapshot".into(), None, 1004));
    assert_eq!(
        channel_requests(&server, before),
        [
            ("public/unsubscribe".to_owned(), json!([BOOK])),
            ("public/subscribe".to_owned(), json!([BOOK])),
        ]
    );
    // Their answers came before the snapshot: both consumed, nothing pending.
    assert_eq!(client.client().stats().pending_requests, 0);

    // Changes flow again, and the other channel was never touched.
    server.publish_book(BOOK);
    assert_eq!(seen.book(BOOK), ("change".into(), Some(1004), 1005));
    assert_eq!(server.publish(TICKER, json!({"mark_price": 1.5})), 1);
    seen.next(
        "ticker",
        |e| matches!(e, Event::Subscription { channel, .. } if channel == TICKER),
    );
    // Still tracked on both sides, in the user's order on ours.
    assert_eq!(client.subscriptions(), [BOOK, TICKER]);
    let mut on_server = server.connection(1).unwrap().subscriptions;
    on_server.sort();
    assert_eq!(on_server, [BOOK, TICKER]);
    assert_eq!(server.total_connections(), 1);

    client.close().unwrap();
    seen.assert_clean(1);
}

#[test]
fn changes_after_a_gap_are_dropped_until_the_fresh_snapshot() {
    let _w = watchdog("book_gap_burst", T * 2);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(config(&server).build().unwrap()).unwrap();
    let mut seen = Seen::new(&client);
    client.subscribe(&[BOOK]).unwrap();
    server.publish_book(BOOK);
    assert_eq!(seen.book(BOOK), ("snapshot".into(), None, 1000));

    // A gap, then changes that build on the lost one. Each reaches the client
    // before its resubscribe is served (it drops them: they build on a book it
    // does not have), or is dropped by the server with the old subscription,
    // or is published after the new one began and follows its snapshot. In
    // every case the user sees one gap, then a snapshot, then a chain.
    let before = server.requests().len();
    server.publish_book_gap(BOOK);
    for _ in 0..20 {
        server.publish_book(BOOK);
    }
    assert_eq!(seen.gap(), (BOOK.to_owned(), 1000, 1001));
    let (kind, prev, mut last) = seen.book(BOOK);
    assert_eq!((kind.as_str(), prev), ("snapshot", None));
    assert!(last >= 1002, "{last}");

    server.publish_book(BOOK);
    let newest = server.book_change_id(BOOK).unwrap();
    while last < newest {
        let (kind, prev, id) = seen.book(BOOK);
        assert_eq!((kind.as_str(), prev), ("change", Some(last)));
        last = id;
    }
    assert_eq!(last, newest);
    assert_eq!(
        channel_requests(&server, before),
        [
            ("public/unsubscribe".to_owned(), json!([BOOK])),
            ("public/subscribe".to_owned(), json!([BOOK])),
        ]
    );
    client.close().unwrap();
    seen.assert_clean(1);
}

#[test]
fn book_state_starts_over_after_a_reconnect_and_after_an_unsubscribe() {
    let _w = watchdog("book_reset", T * 2);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    let mut seen = Seen::new(&client);
    client.subscribe(&[BOOK]).unwrap();
    server.publish_book(BOOK);
    server.publish_book(BOOK);
    assert_eq!(seen.book(BOOK), ("snapshot".into(), None, 1000));
    assert_eq!(seen.book(BOOK), ("change".into(), Some(1000), 1001));

    // The book moves on while the client reconnects; the restored
    // subscription starts from its own snapshot, which is no gap, whichever
    // of these changes it already includes.
    server.disconnect_all();
    seen.next("disconnect", |e| matches!(e, Event::Disconnected { .. }));
    server.publish_book(BOOK);
    server.publish_book(BOOK);
    let (kind, prev, mut last) = seen.book(BOOK);
    assert_eq!((kind.as_str(), prev), ("snapshot", None));
    assert!((1001..=1003).contains(&last), "{last}");
    server.publish_book(BOOK);
    while last < 1004 {
        let (kind, prev, id) = seen.book(BOOK);
        assert_eq!((kind.as_str(), prev), ("change", Some(last)));
        last = id;
    }
    assert_eq!(server.connection(2).unwrap().subscriptions, [BOOK]);

    // Unsubscribed, the book moves on again; a new subscription starts over too.
    client.unsubscribe(&[BOOK]).unwrap();
    assert_eq!(server.publish_book(BOOK), 0);
    client.subscribe(&[BOOK]).unwrap();
    assert_eq!(seen.book(BOOK), ("snapshot".into(), None, 1005));
    server.publish_book(BOOK);
    assert_eq!(seen.book(BOOK), ("change".into(), Some(1005), 1006));
    client.close().unwrap();
    seen.assert_clean(0);
}

// ---------------------------------------------------------------------------
// private/buy

#[test]
fn private_buy_places_an_order_when_authenticated() {
    let _w = watchdog("buy", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(demo(&server).build().unwrap()).unwrap();
    let resting = client
        .request(
            "private/buy",
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 10, "type": "limit",
                   "price": DeribitServer::MARK_PRICE - 1000.0, "label": "zen-1"}),
        )
        .unwrap();
    let order = &resting["order"];
    assert!(
        order["order_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{resting}"
    );
    assert_eq!(order["instrument_name"], "BTC-PERPETUAL");
    assert_eq!(order["amount"].as_f64(), Some(10.0));
    assert_eq!(order["price"].as_f64(), Some(41_000.0));
    assert_eq!(order["order_state"], "open");
    assert_eq!(order["label"], "zen-1");
    assert_eq!(resting["trades"], json!([]));

    let filled = client
        .request(
            "private/buy",
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 20, "type": "market"}),
        )
        .unwrap();
    assert_eq!(filled["order"]["order_state"], "filled");
    assert_eq!(
        filled["order"]["price"].as_f64(),
        Some(DeribitServer::MARK_PRICE)
    );
    assert_eq!(filled["trades"][0]["order_id"], filled["order"]["order_id"]);
    assert_ne!(filled["order"]["order_id"], order["order_id"]);

    // Bad params are Deribit's -32602, typed as a plain RPC error.
    match client.request(
        "private/buy",
        json!({"instrument_name": "BTC-PERPETUAL", "amount": 10}),
    ) {
        Err(Error::Rpc { code: -32602, .. }) => {}
        other => panic!("expected -32602, got {other:?}"),
    }
    assert_eq!(server.order_count(), 2);
    client.close().unwrap();
}

#[test]
fn private_buy_without_auth_is_an_auth_error() {
    let _w = watchdog("buy_unauthorized", T);
    let server = DeribitServer::start().unwrap();
    let client = DeribitClient::connect(config(&server).build().unwrap()).unwrap();
    let order = json!({"instrument_name": "BTC-PERPETUAL", "amount": 10, "type": "market"});
    match client.request("private/buy", order) {
        Err(e @ Error::Auth { .. }) => {
            assert_eq!(e.category(), ErrorCategory::Auth);
            assert!(e.to_string().contains("13009"), "{e}");
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    assert_eq!(server.order_count(), 0);
    assert!(server
        .connection(1)
        .unwrap()
        .methods
        .contains(&"private/buy".to_owned()));
    client.close().unwrap();
}

// ---------------------------------------------------------------------------
// The example (examples/deribit.rs)

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_runs_its_whole_flow_against_the_test_server() {
    let _w = watchdog("example_local", T * 2);
    let (_ring, stop) = crossbeam_channel::bounded::<()>(1);
    let mut out = Vec::new();
    let outcome = example::run(example::Target::Local, &stop, &mut out).unwrap();
    assert_eq!(outcome, example::Outcome::Done);
    let lines = lines(&out);
    let notifications: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("notification "))
        .collect();
    assert_eq!(notifications.len(), example::SHOWN, "{lines:#?}");
    for (i, line) in notifications.iter().enumerate() {
        assert!(
            line.starts_with(&format!("notification {}/5 on ", i + 1)),
            "{line}"
        );
        assert!(
            line.contains(example::TRADES) || line.contains(example::TICKER),
            "{line}"
        );
    }
    let get_time = lines
        .iter()
        .find(|l| l.starts_with("public/get_time: "))
        .expect("a time line");
    let ms: u64 = get_time["public/get_time: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number of ms");
    assert!(ms > 1_600_000_000_000, "{get_time}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("connected to ws://127.0.0.1:") && l.contains("authenticated")));
    assert!(lines.iter().any(|l| l.starts_with("unsubscribed from ")));
    assert_eq!(lines.last().map(String::as_str), Some("closed"));
    // Tokens never reach the output.
    assert!(
        !String::from_utf8_lossy(&out).contains("zen-access-"),
        "{lines:#?}"
    );
}

#[test]
fn the_example_authenticates_sets_the_heartbeat_subscribes_and_unsubscribes() {
    let _w = watchdog("example_requests", T * 2);
    let server = DeribitServer::start().unwrap();
    let (_ring, stop) = crossbeam_channel::bounded::<()>(1);
    let mut out = Vec::new();
    let config = example::local_config(&server).unwrap();
    let outcome = example::with_publisher(&server, || example::session(config, T, &stop, &mut out))
        .unwrap()
        .unwrap();
    assert_eq!(outcome, example::Outcome::Done);
    let conn = server.connection(1).unwrap();
    let methods: Vec<&str> = conn
        .methods
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "public/test")
        .collect();
    assert_eq!(
        methods,
        [
            "public/auth",
            "public/set_heartbeat",
            "public/subscribe",
            "public/get_time",
            "public/unsubscribe"
        ]
    );
    assert_eq!(
        params_of(&server, "public/set_heartbeat"),
        [json!({"interval": 10})]
    );
    let both = json!([example::TRADES, example::TICKER]);
    assert_eq!(
        params_of(&server, "public/subscribe"),
        [json!({"channels": both})]
    );
    assert_eq!(
        params_of(&server, "public/unsubscribe"),
        [json!({"channels": both})]
    );
    assert!(conn.subscriptions.is_empty());
    // Closed: the connection is gone on the server too.
    server
        .wait_until(T, "the example's connection to end", |s| {
            s.connection_count() == 0
        })
        .unwrap();
}

#[test]
fn the_example_stops_cleanly_when_interrupted() {
    let _w = watchdog("example_interrupt", T * 2);
    let server = DeribitServer::start().unwrap();
    let (ring, stop) = crossbeam_channel::bounded::<()>(1);
    let config = example::local_config(&server).unwrap();
    // No publisher: the example waits for notifications that never come,
    // much longer than this test may take, until it is interrupted.
    let session = std::thread::spawn(move || {
        let mut out = Vec::new();
        let outcome = example::session(config, T * 10, &stop, &mut out);
        (outcome, out)
    });
    server.wait_for_subscribers(example::TRADES, 1, T).unwrap();
    let rung = Instant::now();
    ring.send(()).unwrap();
    let (outcome, out) = session.join().unwrap();
    assert_eq!(outcome.unwrap(), example::Outcome::Interrupted);
    assert!(rung.elapsed() < T / 2, "{:?}", rung.elapsed());
    assert_eq!(lines(&out).last().map(String::as_str), Some("closed"));
    server
        .wait_until(T, "the example's connection to end", |s| {
            s.connection_count() == 0
        })
        .unwrap();
}

#[test]
fn the_example_reads_its_target_from_the_environment() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    };
    use example::Target;
    assert_eq!(Target::from_vars(false, vars(&[])).unwrap(), Target::Local);
    assert_eq!(
        Target::from_vars(true, vars(&[])).unwrap(),
        Target::Remote {
            url: TESTNET_URL.into(),
            credentials: None
        }
    );
    assert_eq!(
        Target::from_vars(false, vars(&[("DERIBIT_URL", "wss://example.test/ws")])).unwrap(),
        Target::Remote {
            url: "wss://example.test/ws".into(),
            credentials: None
        }
    );
    let key = [
        ("DERIBIT_CLIENT_ID", "id-1"),
        ("DERIBIT_CLIENT_SECRET", "s3cr3t"),
    ];
    let target = Target::from_vars(false, vars(&key)).unwrap();
    assert_eq!(
        target,
        Target::Remote {
            url: TESTNET_URL.into(),
            credentials: Some(Credentials::new("id-1", "s3cr3t"))
        }
    );
    assert!(!format!("{target:?}").contains("s3cr3t"));
    for half in [&key[..1], &key[1..]] {
        match Target::from_vars(false, vars(half)) {
            Err(Error::Config(e)) => assert!(e.field.starts_with("DERIBIT_CLIENT_"), "{e}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
