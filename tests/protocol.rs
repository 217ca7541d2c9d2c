//! JSON-RPC through the client against the testing server on loopback:
//! request correlation, timeouts and late responses, RPC errors, disconnects
//! with requests in flight, duplicate ids, batches, notifications,
//! subscription tracking and restore, latency statistics, and rate limiting.
//!
//! The server side is a `MockServer` whose handler speaks JSON-RPC ([`Rpc`]),
//! configurable per method.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use zen_websocket::protocol::jsonrpc::{Request, RequestId};
use zen_websocket::protocol::{Inbound, JsonRpc, Protocol, Session};
use zen_websocket::rate_limit::{RateLimit, RateLimitMode};
use zen_websocket::testing::{Disconnect, MockServer, Reply};
use zen_websocket::{
    Client, Config, ConfigBuilder, Error, ErrorCategory, Event, Message, Recovery, TimeoutKind,
};

/// The bound on any single wait in these tests.
const T: Duration = Duration::from_secs(10);
/// A refill so slow that it adds nothing measurable while a test runs
/// (one token every 11.5 days), for exact counts.
const NO_REFILL: f64 = 1e-6;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fast(url: &str) -> ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .retry_delay(ms(20))
        .max_retry_delay(ms(100))
        .close_timeout(ms(500))
        .request_timeout(T)
}

// ---- the JSON-RPC server side ------------------------------------------------

/// How the server answers one method.
#[derive(Debug, Clone)]
enum Answer {
    /// `result` is the request's params.
    Echo,
    /// `result` is this value.
    Result(Value),
    /// An error object.
    Error {
        code: i64,
        message: &'static str,
        data: Option<Value>,
    },
    /// `result` lists the requested `params.channels`, except the names that
    /// start with `refused.` (what a venue does with a channel it does not know).
    ConfirmChannels,
    /// No answer at all.
    Silent,
    /// The answer after a pause. The pause runs on the server's connection
    /// thread, so later messages on that connection wait behind it.
    Delayed(Duration, Box<Answer>),
}

/// A JSON-RPC handler for a `MockServer`: answers `{"id":..,"method":..,"params":..}`
/// with `{"jsonrpc":"2.0","id":..,"result":..}` (or `"error"`) as the method's
/// [`Answer`] says. Unlisted methods are echoed; `subscribe` and `unsubscribe`
/// confirm their channels. A batch is answered with one array, in reverse
/// order (so the client must correlate by id, not by position). Notifications
/// and text that is not JSON get no answer.
#[derive(Clone)]
struct Rpc {
    routes: Arc<Mutex<HashMap<String, Answer>>>,
}

impl Rpc {
    /// Start a server speaking JSON-RPC.
    fn start() -> (MockServer, Rpc) {
        let rpc = Rpc {
            routes: Arc::new(Mutex::new(HashMap::from([
                ("subscribe".to_string(), Answer::ConfirmChannels),
                ("unsubscribe".to_string(), Answer::ConfirmChannels),
            ]))),
        };
        let server = MockServer::start().expect("starting the testing server");
        rpc.install(&server);
        (server, rpc)
    }

    fn install(&self, server: &MockServer) {
        let rpc = self.clone();
        server.set_handler(move |m| rpc.reply(m));
    }

    /// Answer `method` this way from now on.
    fn on(&self, method: &str, answer: Answer) {
        self.routes
            .lock()
            .unwrap()
            .insert(method.to_string(), answer);
    }

    fn reply(&self, m: &Message) -> Reply {
        match m.json() {
            Some(Value::Array(calls)) => {
                let mut answers: Vec<Value> = calls.iter().filter_map(|c| self.answer(c)).collect();
                answers.reverse();
                if answers.is_empty() {
                    Reply::None
                } else {
                    Reply::Text(Value::Array(answers).to_string())
                }
            }
            Some(call) => match self.answer(&call) {
                Some(a) => Reply::Text(a.to_string()),
                None => Reply::None,
            },
            None => Reply::None,
        }
    }

    /// The response object for one call, or `None` for no answer.
    fn answer(&self, call: &Value) -> Option<Value> {
        // A notification (no id) is never answered.
        let id = call.get("id")?.clone();
        let method = call["method"].as_str().unwrap_or_default();
        let answer = self
            .routes
            .lock()
            .unwrap()
            .get(method)
            .cloned()
            .unwrap_or(Answer::Echo);
        respond(&answer, id, call)
    }
}

