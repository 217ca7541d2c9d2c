//! Cassettes: record a session against a MockServer, replay it with the
//! server gone, strictly or not, instantly or with the recorded timing.
//!
//! Each test has a watchdog and its own temporary directory (removed on
//! drop). No test changes the process environment: `ZEN_WS_CASSETTE` is
//! tested through the pure parser, and once in a child process.

mod support;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use zen_websocket::recorder::{
    self, Cassette, CassetteMode, CassetteSession, OpenMode, Recorder, RecorderConfig,
    ReplayOptions, ReplayServer, Timing, CASSETTE_ENV,
};
use zen_websocket::testing::{Disconnect, MockServer, Reply};
use zen_websocket::{Client, CloseInitiator, Config, ConfigBuilder, Error, Event, Message, Result};

const T: Duration = Duration::from_secs(10);

fn fast(url: &str) -> ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(20))
        .max_retry_delay(Duration::from_millis(100))
        .close_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(5))
}

/// A deterministic JSON-RPC-like server: every request is answered with its
/// method and params. The small reply delay keeps each answer's time stamp
/// clearly after its request's (see the report on outbound stamping).
fn live_server() -> MockServer {
    MockServer::builder()
        .reply_delay(Duration::from_millis(5))
        .handler(|m| {
            // Notifications (no id) get no answer, as in JSON-RPC.
            let Some(req) = m.json().filter(|r| !r["id"].is_null()) else {
                return Reply::None;
            };
            Reply::Text(
                json!({
                    "jsonrpc": "2.0",
                    "id": req["id"],
                    "result": {"method": req["method"], "echo": req["params"]},
                })
                .to_string(),
            )
        })
        .start()
        .unwrap()
}

/// The code under test: a few requests and a notification, then close.
fn scenario(session: &CassetteSession) -> Result<Vec<Value>> {
    let client = Client::connect(session.apply(fast(session.url())).build()?)?;
    let mut results = vec![client.request("public/get_time", json!({}))?];
    results.push(client.request("public/ticker", json!({"instrument_name": "BTC-PERPETUAL"}))?);
    client.notify("public/hello", json!({"client_name": "cassette-test"}))?;
    results.push(client.request("public/status", json!({"verbose": true}))?);
    client.close()?;
    Ok(results)
}

fn own_recorder() -> Recorder {
    Recorder::start(RecorderConfig::default()).unwrap()
}

/// Records `scenario` into a cassette at `path` against a fresh live server,
/// which is stopped again before this returns.
fn record(path: &Path, rec: &Recorder) -> Vec<Value> {
    let live = live_server();
    let session = Cassette::new(path)
        .mode(CassetteMode::Record)
        .recorder(rec)
        .start(&live.url())
        .unwrap();
    assert!(session.is_recording());
    assert_eq!(session.url(), live.url());
    let results = scenario(&session).unwrap();
    session.finish().unwrap();
    results
}

fn replay_session(path: &Path) -> CassetteSession {
    Cassette::new(path)
        .mode(CassetteMode::Replay)
        .start("wss://live.invalid/ws")
        .unwrap()
}

fn next_event_within(events: &zen_websocket::crossbeam_channel::Receiver<Event>) -> Event {
    events.recv_timeout(T).expect("an event in time")
}

#[test]
fn a_strict_replay_of_the_same_code_passes_with_the_server_stopped() {
    let _w = watchdog("strict_replay_passes", T * 3);
    let dir = TempDir::new("strict-pass");
    let path = dir.path("rpc.jsonl");
    let rec = own_recorder();
    let recorded = record(&path, &rec);
    assert_eq!(recorded[0]["method"], "public/get_time");
    assert_eq!(recorded[1]["echo"]["instrument_name"], "BTC-PERPETUAL");

    let meta = recorder::metadata(&path).unwrap();
    // 3 requests + 1 notification + the close out; 3 answers and the close reply in.
    assert_eq!((meta.outbound, meta.inbound), (5, 4), "{meta:?}");
    assert_eq!(dir.files(), ["rpc.jsonl"], "no temporary file is left");

    let session = replay_session(&path);
    assert_eq!(session.mode(), CassetteMode::Replay);
    assert!(
        session.url().starts_with("ws://127.0.0.1:"),
        "{}",
        session.url()
    );
    let server = session.replay_server().unwrap();
    assert_eq!((server.frames_to_play(), server.frames_expected()), (3, 5));
    let replayed = scenario(&session).unwrap();
    assert_eq!(replayed, recorded);
    assert_eq!(session.replay_server().unwrap().frames_played(), 3);
    session.finish().unwrap();
}

