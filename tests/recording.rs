//! The client's session recording end to end: a real client against the
//! embedded MockServer, recording to real files.
//!
//! Each test has a watchdog, works in its own temporary directory (removed on
//! drop) and bounds its waits.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use base64::Engine;
use serde_json::json;
use support::*;
use zen_websocket::recorder::{
    self, Direction, Entry, EntryKind, OpenMode, Recorder, RecorderConfig,
};
use zen_websocket::testing::{Disconnect, MockServer};
use zen_websocket::{Client, Config, ConfigBuilder, Error, Event, Message};

const T: Duration = Duration::from_secs(10);

fn recorder() -> Recorder {
    Recorder::start(RecorderConfig::default()).unwrap()
}

fn fast(url: &str) -> ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(20))
        .max_retry_delay(Duration::from_millis(100))
        .close_timeout(Duration::from_millis(500))
}

fn entries(path: &Path) -> Vec<Entry> {
    let mut all = Vec::new();
    let summary = recorder::replay(path, |e| all.push(e.clone())).unwrap();
    assert_eq!(
        summary.bad_lines,
        0,
        "{}",
        fs::read_to_string(path).unwrap()
    );
    all
}

fn data_frames(all: &[Entry], dir: Direction) -> Vec<&EntryKind> {
    all.iter()
        .filter(|e| e.dir == dir && matches!(e.kind, EntryKind::Text(_) | EntryKind::Binary(_)))
        .map(|e| &e.kind)
        .collect()
}

fn binary_payload(i: u8) -> Vec<u8> {
    // Every byte value shows up across the ten payloads, including 0 and 255.
    (0..=255u8)
        .map(|b| b.wrapping_mul(i + 1))
        .take(40 + usize::from(i))
        .collect()
}

/// Sends 100 texts and 10 binaries and waits for every echo.
fn send_and_await_echoes(client: &Client) {
    let events = client.events();
    for i in 0..100 {
        client.send_text(format!("text {i:03} ✓")).unwrap();
    }
    for i in 0..10u8 {
        client.send_binary(binary_payload(i)).unwrap();
    }
    let (mut texts, mut binaries) = (0, 0);
    while texts + binaries < 110 {
        match next_message(&events, T) {
            Message::Text(_) => texts += 1,
            Message::Binary(_) => binaries += 1,
        }
    }
    assert_eq!((texts, binaries), (100, 10));
}

#[test]
fn a_session_records_every_frame_both_ways_the_connection_and_the_close() {
    let _w = watchdog("records_every_frame", T * 3);
    let dir = TempDir::new("every-frame");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    send_and_await_echoes(&client);
    client.close().unwrap();

    let meta = recorder::metadata(&path).unwrap();
    let all = entries(&path);
    let out = data_frames(&all, Direction::Out);
    let inbound = data_frames(&all, Direction::In);
    assert_eq!((out.len(), inbound.len()), (110, 110), "{meta:?}");
    assert_eq!(meta.by_type.get("text"), Some(&200), "{meta:?}");
    assert_eq!(meta.by_type.get("binary"), Some(&20), "{meta:?}");
    assert_eq!(meta.by_type.get("connected"), Some(&1), "{meta:?}");
    let closes: Vec<&Entry> = all
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Close { .. }))
        .collect();
    let out_closes: Vec<&&Entry> = closes.iter().filter(|e| e.dir == Direction::Out).collect();
    assert_eq!(out_closes.len(), 1, "{closes:?}");
    assert_eq!(
        out_closes[0].kind,
        EntryKind::Close {
            code: Some(1000),
            reason: String::new()
        }
    );
    // Direction counts are data frames plus close frames.
    let in_closes = closes.len() - out_closes.len();
    assert_eq!(meta.outbound, 111, "{meta:?}");
    assert_eq!(meta.inbound as usize, 110 + in_closes, "{meta:?}");
    assert_eq!(meta.lifecycle, 1, "{meta:?}");
    assert_eq!(meta.connections.len(), 1, "{meta:?}");
    assert_eq!(meta.connections.first(), Some(&client.id()));
    assert!(meta.bad_lines.is_empty() && !meta.truncated_last_line);

    // The connection comes first and the close last.
    assert!(matches!(all[0].kind, EntryKind::Connected { ref url } if *url == server.url()));
    assert_eq!(all[0].dir, Direction::Internal);
    let last_out = all.iter().rposition(|e| e.dir == Direction::Out).unwrap();
    assert!(matches!(all[last_out].kind, EntryKind::Close { .. }));
    assert!(all.iter().all(|e| e.conn == Some(client.id())));
}