fn respond(answer: &Answer, id: Value, call: &Value) -> Option<Value> {
    let params = call.get("params").cloned().unwrap_or(Value::Null);
    match answer {
        Answer::Echo => Some(ok(id, params)),
        Answer::Result(v) => Some(ok(id, v.clone())),
        Answer::Error {
            code,
            message,
            data,
        } => {
            let mut error = json!({"code": code, "message": message});
            if let Some(d) = data {
                error["data"] = d.clone();
            }
            Some(json!({"jsonrpc": "2.0", "id": id, "error": error}))
        }
        Answer::ConfirmChannels => {
            let accepted: Vec<Value> = params["channels"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .filter(|c| !c.as_str().unwrap_or("").starts_with("refused."))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            Some(ok(id, Value::Array(accepted)))
        }
        Answer::Silent => None,
        Answer::Delayed(pause, then) => {
            thread::sleep(*pause);
            respond(then, id, call)
        }
    }
}

fn ok(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A subscription notification of the default dialect.
fn notification(channel: &str, data: Value) -> String {
    json!({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}})
        .to_string()
}

/// Everything the server received, as JSON (`Null` for what is not JSON).
fn received_json(server: &MockServer) -> Vec<Value> {
    server
        .received()
        .iter()
        .map(|m| m.json().unwrap_or(Value::Null))
        .collect()
}

/// The methods of what the server received, in order.
fn received_methods(server: &MockServer) -> Vec<String> {
    received_json(server)
        .iter()
        .map(|v| {
            v["method"]
                .as_str()
                .unwrap_or("<not a request>")
                .to_string()
        })
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Close the client and wait until the server has read its close frame: every
/// data message the client wrote before it has been received by then (one TCP
/// stream, in order), so `received_count` is final.
fn close_and_settle(client: &Client, server: &MockServer) {
    client.close().expect("closing the client");
    let deadline = Instant::now() + T;
    while server.close_frames().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the server never saw the close frame"
        );
        // The testing server has no wait for close frames; poll within the deadline.
        thread::sleep(ms(5));
    }
}

// ---- requests -----------------------------------------------------------------

#[test]
fn many_concurrent_requests_each_get_their_own_response() {
    let _w = watchdog("correlation", Duration::from_secs(120));
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    const THREADS: usize = 16;
    const PER_THREAD: usize = 200;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            thread::Builder::new()
                .name(format!("caller-{t}"))
                .spawn(move || {
                    for i in 0..PER_THREAD {
                        let params = json!({"thread": t, "i": i, "tag": format!("{t}/{i}")});
                        let result = client
                            .request_with_timeout("echo", params.clone(), Duration::from_secs(30))
                            .unwrap_or_else(|e| panic!("request {t}/{i} failed: {e}"));
                        assert_eq!(result, params, "request {t}/{i} got someone else's answer");
                    }
                })
                .unwrap()
        })
        .collect();
    for w in workers {
        w.join().expect("a caller thread failed");
    }
    let stats = client.stats();
    assert_eq!(stats.pending_requests, 0);
    assert_eq!(stats.request_latency.count, 1024, "the ring is full");
    assert_eq!(server.received_count(), THREADS * PER_THREAD);
    // Every request carried its own id.
    let mut ids: Vec<u64> = received_json(&server)
        .iter()
        .map(|v| v["id"].as_u64().expect("a numeric id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), THREADS * PER_THREAD);
}

#[test]
fn a_timed_out_request_frees_its_slot_and_its_answer_comes_late() {
    let _w = watchdog("timeout", T * 2);
    let (server, rpc) = Rpc::start();
    // The answer comes ten times later than the timeout: a margin for a busy machine.
    rpc.on("slow", Answer::Delayed(ms(1500), Box::new(Answer::Echo)));
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();

    let started = Instant::now();
    let err = client
        .request_with_timeout("slow", json!({"n": 7}), ms(150))
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Request)),
        "{err:?}"
    );
    assert_eq!(err.category(), ErrorCategory::Timeout);
    assert_eq!(err.recovery(), Recovery::Retry);
    assert!(took >= ms(150), "returned before its timeout: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "overran its timeout: {took:?}"
    );
    assert_eq!(client.stats().pending_requests, 0, "the slot is freed");

    let sent = server
        .assert_message_sent(json!({"method": "slow"}), T)
        .unwrap();
    let id = RequestId::from_value(&sent.json().unwrap()["id"]).expect("an id");
    let (ev, _) = wait_for(&events, T, |e| matches!(e, Event::LateResponse(_)));
    let Event::LateResponse(late) = ev else {
        unreachable!()
    };
    assert_eq!(late.id, id);
    assert_eq!(late.outcome, Ok(json!({"n": 7})));

    // The client goes on working, and the late answer was not given to anyone else.
    assert_eq!(
        client.request("echo", json!("next")).unwrap(),
        json!("next")
    );
    assert_eq!(client.stats().pending_requests, 0);
}

