//! The Deribit adapter against the embedded `DeribitServer` on loopback:
//! authentication and tokens, platform heartbeats, subscriptions, re-auth and
//! restore after a reconnect, token refresh, error mapping, cancel on
//! disconnect, and secrets kept out of `Debug`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use zen_websocket::adapters::deribit::{
    DeribitClient, DeribitConfig, DeribitConfigBuilder, Notification,
};
use zen_websocket::testing::DeribitServer;
use zen_websocket::{Error, ErrorCategory, Event};

const T: Duration = Duration::from_secs(10);
const TICKER: &str = "ticker.BTC-PERPETUAL.100ms";
const ORDERS: &str = "user.orders.BTC-PERPETUAL.raw";

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