#[test]
fn text_and_binary_payloads_round_trip_and_binary_is_base64_in_the_file() {
    let _w = watchdog("payloads_round_trip", T * 3);
    let dir = TempDir::new("payloads");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    let tricky = "line\nbreak \"quoted\" \\ tab\t é ✓ \u{1}";
    client.send_text(tricky).unwrap();
    assert_eq!(next_text(&client.events(), T), tricky);
    send_and_await_echoes(&client);
    client.close().unwrap();

    let all = entries(&path);
    let out = data_frames(&all, Direction::Out);
    let inbound = data_frames(&all, Direction::In);
    let mut expected: Vec<EntryKind> = vec![EntryKind::Text(tricky.to_owned())];
    expected.extend((0..100).map(|i| EntryKind::Text(format!("text {i:03} ✓"))));
    expected.extend((0..10u8).map(|i| EntryKind::Binary(binary_payload(i))));
    let out: Vec<EntryKind> = out.into_iter().cloned().collect();
    assert_eq!(out, expected, "outbound in send order");
    // Echoes may be stamped in another order than sent only if the server
    // reordered them, which it does not: same list.
    let inbound: Vec<EntryKind> = inbound.into_iter().cloned().collect();
    assert_eq!(inbound, expected, "inbound in arrival order");

    // In the file, binary data is standard base64 and each line stays one line.
    let text = fs::read_to_string(&path).unwrap();
    let mut binary_lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "binary" {
            binary_lines += 1;
            let data = v["data"].as_str().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            assert!(
                expected.contains(&EntryKind::Binary(bytes)),
                "{line} decodes to a sent payload"
            );
        }
    }
    assert_eq!(binary_lines, 20);
    let first = base64::engine::general_purpose::STANDARD.encode(binary_payload(0));
    assert!(text.contains(&format!(r#""type":"binary","data":"{first}""#)));
}

#[test]
fn every_echo_is_recorded_after_the_message_it_answers() {
    // The writer sorts each batch by time stamp, so stamps decide the order in
    // the file: an outbound frame must be stamped before its echo arrives.
    let _w = watchdog("echo_after_message", T * 3);
    let dir = TempDir::new("order");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    for i in 0..3000 {
        let text = format!("ping {i}");
        client.send_text(text.as_str()).unwrap();
        assert_eq!(next_text(&events, T), text);
    }
    client.close().unwrap();
    let all = entries(&path);
    let mut out_at = BTreeMap::new();
    let mut late = Vec::new();
    for (pos, e) in all.iter().enumerate() {
        match (&e.dir, &e.kind) {
            (Direction::Out, EntryKind::Text(t)) => {
                out_at.insert(t.clone(), pos);
            }
            (Direction::In, EntryKind::Text(t)) if !out_at.contains_key(t) => {
                late.push(t.clone());
            }
            _ => {}
        }
    }
    assert!(
        late.is_empty(),
        "{} echoes were recorded before the message they answer: {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
}

#[test]
fn appending_across_two_client_sessions_keeps_both() {
    let _w = watchdog("append_two_sessions", T * 3);
    let dir = TempDir::new("append");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let mut ids = Vec::new();
    for session in 0..2 {
        let client = Client::connect(
            fast(&server.url())
                .record_to(&path)
                .recorder(&rec)
                .build()
                .unwrap(),
        )
        .unwrap();
        ids.push(client.id());
        let text = format!("session {session}");
        client.send_text(text.as_str()).unwrap();
        assert_eq!(next_text(&client.events(), T), text);
        client.close().unwrap();
    }
    let all = entries(&path);
    let connected: Vec<&Entry> = all
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Connected { .. }))
        .collect();
    assert_eq!(connected.len(), 2, "{all:?}");
    assert_eq!(
        connected
            .iter()
            .map(|e| e.conn.unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    for (session, id) in ids.iter().enumerate() {
        let text = EntryKind::Text(format!("session {session}"));
        for dir in [Direction::Out, Direction::In] {
            let n = all
                .iter()
                .filter(|e| e.dir == dir && e.kind == text && e.conn == Some(*id))
                .count();
            assert_eq!(n, 1, "session {session} {dir}");
        }
    }
    assert_eq!(recorder::metadata(&path).unwrap().connections.len(), 2);
}

#[test]
fn a_reconnect_records_disconnected_reconnecting_and_reconnected_in_order() {
    let _w = watchdog("reconnect_lifecycle", T * 3);
    let dir = TempDir::new("reconnect");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    client.send_text("before").unwrap();
    assert_eq!(next_text(&events, T), "before");
    server.simulate_disconnect(Disconnect::GoingAway);
    wait_for(&events, T, |e| matches!(e, Event::Reconnected { .. }));
    client.send_text("after").unwrap();
    assert_eq!(next_text(&events, T), "after");
    client.close().unwrap();

    let all = entries(&path);
    let types: Vec<&str> = all.iter().map(|e| e.kind.type_name()).collect();
    let find = |name: &str| types.iter().position(|t| *t == name);
    let connected = find("connected").expect("connected");
    let disconnected = find("disconnected").expect("disconnected");
    let reconnecting = find("reconnecting").expect("reconnecting");
    let reconnected = find("reconnected").expect("reconnected");
    assert!(
        connected < disconnected && disconnected < reconnecting && reconnecting < reconnected,
        "{types:?}"
    );
    let pos_of = |text: &str| {
        all.iter()
            .position(|e| e.dir == Direction::Out && e.kind == EntryKind::Text(text.into()))
            .unwrap()
    };
    assert!(
        pos_of("before") < disconnected && reconnected < pos_of("after"),
        "{types:?}"
    );
    // The server's going-away close is recorded as an inbound close frame.
    assert!(all.iter().any(|e| e.dir == Direction::In
        && e.kind
            == EntryKind::Close {
                code: Some(1001),
                reason: String::new()
            }));
    assert!(matches!(
        all[reconnecting].kind,
        EntryKind::Reconnecting { attempt: 1, .. }
    ));
    assert!(matches!(
        all[reconnected].kind,
        EntryKind::Reconnected { attempt: 1 }
    ));
}

#[test]
fn credentials_sent_with_send_json_never_reach_the_file() {
    let _w = watchdog("redaction", T * 3);
    let dir = TempDir::new("redaction");
    let path = dir.path("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    let secrets = [
        "S3cr3t-client-VALUE",
        "tok-AAAA-access-1234",
        "hunter2-passw0rd",
    ];
    let message = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "public/auth",
        "params": {
            "grant_type": "client_credentials",
            "client_id": "visible-client-id",
            "client_secret": secrets[0],
            "nested": [{"access_token": secrets[1]}],
            "password": secrets[2],
        }
    });
    client.send_json(&message).unwrap();
    // The echo carries the same credentials inbound.
    let echoed = next_text(&client.events(), T);
    assert!(
        echoed.contains(secrets[0]),
        "the wire itself is not redacted"
    );
    client.close().unwrap();

    let bytes = fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for secret in secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} reached the file: {text}"
        );
    }
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(text.contains("visible-client-id"), "{text}");
    assert_eq!(text.matches("public/auth").count(), 2, "{text}");
}