#[test]
fn a_json_rpc_error_becomes_an_rpc_error_with_code_message_and_data() {
    let _w = watchdog("rpc_error", T);
    let (server, rpc) = Rpc::start();
    rpc.on(
        "private/buy",
        Answer::Error {
            code: 10009,
            message: "not_enough_funds",
            data: Some(json!({"reason": "margin", "needed": 42})),
        },
    );
    rpc.on(
        "public/nothing",
        Answer::Error {
            code: -32601,
            message: "Method not found",
            data: None,
        },
    );
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    match client.request("private/buy", json!({"amount": 10})) {
        Err(Error::Rpc {
            code,
            message,
            data,
        }) => {
            assert_eq!(code, 10009);
            assert_eq!(message, "not_enough_funds");
            assert_eq!(data, Some(json!({"reason": "margin", "needed": 42})));
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    let err = client.request("public/nothing", Value::Null).unwrap_err();
    assert!(
        matches!(&err, Error::Rpc { code: -32601, message, data: None } if message == "Method not found"),
        "{err:?}"
    );
    assert_eq!(err.category(), ErrorCategory::Server);
    assert_eq!(err.recovery(), Recovery::Stop);
    assert!(
        err.explain().contains("Method not found"),
        "{}",
        err.explain()
    );
    assert_eq!(client.stats().pending_requests, 0);
}

#[test]
fn a_disconnect_fails_every_pending_request_at_once_and_resends_nothing() {
    let _w = watchdog("disconnect_pending", T * 3);
    let (server, rpc) = Rpc::start();
    rpc.on("hang", Answer::Silent);
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    const WAITERS: usize = 5;
    let request_timeout = Duration::from_secs(20);
    let waiters: Vec<_> = (0..WAITERS)
        .map(|k| {
            let client = client.clone();
            thread::spawn(move || {
                let r = client.request_with_timeout("hang", json!({"k": k}), request_timeout);
                (r, Instant::now())
            })
        })
        .collect();
    server.wait_for_received(WAITERS, T).unwrap();
    assert_eq!(client.stats().pending_requests, WAITERS);

    let cut = Instant::now();
    server.simulate_disconnect(Disconnect::Abrupt);
    for w in waiters {
        let (result, at) = w.join().unwrap();
        assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
        let after = at.saturating_duration_since(cut);
        assert!(
            after < Duration::from_secs(5),
            "took {after:?} to fail (its timeout is {request_timeout:?})"
        );
    }
    assert_eq!(client.stats().pending_requests, 0);
    assert_eq!(Error::Disconnected.recovery(), Recovery::Retry);

    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    assert_eq!(
        client.request("echo", json!("after")).unwrap(),
        json!("after")
    );
    // The five requests once, then the one made after the reconnect; nothing re-sent.
    let methods = received_methods(&server);
    assert_eq!(methods.len(), WAITERS + 1, "{methods:?}");
    assert!(
        methods[..WAITERS].iter().all(|m| m == "hang"),
        "{methods:?}"
    );
    assert_eq!(methods[WAITERS], "echo");
}

#[test]
fn a_duplicate_id_is_refused_before_anything_is_sent() {
    let _w = watchdog("duplicate_id", T * 2);
    let (server, rpc) = Rpc::start();
    rpc.on("hang", Answer::Silent);
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let first = {
        let client = client.clone();
        thread::spawn(move || client.request_with_id(RequestId::from("dup"), "hang", json!(1), T))
    };
    server.assert_message_sent(json!({"id": "dup"}), T).unwrap();

    let err = client
        .request_with_id(RequestId::from("dup"), "hang", json!(2), T)
        .unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateRequestId(id) if id == "dup"),
        "{err:?}"
    );
    assert_eq!(err.recovery(), Recovery::Stop);
    assert_eq!(
        client.stats().pending_requests,
        1,
        "the first is still waiting"
    );

    // A later request is written behind anything the refused one could have
    // written, so once it is answered the server's count is final.
    assert_eq!(
        client.request("echo", json!("marker")).unwrap(),
        json!("marker")
    );
    let got = received_json(&server);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["params"], json!(1));
    assert_eq!(got[1]["params"], json!("marker"));

    // The first request is still answered normally.
    server.inject_text(&json!({"jsonrpc": "2.0", "id": "dup", "result": "released"}).to_string());
    assert_eq!(first.join().unwrap().unwrap(), json!("released"));
    assert_eq!(client.stats().pending_requests, 0);
}