#[test]
fn a_client_that_sends_something_else_fails_with_a_mismatch_showing_both_frames() {
    let _w = watchdog("strict_mismatch", T * 3);
    let dir = TempDir::new("mismatch");
    let path = dir.path("rpc.jsonl");
    let rec = own_recorder();
    record(&path, &rec);

    let session = replay_session(&path);
    let client = Client::connect(fast(session.url()).build().unwrap()).unwrap();
    let events = client.events();
    let result = client.request("public/get_server_time", json!({}));
    assert!(
        result.is_err(),
        "the replay answered a request it never recorded"
    );
    // The server closes with 1008 (policy); the client does not reconnect.
    let (closed, _) = wait_for(&events, T, |e| matches!(e, Event::Closed { .. }));
    match closed {
        Event::Closed {
            code, initiator, ..
        } => assert_eq!((code, initiator), (1008, CloseInitiator::Peer)),
        _ => unreachable!(),
    }
    client.close().unwrap();

    let err = session.finish().unwrap_err();
    match &err {
        Error::ReplayMismatch {
            index,
            expected,
            received,
        } => {
            assert_eq!(*index, 1);
            assert!(expected.contains("public/get_time"), "{expected}");
            assert!(received.contains("public/get_server_time"), "{received}");
        }
        other => panic!("expected ReplayMismatch, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(
        shown.contains("outbound frame 1")
            && shown.contains("expected text {")
            && shown.contains("public/get_time")
            && shown.contains("received text {")
            && shown.contains("public/get_server_time"),
        "{shown}"
    );
}

#[test]
fn a_client_that_stops_early_fails_the_replay() {
    let _w = watchdog("stops_early", T * 3);
    let dir = TempDir::new("early");
    let path = dir.path("rpc.jsonl");
    let rec = own_recorder();
    record(&path, &rec);

    let session = replay_session(&path);
    let client = Client::connect(fast(session.url()).build().unwrap()).unwrap();
    client.request("public/get_time", json!({})).unwrap();
    client.close().unwrap(); // the ticker request never comes
    match session.finish() {
        Err(Error::ReplayMismatch {
            index,
            expected,
            received,
        }) => {
            assert_eq!(index, 2);
            assert!(expected.contains("public/ticker"), "{expected}");
            assert_eq!(received, "close 1000");
        }
        other => panic!("expected ReplayMismatch, got {other:?}"),
    }
}

#[test]
fn json_is_compared_as_values_and_ignored_fields_may_differ() {
    let _w = watchdog("json_compare", T * 2);
    let dir = TempDir::new("json");
    let path = dir.path("hand-written.jsonl");
    // A hand-written cassette without connection ids, as another tool might write.
    fs::write(
        &path,
        concat!(
            r#"{"ts":"2026-01-01T00:00:00Z","dir":"sys","type":"connected","url":"wss://x/ws"}"#,
            "\n",
            r#"{"ts":"2026-01-01T00:00:01Z","dir":"out","type":"text","data":"{\"op\":\"sub\",\"args\":[\"a\",\"b\"],\"ts\":1,\"auth\":\"[REDACTED]\"}"}"#,
            "\n",
            r#"{"ts":"2026-01-01T00:00:02Z","dir":"in","type":"text","data":"subscribed"}"#,
            "\n",
            r#"{"ts":"2026-01-01T00:00:03Z","dir":"in","type":"binary","data":"AAEC/w==","binary":true}"#,
            "\n",
        ),
    )
    .unwrap();
    let server = ReplayServer::start(
        &path,
        ReplayOptions::default().strict(true).ignore_field("ts"),
    )
    .unwrap();
    assert_eq!(server.conn(), None);
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    // Other key order, another ts, the real credential where the cassette has [REDACTED].
    client
        .send_text(r#"{"auth":"real-secret","ts":987654321,"args":["a","b"],"op":"sub"}"#)
        .unwrap();
    assert_eq!(next_text(&events, T), "subscribed");
    assert_eq!(
        next_message(&events, T),
        Message::Binary(vec![0, 1, 2, 255])
    );
    client.close().unwrap();
    server.verify().unwrap();
    assert_eq!(server.frames_played(), 2);
}

#[test]
fn a_timed_replay_keeps_the_recorded_gaps() {
    let _w = watchdog("timed_replay", T * 4);
    let dir = TempDir::new("timed");
    let path = dir.path("slow.jsonl");
    let rec = own_recorder();
    const REPLY_DELAY: Duration = Duration::from_millis(300);
    const PUSH_GAP: Duration = Duration::from_millis(200);

    // Record: a slow answer, then three pushes from the server 200 ms apart.
    let code = |session: &CassetteSession, live: Option<&MockServer>| -> Vec<Duration> {
        let client = Client::connect(session.apply(fast(session.url())).build().unwrap()).unwrap();
        let events = client.events();
        let sent = Instant::now();
        client.send_text("slow question").unwrap();
        assert_eq!(next_text(&events, T), "slow question");
        let mut gaps = vec![sent.elapsed()];
        client.send_text("start pushing").unwrap();
        assert_eq!(next_text(&events, T), "start pushing");
        if let Some(live) = live {
            live.set_reply_delay(Duration::ZERO);
            for i in 0..3 {
                thread::sleep(PUSH_GAP);
                live.inject_text(&format!("push {i}"));
            }
        }
        let mut last = Instant::now();
        for i in 0..3 {
            assert_eq!(next_text(&events, T), format!("push {i}"));
            gaps.push(last.elapsed());
            last = Instant::now();
        }
        client.close().unwrap();
        gaps
    };
    {
        let live = MockServer::builder()
            .reply_delay(REPLY_DELAY)
            .start()
            .unwrap();
        let session = Cassette::new(&path)
            .mode(CassetteMode::Record)
            .recorder(&rec)
            .start(&live.url())
            .unwrap();
        code(&session, Some(&live));
        session.finish().unwrap();
    }

    let session = Cassette::new(&path)
        .mode(CassetteMode::Replay)
        .replay_options(
            ReplayOptions::default()
                .strict(true)
                .timing(Timing::Recorded { speed: 1.0 }),
        )
        .start("ws://unused/")
        .unwrap();
    let gaps = code(&session, None);
    session.finish().unwrap();
    // Lower bounds only, with room for clock granularity.
    let slack = Duration::from_millis(30);
    assert!(gaps[0] + slack >= REPLY_DELAY, "{gaps:?}");
    // The first push is timed from the answer before it (its gap includes
    // the 200 ms the recording waited); the next ones from each other.
    for gap in &gaps[1..] {
        assert!(*gap + slack >= PUSH_GAP, "{gaps:?}");
    }

    // Non-strict, the same cassette plays its frames with the same gaps
    // without waiting for the client at all.
    let server = ReplayServer::start(
        &path,
        ReplayOptions::default().timing(Timing::Recorded { speed: 2.0 }),
    )
    .unwrap();
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    let events = client.events();
    let started = Instant::now();
    let mut texts = Vec::new();
    for _ in 0..5 {
        texts.push(next_text(&events, T));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        texts,
        [
            "slow question",
            "start pushing",
            "push 0",
            "push 1",
            "push 2"
        ]
    );
    // At speed 2 the recorded ~900 ms of gaps take at least ~450 ms.
    assert!(
        elapsed + slack >= (REPLY_DELAY + 3 * PUSH_GAP) / 2,
        "{elapsed:?}"
    );
    client.close().unwrap();
    server.verify().unwrap();
}

#[test]
fn a_recorded_server_close_is_replayed_as_a_close_with_its_code() {
    let _w = watchdog("server_close", T * 3);
    let dir = TempDir::new("close");
    let path = dir.path("close.jsonl");
    let rec = own_recorder();
    let code = |session: &CassetteSession| -> (u16, String) {
        let config = session
            .apply(fast(session.url()).reconnect_on_error(false))
            .build()
            .unwrap();
        let client = Client::connect(config).unwrap();
        let events = client.events();
        client.send_text("hello").unwrap();
        assert_eq!(next_text(&events, T), "hello");
        client.send_text("bye").unwrap();
        let (closed, _) = wait_for(&events, T, |e| matches!(e, Event::Closed { .. }));
        client.close().unwrap();
        match closed {
            Event::Closed {
                code,
                reason,
                initiator: CloseInitiator::Peer,
            } => (code, reason),
            other => panic!("expected a peer close, got {other:?}"),
        }
    };
    {
        let live = MockServer::start().unwrap();
        live.set_handler(|m| match m.as_text() {
            Some("bye") => Reply::Close(4001, "done for today".into()),
            _ => Reply::from(m.clone()),
        });
        let session = Cassette::new(&path)
            .mode(CassetteMode::Record)
            .recorder(&rec)
            .start(&live.url())
            .unwrap();
        assert_eq!(code(&session), (4001, "done for today".to_owned()));
        session.finish().unwrap();
    }
    let session = replay_session(&path);
    assert_eq!(code(&session), (4001, "done for today".to_owned()));
    assert_eq!(session.replay_server().unwrap().frames_played(), 2);
    session.finish().unwrap();
}

#[test]
fn after_a_recorded_going_away_the_reconnected_client_gets_the_rest() {
    // "one", the 1001 close, "two".
    replays_a_reconnection(Disconnect::GoingAway, 3);
}

#[test]
fn a_recorded_connection_loss_is_replayed_as_a_drop_and_the_client_reconnects() {
    // "one", "two": the loss itself is no frame.
    replays_a_reconnection(Disconnect::Abrupt, 2);
}

fn replays_a_reconnection(how: Disconnect, frames: u64) {
    let _w = watchdog("replays_a_reconnection", T * 3);
    let dir = TempDir::new("reconnect");
    let path = dir.path("reconnect.jsonl");
    let rec = own_recorder();
    let code = |session: &CassetteSession, live: Option<&MockServer>| {
        let client = Client::connect(session.apply(fast(session.url())).build().unwrap()).unwrap();
        let events = client.events();
        client.send_text("one").unwrap();
        assert_eq!(next_text(&events, T), "one");
        if let Some(live) = live {
            live.simulate_disconnect(how.clone());
        }
        let (ev, skipped) = wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
        assert!(matches!(ev, Event::Reconnected { attempt: 1 }), "{ev:?}");
        assert!(
            skipped
                .iter()
                .any(|e| matches!(e, Event::Disconnected { .. })),
            "{skipped:?}"
        );
        client.send_text("two").unwrap();
        assert_eq!(next_text(&events, T), "two");
        client.close().unwrap();
    };
    {
        let live = MockServer::builder()
            .reply_delay(Duration::from_millis(5))
            .start()
            .unwrap();
        let session = Cassette::new(&path)
            .mode(CassetteMode::Record)
            .recorder(&rec)
            .start(&live.url())
            .unwrap();
        code(&session, Some(&live));
        session.finish().unwrap();
    }
    let session = replay_session(&path);
    code(&session, None);
    assert_eq!(session.replay_server().unwrap().frames_played(), frames);
    session.finish().unwrap();
}

#[test]
fn only_the_chosen_connection_of_a_shared_file_is_played() {
    let _w = watchdog("choose_conn", T * 3);
    let dir = TempDir::new("conns");
    let path = dir.path("two.jsonl");
    let rec = own_recorder();
    let live = MockServer::start().unwrap();
    let file = rec.open(&path, OpenMode::Truncate).unwrap();
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let client =
            Client::connect(fast(&live.url()).record_file(&file).build().unwrap()).unwrap();
        client.send_text(name).unwrap();
        assert_eq!(next_text(&client.events(), T), name);
        client.close().unwrap();
        ids.push(client.id());
    }
    file.flush().unwrap();
    drop(live);

    for (name, id) in [
        ("first", None),
        ("first", Some(ids[0])),
        ("second", Some(ids[1])),
    ] {
        let mut options = ReplayOptions::default().strict(true);
        if let Some(id) = id {
            options = options.conn(id);
        }
        let server = ReplayServer::start(&path, options).unwrap();
        assert_eq!(
            server.conn(),
            Some(ids[if name == "first" { 0 } else { 1 }])
        );
        assert_eq!(server.frames_to_play(), 1);
        let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
        client.send_text(name).unwrap();
        assert_eq!(next_text(&client.events(), T), name);
        client.close().unwrap();
        server.verify().unwrap();
    }
    match ReplayServer::start(&path, ReplayOptions::default().conn(u64::MAX)) {
        Err(Error::Config(e)) => assert_eq!(e.field, "conn"),
        other => panic!("expected a config error naming conn, got {other:?}"),
    }
}

#[test]
fn the_cassette_mode_variable_is_parsed_by_a_pure_function() {
    let cases = [
        (None, CassetteMode::Auto),
        (Some(""), CassetteMode::Auto),
        (Some("record"), CassetteMode::Record),
        (Some("Replay"), CassetteMode::Replay),
        (Some(" AUTO "), CassetteMode::Auto),
    ];
    for (value, mode) in cases {
        assert_eq!(
            CassetteMode::from_env_value(value).unwrap(),
            mode,
            "{value:?}"
        );
    }
    for bad in ["recording", "off", "true", "replay!"] {
        match CassetteMode::from_env_value(Some(bad)) {
            Err(Error::Config(e)) => {
                assert_eq!(e.field, CASSETTE_ENV);
                assert!(e.rule.contains(bad), "{}", e.rule);
            }
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
}

/// Run by `the_environment_variable_picks_the_mode` in a child process with
/// the variable set; a no-op otherwise.
#[test]
fn env_probe_in_a_child_process() {
    let Ok(expected) = std::env::var("ZEN_WS_CASSETTE_TEST_EXPECT") else {
        return;
    };
    let got = Cassette::new("/nonexistent/cassette.jsonl").effective_mode();
    match expected.as_str() {
        "error" => assert!(matches!(got, Err(Error::Config(_))), "{got:?}"),
        mode => assert_eq!(got.unwrap().as_str(), mode),
    }
    // A mode set in code wins over the variable.
    let coded = Cassette::new("/nonexistent/cassette.jsonl").mode(CassetteMode::Replay);
    assert_eq!(coded.effective_mode().unwrap(), CassetteMode::Replay);
}

#[test]
fn the_environment_variable_picks_the_mode() {
    let _w = watchdog("env_child", T * 6);
    let exe = std::env::current_exe().unwrap();
    // Auto with a missing file resolves to Record.
    for (value, expected) in [
        ("REPLAY", "replay"),
        ("record", "record"),
        ("auto", "record"),
        ("nope", "error"),
    ] {
        let output = std::process::Command::new(&exe)
            .args([
                "--exact",
                "env_probe_in_a_child_process",
                "--test-threads",
                "1",
            ])
            .env(CASSETTE_ENV, value)
            .env("ZEN_WS_CASSETTE_TEST_EXPECT", expected)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{value}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn auto_mode_records_when_the_cassette_is_missing_and_replays_when_present() {
    let _w = watchdog("auto_mode", T * 3);
    let dir = TempDir::new("auto");
    let path = dir.path("nested").join("auto.jsonl");
    let rec = own_recorder();
    let cassette = Cassette::new(&path).mode(CassetteMode::Auto).recorder(&rec);

    let live = live_server();
    assert_eq!(cassette.effective_mode().unwrap(), CassetteMode::Record);
    let session = cassette.start(&live.url()).unwrap();
    assert_eq!(session.mode(), CassetteMode::Record);
    assert_eq!(session.url(), live.url());
    let recorded = scenario(&session).unwrap();
    assert!(!path.exists(), "nothing is visible before finish");
    session.finish().unwrap();
    assert!(path.is_file());
    drop(live);

    assert_eq!(cassette.effective_mode().unwrap(), CassetteMode::Replay);
    let session = cassette.start("ws://127.0.0.1:9/").unwrap();
    assert_eq!(session.mode(), CassetteMode::Replay);
    assert_ne!(session.url(), "ws://127.0.0.1:9/");
    assert_eq!(scenario(&session).unwrap(), recorded);
    session.finish().unwrap();
}

#[test]
fn an_abandoned_recording_leaves_no_cassette_and_keeps_an_old_one() {
    let _w = watchdog("abandoned", T * 3);
    let dir = TempDir::new("abandoned");
    let path = dir.path("abandoned.jsonl");
    let rec = own_recorder();
    let live = live_server();

    // A session dropped without finish (a test that failed half-way).
    {
        let session = Cassette::new(&path)
            .mode(CassetteMode::Record)
            .recorder(&rec)
            .start(&live.url())
            .unwrap();
        let client = Client::connect(session.apply(fast(session.url())).build().unwrap()).unwrap();
        client.request("public/get_time", json!({})).unwrap();
        drop(client);
        drop(session);
    }
    // Releases travel the writer's channel in order: after this flush the
    // abandoned temporary file is gone.
    rec.flush_all().unwrap();
    assert!(!path.exists());
    assert_eq!(dir.files(), Vec::<String>::new());

    // Re-recording over an existing cassette and abandoning it keeps the old one.
    let recorded = record(&path, &rec);
    let before = fs::read(&path).unwrap();
    {
        let session = Cassette::new(&path)
            .mode(CassetteMode::Record)
            .recorder(&rec)
            .start(&live.url())
            .unwrap();
        let client = Client::connect(session.apply(fast(session.url())).build().unwrap()).unwrap();
        client.request("public/other", json!({})).unwrap();
        client.close().unwrap();
    }
    rec.flush_all().unwrap();
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir.files(), ["abandoned.jsonl"]);
    drop(live);
    let session = replay_session(&path);
    assert_eq!(scenario(&session).unwrap(), recorded);
    session.finish().unwrap();
}

#[test]
fn replaying_a_missing_cassette_is_a_storage_error_naming_it() {
    let dir = TempDir::new("missing");
    let path = dir.path("never-recorded.jsonl");
    match Cassette::new(&path)
        .mode(CassetteMode::Replay)
        .start("ws://unused/")
    {
        Err(Error::Storage { path: named, .. }) => assert_eq!(named, path),
        other => panic!("expected Error::Storage, got {other:?}"),
    }
}

#[test]
fn a_stopped_replay_server_closes_its_client_and_joins() {
    let _w = watchdog("stop_joins", T * 2);
    let dir = TempDir::new("stop");
    let path = dir.path("idle.jsonl");
    fs::write(
        &path,
        concat!(
            r#"{"ts":"2026-01-01T00:00:00Z","dir":"in","type":"text","data":"first"}"#,
            "\n",
            r#"{"ts":"2026-01-01T01:00:00Z","dir":"in","type":"text","data":"an hour later"}"#,
            "\n",
        ),
    )
    .unwrap();
    let mut server = ReplayServer::start(
        &path,
        ReplayOptions::default().timing(Timing::Recorded { speed: 1.0 }),
    )
    .unwrap();
    let client = Client::connect(
        fast(&server.url())
            .reconnect_on_error(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    assert_eq!(next_text(&events, T), "first");
    // The server now waits an hour for the second frame: stop must not.
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < T, "{:?}", started.elapsed());
    loop {
        if next_event_within(&events).is_terminal() {
            break;
        }
    }
    assert_eq!(server.frames_played(), 1);
    server.verify().unwrap();
    server.stop(); // idempotent
}

#[test]
fn garbage_from_a_peer_does_not_break_the_replay_server() {
    use std::io::{Read, Write};
    let _w = watchdog("garbage_peer", T * 2);
    let dir = TempDir::new("garbage");
    let path = dir.path("one.jsonl");
    fs::write(
        &path,
        concat!(
            "not json at all\n",
            r#"{"ts":"2026-01-01T00:00:00Z","dir":"in","type":"text","data":"hello"}"#,
            "\n",
            r#"{"ts":"2026-01-01T00:00:01Z","dir":"in","type":"te"#,
        ),
    )
    .unwrap();
    let server = ReplayServer::start(&path, ReplayOptions::default()).unwrap();
    assert_eq!(server.frames_to_play(), 1, "bad lines are skipped");
    // Not a WebSocket client: an HTTP request that is no upgrade, then raw bytes.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff, 0x00, 0x13, 0x37, b'\n', b'\r'][..],
    ] {
        let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
        raw.set_read_timeout(Some(T)).unwrap();
        raw.write_all(junk).unwrap();
        let _ = raw.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
    }
    // The server is still there for a real client.
    let client = Client::connect(fast(&server.url()).build().unwrap()).unwrap();
    assert_eq!(next_text(&client.events(), T), "hello");
    client.close().unwrap();
    server.verify().unwrap();
}