#[test]
fn four_clients_recording_into_one_file_from_four_threads_write_every_entry_once() {
    let _w = watchdog("pool_one_file", T * 4);
    let dir = TempDir::new("pool");
    let path = dir.path("pool.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let file = rec.open(&path, OpenMode::Truncate).unwrap();
    const PER_CLIENT: usize = 50;
    let workers: Vec<_> = (0..4)
        .map(|n| {
            let config = fast(&server.url()).record_file(&file).build().unwrap();
            thread::Builder::new()
                .name(format!("pool-client-{n}"))
                .spawn(move || {
                    let client = Client::connect(config).unwrap();
                    let events = client.events();
                    for i in 0..PER_CLIENT {
                        client.send_text(format!("client {n} message {i}")).unwrap();
                    }
                    let mut echoes = 0;
                    while echoes < PER_CLIENT {
                        next_text(&events, T);
                        echoes += 1;
                    }
                    client.close().unwrap();
                    (n, client.id())
                })
                .unwrap()
        })
        .collect();
    let ids: Vec<(usize, u64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    file.flush().unwrap();

    let distinct: HashSet<u64> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    let all = entries(&path);
    let mut seen: BTreeMap<(u64, Direction, String), usize> = BTreeMap::new();
    for e in &all {
        if let EntryKind::Text(t) = &e.kind {
            *seen.entry((e.conn.unwrap(), e.dir, t.clone())).or_default() += 1;
        }
    }
    for (n, id) in &ids {
        for i in 0..PER_CLIENT {
            for dir in [Direction::Out, Direction::In] {
                let key = (*id, dir, format!("client {n} message {i}"));
                assert_eq!(seen.get(&key), Some(&1), "{key:?}");
            }
        }
    }
    assert_eq!(seen.len(), 4 * PER_CLIENT * 2, "no stray text entries");
    let meta = recorder::metadata(&path).unwrap();
    assert_eq!(meta.connections.len(), 4, "{meta:?}");
    assert_eq!(meta.by_type.get("connected"), Some(&4));
    assert_eq!(meta.connections, distinct.into_iter().collect());
}

#[test]
fn a_recording_to_a_full_disk_fails_on_close_naming_the_path_while_the_client_works() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full on this system");
        return;
    }
    let _w = watchdog("dev_full", T * 3);
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let client = Client::connect(
        fast(&server.url())
            .record_to(full)
            .recorder(&rec)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    for i in 0..20 {
        let text = format!("still working {i}");
        client.send_text(text.as_str()).unwrap();
        assert_eq!(next_text(&events, T), text);
    }
    // A batch is due after flush_interval (100 ms): let at least one fail
    // while the client is in use, and check the client does not notice.
    thread::sleep(Duration::from_millis(300));
    client.send_text("after a failed write").unwrap();
    assert_eq!(next_text(&events, T), "after a failed write");
    assert!(client.is_connected());
    let stats = rec.stats();
    assert!(stats.total.write_errors > 0, "{stats:?}");

    match client.close() {
        Err(Error::Storage { path, source }) => {
            assert_eq!(path, full);
            assert!(
                source.raw_os_error() == Some(28) || source.to_string().contains("space"),
                "{source}"
            );
        }
        other => panic!("expected a storage error naming /dev/full, got {other:?}"),
    }
    // The error was reported once; the recorder keeps serving other files.
    assert!(rec.flush(full).is_ok());
}

#[test]
fn an_unopenable_recording_path_fails_connect_with_a_storage_error_naming_it() {
    let _w = watchdog("unopenable_path", T * 2);
    let dir = TempDir::new("unopenable");
    let path = dir.path("no-such-directory").join("session.jsonl");
    let server = MockServer::start().unwrap();
    let rec = recorder();
    let result = Client::connect(
        fast(&server.url())
            .record_to(&path)
            .recorder(&rec)
            .build()
            .unwrap(),
    );
    match result {
        Err(Error::Storage {
            path: named,
            source,
        }) => {
            assert_eq!(named, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
            let shown = Error::Storage {
                path: named,
                source,
            }
            .to_string();
            assert!(shown.contains("no-such-directory"), "{shown}");
        }
        other => panic!("expected Error::Storage, got {other:?}"),
    }
    assert!(!path.exists());
}