#[test]
fn a_batch_goes_in_one_frame_and_results_come_back_in_call_order() {
    let _w = watchdog("batch", T);
    let (server, rpc) = Rpc::start();
    rpc.on(
        "fail",
        Answer::Error {
            code: -32602,
            message: "Invalid params",
            data: None,
        },
    );
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let results = client
        .batch_request(
            &[
                ("echo", json!({"a": 1})),
                ("fail", json!({"bad": true})),
                ("echo", json!({"b": 2})),
                ("get", json!([3])),
            ],
            T,
        )
        .unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap(), &json!({"a": 1}));
    assert!(
        matches!(&results[1], Err(Error::Rpc { code: -32602, message, .. }) if message == "Invalid params"),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap(), &json!({"b": 2}));
    assert_eq!(results[3].as_ref().unwrap(), &json!([3]));

    // One frame: a JSON array of the four calls, each with its own id.
    let got = received_json(&server);
    assert_eq!(got.len(), 1, "{got:?}");
    let calls = got[0].as_array().expect("a batch array");
    assert_eq!(calls.len(), 4);
    let methods: Vec<&str> = calls
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["echo", "fail", "echo", "get"]);
    let mut ids: Vec<u64> = calls.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert_eq!(client.stats().pending_requests, 0);
}

#[test]
fn notify_sends_a_notification_without_an_id() {
    let _w = watchdog("notify", T);
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    client
        .notify("client/log", json!({"level": "info", "text": "hi"}))
        .unwrap();
    let sent = server
        .assert_message_sent(json!({"method": "client/log"}), T)
        .unwrap()
        .json()
        .expect("JSON");
    assert_eq!(
        sent,
        json!({"jsonrpc": "2.0", "method": "client/log", "params": {"level": "info", "text": "hi"}})
    );
    assert!(sent.get("id").is_none(), "{sent}");
    assert_eq!(
        client.stats().pending_requests,
        0,
        "nothing waits for an answer"
    );
}

#[test]
fn request_latency_has_a_count_and_percentiles_after_requests() {
    let _w = watchdog("latency", T);
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    assert_eq!(client.stats().request_latency.count, 0);
    assert_eq!(client.stats().request_latency.p50, None);
    let started = Instant::now();
    for i in 0..50 {
        client.request("echo", json!(i)).unwrap();
    }
    let wall = started.elapsed();
    let lat = client.stats().request_latency;
    assert_eq!(lat.count, 50);
    let (p50, p99) = (lat.p50.expect("a p50"), lat.p99.expect("a p99"));
    assert!(p50 > Duration::ZERO);
    assert!(p50 <= p99, "{lat:?}");
    // No single round trip can take longer than all fifty together.
    assert!(p99 <= wall, "{lat:?} vs {wall:?} for all");
}

// ---- subscriptions ----------------------------------------------------------

#[test]
fn subscriptions_are_tracked_only_once_confirmed_and_untracked_on_a_confirmed_unsubscribe() {
    let _w = watchdog("tracking", T * 2);
    let (server, rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();

    // Asked for but not confirmed yet: not tracked.
    rpc.on("subscribe", Answer::Silent);
    let pending = {
        let client = client.clone();
        thread::spawn(move || client.subscribe(&["trades.BTC", "book.BTC"]))
    };
    let asked = server
        .assert_message_sent(json!({"method": "subscribe"}), T)
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        asked["params"],
        json!({"channels": ["trades.BTC", "book.BTC"]})
    );
    assert!(
        client.subscriptions().is_empty(),
        "{:?}",
        client.subscriptions()
    );
    server.inject_text(&ok(asked["id"].clone(), json!(["trades.BTC", "book.BTC"])).to_string());
    assert_eq!(
        pending.join().unwrap().unwrap(),
        strings(&["trades.BTC", "book.BTC"])
    );
    assert_eq!(client.subscriptions(), strings(&["trades.BTC", "book.BTC"]));

    // The server's list wins: a channel it did not confirm is not tracked.
    rpc.on("subscribe", Answer::ConfirmChannels);
    assert_eq!(
        client.subscribe(&["ticker.ETH", "refused.X"]).unwrap(),
        strings(&["ticker.ETH"])
    );
    assert_eq!(
        client.subscriptions(),
        strings(&["trades.BTC", "book.BTC", "ticker.ETH"])
    );

    // An error response tracks nothing.
    rpc.on(
        "subscribe",
        Answer::Error {
            code: -32000,
            message: "unknown channel",
            data: None,
        },
    );
    let err = client.subscribe(&["nonsense"]).unwrap_err();
    assert!(matches!(err, Error::Rpc { code: -32000, .. }), "{err:?}");
    assert_eq!(
        client.subscriptions(),
        strings(&["trades.BTC", "book.BTC", "ticker.ETH"])
    );

    // An unsubscribe untracks only once confirmed.
    rpc.on("unsubscribe", Answer::Silent);
    let pending = {
        let client = client.clone();
        thread::spawn(move || client.unsubscribe(&["book.BTC"]))
    };
    let asked = server
        .assert_message_sent(json!({"method": "unsubscribe"}), T)
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(asked["params"], json!({"channels": ["book.BTC"]}));
    assert!(client.subscriptions().contains(&"book.BTC".to_string()));
    server.inject_text(&ok(asked["id"].clone(), json!(["book.BTC"])).to_string());
    pending.join().unwrap().unwrap();
    assert_eq!(
        client.subscriptions(),
        strings(&["trades.BTC", "ticker.ETH"])
    );

    // A refused unsubscribe keeps the channel.
    rpc.on(
        "unsubscribe",
        Answer::Error {
            code: -32000,
            message: "not now",
            data: None,
        },
    );
    assert!(client.unsubscribe(&["trades.BTC"]).is_err());
    assert_eq!(
        client.subscriptions(),
        strings(&["trades.BTC", "ticker.ETH"])
    );
}

#[test]
fn subscription_notifications_arrive_as_subscription_events() {
    let _w = watchdog("notifications", T);
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    server.wait_for_connections(1, T).unwrap();

    // Before any request or subscription the client does not parse inbound
    // text at all (documented: a plain stream pays nothing for JSON-RPC).
    let early = notification("trades.BTC", json!({"price": 1}));
    server.inject_text(&early);
    assert_eq!(next_text(&events, T), early);

    client.subscribe(&["trades.BTC"]).unwrap();
    server.inject_text(&notification("trades.BTC", json!({"price": 2})));
    server.inject_text("not json");
    server.inject_text(&notification("trades.BTC", json!([3, 4])));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (ev, _) = wait_for(&events, T, |e| {
            matches!(e, Event::Subscription { .. } | Event::Message(_))
        });
        seen.push(ev);
    }
    assert!(
        matches!(&seen[0], Event::Subscription { channel, data }
            if channel == "trades.BTC" && *data == json!({"price": 2})),
        "{:?}",
        seen[0]
    );
    assert!(
        matches!(&seen[1], Event::Message(Message::Text(t)) if t == "not json"),
        "{:?}",
        seen[1]
    );
    assert!(
        matches!(&seen[2], Event::Subscription { channel, data }
            if channel == "trades.BTC" && *data == json!([3, 4])),
        "{:?}",
        seen[2]
    );
}

/// Subscribe to three channels in two calls, disconnect `how`, and check the
/// restore: one subscribe message with every channel, `SubscriptionsRestored`
/// after `Reconnected`, and notifications flowing again.
fn restores_after(how: Disconnect, builder: impl FnOnce(ConfigBuilder) -> ConfigBuilder) {
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(builder(fast(&server.url())).build().unwrap()).unwrap();
    let events = client.events();
    client.subscribe(&["a", "b"]).unwrap();
    client.subscribe(&["c"]).unwrap();
    server.clear_received();

    let silent = how == Disconnect::Silent;
    server.simulate_disconnect(how);
    let (ev, skipped) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )
    });
    match ev {
        Event::SubscriptionsRestored { channels } => {
            assert_eq!(channels, strings(&["a", "b", "c"]))
        }
        other => panic!("expected SubscriptionsRestored, got {other:?}"),
    }
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnected { .. })),
        "Reconnected comes first: {skipped:?}"
    );
    if silent {
        let cause = skipped
            .iter()
            .find_map(|e| match e {
                Event::Disconnected { cause } => Some(cause.clone()),
                _ => None,
            })
            .expect("a Disconnected event");
        assert!(
            matches!(*cause, Error::Timeout(TimeoutKind::Pong)),
            "{cause:?}"
        );
    }
    // One restore message with every tracked channel, in order.
    let got = received_json(&server);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["method"], "subscribe");
    assert_eq!(got[0]["params"], json!({"channels": ["a", "b", "c"]}));
    assert_eq!(client.subscriptions(), strings(&["a", "b", "c"]));
    assert_eq!(client.stats().reconnects, 1);

    server.inject_text(&notification("b", json!({"after": "restore"})));
    let (ev, _) = wait_for(&events, T, |e| matches!(e, Event::Subscription { .. }));
    assert!(
        matches!(&ev, Event::Subscription { channel, data } if channel == "b" && *data == json!({"after": "restore"})),
        "{ev:?}"
    );
}

#[test]
fn subscriptions_are_restored_in_one_message_after_a_going_away_close() {
    let _w = watchdog("restore_going_away", T * 2);
    restores_after(Disconnect::GoingAway, |b| b);
}

#[test]
fn subscriptions_are_restored_in_one_message_after_a_normal_close() {
    let _w = watchdog("restore_normal", T * 2);
    restores_after(Disconnect::Normal, |b| b);
}

#[test]
fn subscriptions_are_restored_in_one_message_after_an_abrupt_drop() {
    let _w = watchdog("restore_abrupt", T * 2);
    restores_after(Disconnect::Abrupt, |b| b);
}

#[test]
fn subscriptions_are_restored_in_one_message_after_a_dead_peer() {
    let _w = watchdog("restore_dead_peer", T * 2);
    restores_after(Disconnect::Silent, |b| {
        b.heartbeat_interval(ms(200)).heartbeat_timeout(ms(500))
    });
}

/// The default dialect plus a `login` request on every (re)connect.
#[derive(Debug)]
struct LoginFirst {
    inner: JsonRpc,
}

impl Protocol for LoginFirst {
    fn subscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        self.inner.subscribe_request(channels, id)
    }
    fn unsubscribe_request(&self, channels: &[String], id: &RequestId) -> Request {
        self.inner.unsubscribe_request(channels, id)
    }
    fn confirmed_channels(&self, result: &Value) -> Option<Vec<String>> {
        self.inner.confirmed_channels(result)
    }
    fn classify(&self, text: &str, parsed: Option<&Value>) -> Inbound {
        self.inner.classify(text, parsed)
    }
    fn on_connect(&self, session: &mut dyn Session) -> zen_websocket::Result<()> {
        match session.request("login", json!({"user": "tester"}))? {
            Value::Bool(true) => Ok(()),
            other => Err(Error::Auth {
                detail: format!("login answered {other}"),
            }),
        }
    }
}

#[test]
fn the_restore_follows_the_login_of_a_custom_protocol() {
    let _w = watchdog("restore_after_login", T * 2);
    let (server, rpc) = Rpc::start();
    rpc.on("login", Answer::Result(json!(true)));
    let client = Client::connect(
        fast(&server.url())
            .protocol(LoginFirst {
                inner: JsonRpc::new(),
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    assert_eq!(received_methods(&server), ["login"], "login on connect");
    client.subscribe(&["x", "y"]).unwrap();
    server.clear_received();

    server.simulate_disconnect(Disconnect::Abrupt);
    let (ev, skipped) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )
    });
    assert!(
        matches!(&ev, Event::SubscriptionsRestored { channels } if *channels == strings(&["x", "y"])),
        "{ev:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnected { .. })),
        "{skipped:?}"
    );
    let got = received_json(&server);
    let methods: Vec<&str> = got.iter().map(|v| v["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["login", "subscribe"], "{got:?}");
    assert_eq!(got[1]["params"], json!({"channels": ["x", "y"]}));
}

#[test]
fn without_restore_subscriptions_nothing_is_restored() {
    let _w = watchdog("no_restore", T * 2);
    let (server, _rpc) = Rpc::start();
    let client = Client::connect(
        fast(&server.url())
            .restore_subscriptions(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    client.subscribe(&["a"]).unwrap();
    server.clear_received();

    server.simulate_disconnect(Disconnect::GoingAway);
    let (_, skipped) = wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    // A restore would have been sent (and its event queued) before Reconnected.
    assert_eq!(
        client.request("echo", json!("marker")).unwrap(),
        json!("marker")
    );
    assert_eq!(received_methods(&server), ["echo"]);
    let later: Vec<Event> = events.try_iter().collect();
    assert!(
        !skipped.iter().chain(later.iter()).any(|e| matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )),
        "{skipped:?} {later:?}"
    );
}

#[test]
fn a_failed_restore_is_reported_and_the_channels_stay_tracked() {
    let _w = watchdog("restore_failed", T * 3);
    let (server, rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    client.subscribe(&["a", "b"]).unwrap();

    rpc.on(
        "subscribe",
        Answer::Error {
            code: -32000,
            message: "maintenance",
            data: None,
        },
    );
    server.clear_received();
    server.simulate_disconnect(Disconnect::Abrupt);
    let (ev, skipped) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )
    });
    match ev {
        Event::RestoreFailed { channels, error } => {
            assert_eq!(channels, strings(&["a", "b"]));
            assert!(
                matches!(&*error, Error::Rpc { code: -32000, message, .. } if message == "maintenance"),
                "{error:?}"
            );
        }
        other => panic!("expected RestoreFailed, got {other:?}"),
    }
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnected { .. })),
        "{skipped:?}"
    );
    assert_eq!(client.subscriptions(), strings(&["a", "b"]));
    assert_eq!(received_methods(&server), ["subscribe"]);

    // They are tried again on the next reconnect.
    rpc.on("subscribe", Answer::ConfirmChannels);
    server.simulate_disconnect(Disconnect::Abrupt);
    let (ev, _) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )
    });
    assert!(
        matches!(&ev, Event::SubscriptionsRestored { channels } if *channels == strings(&["a", "b"])),
        "{ev:?}"
    );
}

#[test]
fn a_partly_confirmed_restore_reports_the_channels_confirmed_again() {
    let _w = watchdog("restore_partial", T * 2);
    let (server, rpc) = Rpc::start();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    client.subscribe(&["a", "b"]).unwrap();
    // After the reconnect the server only knows "a" any more.
    rpc.on("subscribe", Answer::Result(json!(["a"])));
    server.simulate_disconnect(Disconnect::Abrupt);
    let (ev, _) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::RestoreFailed { .. }
        )
    });
    // Event::SubscriptionsRestored is documented as "the channels confirmed again".
    assert!(
        matches!(&ev, Event::SubscriptionsRestored { channels } if *channels == strings(&["a"])),
        "{ev:?}"
    );
    // By design both stay tracked, for the next reconnect.
    assert_eq!(client.subscriptions(), strings(&["a", "b"]));
}

/// Rounds of: `method` is asked for, the server confirms it and closes the
/// connection at once; after `call` returns `Ok`, the tracked channels must be
/// `expected`. Returns the rounds where they were not.
fn confirm_then_close(
    method: &'static str,
    setup: impl Fn(&Client),
    call: impl Fn(&Client) -> zen_websocket::Result<()>,
    expected: &[&str],
) -> Vec<usize> {
    const ROUNDS: usize = 20;
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let (server, rpc) = Rpc::start();
        let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
        setup(&client);
        rpc.on(method, Answer::Silent);
        let server = Arc::new(server);
        // The server confirms, then closes at once: the confirmation and the
        // close frame leave back to back (the testing server runs queued
        // commands in order), so the client often reads both in one burst.
        let closer = {
            let server = server.clone();
            let rpc = rpc.clone();
            thread::spawn(move || {
                let asked = server
                    .assert_message_sent(json!({ "method": method }), T)
                    .unwrap()
                    .json()
                    .unwrap();
                // Whatever comes after the reconnect is answered normally.
                rpc.on(method, Answer::ConfirmChannels);
                let confirm = ok(asked["id"].clone(), asked["params"]["channels"].clone());
                server.inject_text(&confirm.to_string());
                server.simulate_disconnect(Disconnect::Normal);
            })
        };
        let result = call(&client);
        closer.join().unwrap();
        // The confirmation is read before the close frame, so the call succeeds...
        result.unwrap_or_else(|e| panic!("round {round}: {e}"));
        // ...and what the server confirmed must be what is tracked (it is
        // what the next reconnect restores).
        if client.subscriptions() != strings(expected) {
            lost.push(round);
        }
        client.close().unwrap();
    }
    lost
}

#[test]
fn a_subscription_confirmed_just_before_a_disconnect_is_tracked() {
    let _w = watchdog("subscribe_then_drop", Duration::from_secs(120));
    let lost = confirm_then_close(
        "subscribe",
        |_| {},
        |c| c.subscribe(&["race"]).map(|_| ()),
        &["race"],
    );
    assert!(
        lost.is_empty(),
        "confirmed but untracked in rounds {lost:?} of 20"
    );
}

#[test]
fn an_unsubscribe_confirmed_just_before_a_disconnect_is_untracked() {
    let _w = watchdog("unsubscribe_then_drop", Duration::from_secs(120));
    let lost = confirm_then_close(
        "unsubscribe",
        |c| {
            c.subscribe(&["keep", "drop"]).unwrap();
        },
        |c| c.unsubscribe(&["drop"]),
        &["keep"],
    );
    assert!(
        lost.is_empty(),
        "unsubscribed but still tracked in rounds {lost:?} of 20"
    );
}

// ---- rate limiting ------------------------------------------------------------

#[test]
fn reject_mode_refuses_at_once_and_sends_nothing_for_the_refused_message() {
    let _w = watchdog("rate_reject", T * 2);
    let (server, _rpc) = Rpc::start();
    // Three at once, then one every 100 s.
    let limit = RateLimit::new(3.0, 0.01).mode(RateLimitMode::Reject);
    let client = Client::connect(fast(&server.url()).rate_limit(limit).build().unwrap()).unwrap();
    for i in 0..3 {
        assert_eq!(client.request("echo", json!(i)).unwrap(), json!(i));
    }
    let started = Instant::now();
    let err = client.request("echo", json!(3)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejected at once"
    );
    match err {
        Error::RateLimited { retry_after } => {
            // About one token's refill time (100 s), less what refilled meanwhile.
            assert!(
                retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(100),
                "{retry_after:?}"
            );
            assert_eq!(err.recovery(), Recovery::RetryAfter(retry_after));
            assert_eq!(err.category(), ErrorCategory::RateLimited);
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(matches!(
        client.send_text("plain"),
        Err(Error::RateLimited { .. })
    ));
    assert_eq!(client.stats().pending_requests, 0);
    close_and_settle(&client, &server);
    assert_eq!(server.received_count(), 3, "{:?}", received_json(&server));
}

#[test]
fn block_mode_waits_for_tokens_and_sends_everything() {
    let _w = watchdog("rate_block", T * 2);
    let (server, _rpc) = Rpc::start();
    // Two at once, then one every 100 ms.
    let limit = RateLimit::new(2.0, 10.0).mode(RateLimitMode::Block {
        max_wait: Duration::from_secs(2),
    });
    let client = Client::connect(fast(&server.url()).rate_limit(limit).build().unwrap()).unwrap();
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(client.request("echo", json!(i)).unwrap(), json!(i));
    }
    let took = started.elapsed();
    // The last three each wait for a token (100 ms each); only a lower bound
    // holds on a busy machine. 10 ms of slack for the float arithmetic.
    assert!(took >= ms(290), "five sends took only {took:?}");
    assert_eq!(server.received_count(), 5);
}

#[test]
fn method_costs_apply_to_requests() {
    let _w = watchdog("rate_costs", T * 2);
    let (server, _rpc) = Rpc::start();
    let costs = HashMap::from([
        ("private/buy".to_string(), 6.0),
        ("public/free".to_string(), 0.0),
    ]);
    let limit = RateLimit::new(10.0, NO_REFILL).method_costs(costs, 1.0);
    let client = Client::connect(fast(&server.url()).rate_limit(limit).build().unwrap()).unwrap();
    client.request("private/buy", json!(1)).unwrap(); // 10 - 6 = 4 left
    assert!(matches!(
        client.request("private/buy", json!(2)),
        Err(Error::RateLimited { .. })
    ));
    for i in 0..4 {
        client.request("public/get", json!(i)).unwrap(); // 1 each
    }
    assert!(matches!(
        client.request("public/get", json!(4)),
        Err(Error::RateLimited { .. })
    ));
    // A cost of zero is never limited.
    client.request("public/free", json!(0)).unwrap();
    close_and_settle(&client, &server);
    assert_eq!(
        received_methods(&server),
        [
            "private/buy",
            "public/get",
            "public/get",
            "public/get",
            "public/get",
            "public/free"
        ]
    );
}

#[test]
fn method_costs_apply_to_each_request_of_a_batch() {
    let _w = watchdog("rate_batch_costs", T * 2);
    let (server, _rpc) = Rpc::start();
    let costs = HashMap::from([("private/buy".to_string(), 4.0)]);
    let limit = RateLimit::new(10.0, NO_REFILL).method_costs(costs, 1.0);
    let client = Client::connect(fast(&server.url()).rate_limit(limit).build().unwrap()).unwrap();
    // Two buys in one batch are two buys: 8 of the 10 tokens.
    let results = client
        .batch_request(&[("private/buy", json!(1)), ("private/buy", json!(2))], T)
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let third = client.request("private/buy", json!(3));
    assert!(
        matches!(third, Err(Error::RateLimited { .. })),
        "a third buy fits in what is left only if the batch was undercharged: {third:?}"
    );
}

#[test]
fn many_threads_never_exceed_the_capacity_of_one_limited_client() {
    let _w = watchdog("rate_threads", T * 2);
    let server = MockServer::start().unwrap();
    let limit = RateLimit::new(10.0, NO_REFILL).mode(RateLimitMode::Reject);
    let client = Client::connect(fast(&server.url()).rate_limit(limit).build().unwrap()).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut sent = 0;
                for i in 0..10 {
                    match client.send_text(format!("t{t}-{i}")) {
                        Ok(()) => sent += 1,
                        Err(Error::RateLimited { .. }) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                sent
            })
        })
        .collect();
    let sent: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(sent, 10);
    close_and_settle(&client, &server);
    assert_eq!(server.received_count(), 10);
}
