//! The client under network faults, injected by a TCP proxy between it and a
//! real server on loopback (`support::fault_proxy`): a half-open link, a server
//! that accepts TCP and never answers the upgrade, a server that refuses
//! connections for a while, resets under a busy sender, and a consumer that
//! stops reading its events; then the same faults for a recording client, a
//! Deribit client (re-authentication before the restore) and a pool.
//!
//! Every test has a watchdog and its own time bounds. Timing assertions use
//! lower bounds that follow from the fault itself (the proxy refuses until a
//! known instant) and generous upper bounds; attempt counts are bounded from
//! the configured delays and timeouts, with slack, never asserted exactly
//! where jitter decides them. Measured numbers are printed (`--nocapture`).

mod support;

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fault_proxy::FaultProxy;
use support::*;
use zen_websocket::crossbeam_channel::{self, Receiver};
use zen_websocket::recorder::{Direction, EntryKind, Recorder, RecorderConfig, Recording};
use zen_websocket::testing::{MockServer, Reply};
use zen_websocket::{Client, Config, ConfigBuilder, Error, Event, Message, TimeoutKind};

/// The bound of one wait for an event.
const T: Duration = Duration::from_secs(10);
/// Base and cap of the backoff in these tests.
const RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_millis(200);
const CHANNEL: &str = "trades.BTC-PERPETUAL.raw";

/// A client of `proxy` that retries forever with a short backoff.
fn through(proxy: &FaultProxy) -> ConfigBuilder {
    Config::builder(proxy.url())
        .connect_timeout(Duration::from_secs(1))
        .retry_count(None)
        .retry_delay(RETRY)
        .max_retry_delay(MAX_RETRY)
        .close_timeout(Duration::from_millis(300))
}

/// The documented backoff ceiling of reconnection attempt `attempt` (1-based):
/// the first retry is immediate, then `min(max, base · 2^(attempt-2))`.
fn ceiling(attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (attempt - 2).min(20);
    RETRY.saturating_mul(factor).min(MAX_RETRY)
}

/// An echo server that also answers JSON-RPC `subscribe` requests with the
/// channels asked for, as a venue confirms a subscription.
fn rpc_echo_server() -> MockServer {
    let server = MockServer::start().unwrap();
    server.set_handler(|m| match m.json() {
        Some(req) if req["method"] == "subscribe" => Reply::Text(
            json!({"jsonrpc": "2.0", "id": req["id"], "result": req["params"]["channels"]})
                .to_string(),
        ),
        _ => Reply::from(m.clone()),
    });
    server
}

/// Read events, stamped on arrival, until `stop` accepts one (it is the last
/// one returned) or `deadline` passes.
fn collect(
    events: &Receiver<Event>,
    deadline: Instant,
    mut stop: impl FnMut(&Event) -> bool,
) -> Vec<(Instant, Event)> {
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                let done = stop(&e);
                seen.push((Instant::now(), e));
                if done {
                    return seen;
                }
            }
            Err(_) => return seen,
        }
    }
}

fn is_reconnected(e: &Event) -> bool {
    matches!(e, Event::Reconnected { .. })
}

fn is_disconnected(e: &Event) -> bool {
    matches!(e, Event::Disconnected { .. })
}

/// The `Reconnecting` events as (attempt, delay).
fn delays(seen: &[(Instant, Event)]) -> Vec<(u32, Duration)> {
    seen.iter()
        .filter_map(|(_, e)| match e {
            Event::Reconnecting { attempt, delay, .. } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect()
}

/// Every delay lies in `[0, ceiling(attempt)]` and the first retry is immediate.
fn assert_backoff_bounds(delays: &[(u32, Duration)]) {
    assert!(!delays.is_empty(), "no Reconnecting events");
    assert_eq!(
        delays[0],
        (1, Duration::ZERO),
        "the first retry is immediate"
    );
    for &(attempt, delay) in delays {
        assert!(
            delay <= ceiling(attempt),
            "attempt {attempt} waited {delay:?}, above its ceiling {:?}",
            ceiling(attempt)
        );
    }
}

#[test]
fn a_stalled_link_is_detected_by_heartbeats_and_subscriptions_are_restored() {
    let _w = watchdog("stall", Duration::from_secs(60));
    let server = rpc_echo_server();
    let proxy = FaultProxy::start(server.addr());
    let interval = Duration::from_millis(150);
    let timeout = Duration::from_millis(250);
    let connect_timeout = Duration::from_millis(500);
    let client = Client::connect(
        through(&proxy)
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
            .connect_timeout(connect_timeout)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    assert_eq!(client.subscribe(&[CHANNEL]).unwrap(), vec![CHANNEL]);
    assert_eq!(client.subscriptions(), vec![CHANNEL]);

    // Heartbeats work through the proxy while it passes.
    let deadline = Instant::now() + T;
    while client.stats().pongs_received < 2 {
        assert!(Instant::now() < deadline, "no pongs: {:?}", client.stats());
        if let Ok(e) = events.recv_timeout(Duration::from_millis(50)) {
            assert!(!is_disconnected(&e), "lost before the fault: {e:?}");
        }
    }

    proxy.stall_both();
    let stalled_at = Instant::now();
    let cause = wait_disconnected(&events, T);
    let detected = stalled_at.elapsed();
    assert!(
        matches!(*cause, Error::Timeout(TimeoutKind::Pong)),
        "{cause:?}"
    );
    // At most one interval to the next ping, then the pong deadline; the rest is slack.
    assert!(
        detected <= interval + timeout + Duration::from_secs(2),
        "detected after {detected:?}"
    );

    // While the link stays stalled, an attempt reaches the proxy and its upgrade
    // never gets through: it ends with the connect timeout, not a hang.
    let (ev, _) = wait_for(&events, T, |e| matches!(e, Event::ReconnectFailed { .. }));
    let Event::ReconnectFailed { error, .. } = ev else {
        unreachable!()
    };
    assert!(
        matches!(*error, Error::Timeout(TimeoutKind::Connect)),
        "{error:?}"
    );
    assert!(proxy.attempts() >= 2, "{proxy:?}");
    assert_eq!(client.subscriptions(), vec![CHANNEL], "still tracked");

    proxy.pass();
    let passed_at = Instant::now();
    let mut reconnected = None;
    let mut restored = None;
    let seen = collect(&events, passed_at + T, |e| {
        match e {
            Event::Reconnected { attempt } => reconnected = Some(*attempt),
            Event::SubscriptionsRestored { channels } => restored = Some(channels.clone()),
            _ => {}
        }
        reconnected.is_some() && restored.is_some()
    });
    let attempt = reconnected.unwrap_or_else(|| panic!("no Reconnected: {seen:#?}"));
    assert!(attempt >= 2, "attempt 1 timed out in the stall: {attempt}");
    assert_eq!(
        restored.unwrap_or_else(|| panic!("no SubscriptionsRestored: {seen:#?}")),
        vec![CHANNEL]
    );
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, Event::RestoreFailed { .. })),
        "{seen:#?}"
    );
    assert_eq!(client.subscriptions(), vec![CHANNEL]);
    // The server saw the subscription twice: once asked, once restored, and
    // never from the attempts that timed out in the stall.
    let subscribes: Vec<Value> = server
        .received()
        .iter()
        .filter_map(Message::json)
        .filter(|v| v["method"] == "subscribe")
        .collect();
    assert_eq!(subscribes.len(), 2, "{subscribes:?}");
    assert_eq!(subscribes[1]["params"]["channels"], json!([CHANNEL]));

    client.send_text("after the stall").unwrap();
    assert_eq!(next_text(&events, T), "after the stall");
    assert_eq!(client.stats().reconnects, 1);
    eprintln!(
        "stall: detected after {detected:?}, reconnected on attempt {attempt}, \
         {} proxy attempts",
        proxy.attempts()
    );
    client.close().unwrap();
}

#[test]
fn a_server_that_never_answers_the_upgrade_bounds_connect_and_does_not_make_reconnection_spin() {
    let _w = watchdog("blackhole", Duration::from_secs(60));
    let server = MockServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr());
    let connect_timeout = Duration::from_millis(300);
    let config = || {
        through(&proxy)
            .connect_timeout(connect_timeout)
            .build()
            .unwrap()
    };

    // The first connect.
    proxy.accepted_upgrades_blackhole(true);
    let started = Instant::now();
    let err = Client::connect(config()).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Connect)),
        "{err:?}"
    );
    assert!(took >= connect_timeout, "{took:?}");
    assert!(
        took < connect_timeout + Duration::from_secs(3),
        "connect overran its timeout: {took:?}"
    );
    assert_eq!((proxy.attempts(), proxy.forwarded()), (1, 0));

    // Reconnecting into the black hole.
    proxy.pass();
    let client = Client::connect(config()).unwrap();
    let events = client.events();
    wait_for(&events, T, |e| matches!(e, Event::Connected { .. }));
    proxy.accepted_upgrades_blackhole(true);
    let base = proxy.attempts();
    let window = Duration::from_secs(2);
    proxy.reset_all();
    let cut_at = Instant::now();
    let seen = collect(&events, cut_at + window, |_| false);
    let attempts = proxy.attempts() - base;
    // Each attempt holds the black hole for connect_timeout before the next
    // can start, whatever its (jittered, possibly zero) delay.
    let bound = (window.as_millis() / connect_timeout.as_millis()) as usize + 2;
    assert!(
        (2..=bound).contains(&attempts),
        "{attempts} attempts in {window:?} (bound {bound}): {seen:#?}"
    );
    let failures: Vec<&Arc<Error>> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ReconnectFailed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert!(!failures.is_empty(), "{seen:#?}");
    for e in &failures {
        assert!(
            matches!(***e, Error::Timeout(TimeoutKind::Connect)),
            "{e:?}"
        );
    }
    let delays = delays(&seen);
    assert_backoff_bounds(&delays);
    // No attempt is left hanging: each one ended within its delay, the connect
    // timeout and generous slack.
    for (at, e) in &seen {
        if let Event::Reconnecting { attempt, delay, .. } = e {
            let ended = seen.iter().find_map(|(t, e)| match e {
                Event::ReconnectFailed { attempt: a, .. } if a == attempt => Some(*t),
                _ => None,
            });
            if let Some(ended) = ended {
                let took = ended - *at;
                assert!(
                    took < *delay + connect_timeout + Duration::from_secs(2),
                    "attempt {attempt} took {took:?}"
                );
            }
        }
    }

    // Recovery.
    proxy.pass();
    wait_for(&events, T, is_reconnected);
    client.send_text("out of the hole").unwrap();
    assert_eq!(next_text(&events, T), "out of the hole");
    eprintln!(
        "blackhole: first connect failed after {took:?}; {attempts} attempts in {window:?} \
         (bound {bound}), {} failures, delays {delays:?}",
        failures.len()
    );
    client.close().unwrap();
}

#[test]
fn a_server_refusing_for_a_while_sees_jittered_backoff_and_no_storm_then_recovery() {
    let _w = watchdog("refuse", Duration::from_secs(60));
    let server = MockServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr());
    let client = Client::connect(through(&proxy).build().unwrap()).unwrap();
    let events = client.events();
    wait_for(&events, T, |e| matches!(e, Event::Connected { .. }));

    let refuse = Duration::from_millis(1500);
    let base = proxy.attempts();
    let refused_from = Instant::now();
    proxy.refuse_for(refuse);
    proxy.reset_all();
    let seen = collect(&events, refused_from + refuse + T, is_reconnected);
    let Some((reconnected_at, Event::Reconnected { attempt })) = seen.last() else {
        panic!("no Reconnected: {seen:#?}")
    };
    let took = *reconnected_at - refused_from;
    // The proxy refused every connection until then.
    assert!(
        took >= refuse,
        "reconnected after {took:?}, inside the refusal"
    );
    assert!(
        took < refuse + MAX_RETRY + Duration::from_secs(3),
        "recovery took {took:?}"
    );

    let attempts = proxy.attempts() - base;
    // Every reconnection attempt dials once, and nothing else dials the proxy.
    let delays = delays(&seen);
    assert_eq!(delays.len(), attempts, "{delays:?}");
    assert_eq!(*attempt as usize, attempts);
    // A storm would be hundreds of attempts a second on loopback. Past the first
    // four attempts (ceilings 0, 50, 100, 200 ms) every delay is uniform in
    // [0, 200 ms], 100 ms on average; three times the expected count is slack
    // enough for any jitter.
    let expected = took.as_millis() as usize / (MAX_RETRY.as_millis() as usize / 2);
    let storm_bound = 4 + 3 * expected;
    assert!(
        (3..=storm_bound).contains(&attempts),
        "{attempts} attempts in {took:?} (bound {storm_bound})"
    );
    assert_backoff_bounds(&delays);
    let jittered: HashSet<Duration> = delays
        .iter()
        .filter(|(a, _)| *a >= 2)
        .map(|(_, d)| *d)
        .collect();
    assert!(jittered.len() >= 2, "delays not jittered: {delays:?}");
    let failed = seen
        .iter()
        .filter(|(_, e)| matches!(e, Event::ReconnectFailed { .. }))
        .count();
    assert_eq!(failed, attempts - 1);
    let first_error = seen.iter().find_map(|(_, e)| match e {
        Event::ReconnectFailed { error, .. } => Some(error.clone()),
        _ => None,
    });

    client.send_text("back").unwrap();
    assert_eq!(next_text(&events, T), "back");
    eprintln!(
        "refuse: {attempts} attempts in {took:?} (bound {storm_bound}), first error \
         {first_error:?}, delays {delays:?}"
    );
    client.close().unwrap();
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("zen-ws-fault-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the client acknowledged: sends that returned `Ok`, echoes it delivered.
#[derive(Default)]
struct Ledger {
    sent: Vec<String>,
    received: Vec<String>,
}

impl Ledger {
    fn take_texts<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        for e in events {
            if let Event::Message(Message::Text(t)) = e {
                self.received.push(t.clone());
            }
        }
    }

    /// Send `n` texts and wait for their echoes.
    fn exchange(&mut self, client: &Client, events: &Receiver<Event>, tag: &str, n: usize) {
        for i in 0..n {
            let text = format!("{tag}-{i}");
            client.send_text(&text).unwrap();
            self.sent.push(text);
        }
        for i in 0..n {
            let (e, skipped) = wait_for(events, T, |e| matches!(e, Event::Message(_)));
            self.take_texts(&skipped);
            self.take_texts([&e]);
            assert_eq!(self.received.last().unwrap(), &format!("{tag}-{i}"));
        }
    }

    /// Every acknowledged message is in the file; returns the lifecycle entries.
    fn assert_in(&self, path: &Path) -> Vec<EntryKind> {
        let mut out = HashSet::new();
        let mut inbound = HashSet::new();
        let mut lifecycle = Vec::new();
        for item in Recording::open(path).unwrap() {
            let entry = item.unwrap_or_else(|bad| panic!("bad line in the recording: {bad}"));
            match (entry.dir, entry.kind) {
                (Direction::Out, EntryKind::Text(t)) => {
                    out.insert(t);
                }
                (Direction::In, EntryKind::Text(t)) => {
                    inbound.insert(t);
                }
                (_, k) if k.is_lifecycle() => lifecycle.push(k),
                _ => {}
            }
        }
        let lost_out: Vec<&String> = self.sent.iter().filter(|t| !out.contains(*t)).collect();
        let lost_in: Vec<&String> = self
            .received
            .iter()
            .filter(|t| !inbound.contains(*t))
            .collect();
        assert!(
            lost_out.is_empty() && lost_in.is_empty(),
            "flushed but missing: sent {lost_out:?}, received {lost_in:?}"
        );
        lifecycle
    }
}

#[test]
fn no_acknowledged_recording_entry_is_lost_across_faults() {
    let _w = watchdog("recording", Duration::from_secs(90));
    let dir = TempDir::new("recording");
    let path = dir.0.join("session.jsonl");
    let recorder = Recorder::start(RecorderConfig::default()).unwrap();
    let server = MockServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr());
    let client = Client::connect(
        through(&proxy)
            .heartbeat_interval(Duration::from_millis(150))
            .heartbeat_timeout(Duration::from_millis(250))
            .connect_timeout(Duration::from_millis(500))
            .recorder(&recorder)
            .record_to(&path)
            .build()
            .unwrap(),
    )
    .unwrap();
    let events = client.events();
    let mut ledger = Ledger::default();
    ledger.exchange(&client, &events, "before", 20);
    recorder.flush(&path).unwrap();
    ledger.assert_in(&path);

    // Fault 1: a stalled link. Sends succeed until the heartbeat notices (they
    // sit in buffers): they were sent, so they must be in the file.
    proxy.stall_both();
    for i in 0..5 {
        let text = format!("stalled-{i}");
        if client.send_text(&text).is_ok() {
            ledger.sent.push(text);
        }
    }
    let (_, skipped) = wait_for(&events, T, is_disconnected);
    ledger.take_texts(&skipped);
    recorder.flush(&path).unwrap();
    ledger.assert_in(&path);
    proxy.pass();
    let (_, skipped) = wait_for(&events, T, is_reconnected);
    ledger.take_texts(&skipped);
    ledger.exchange(&client, &events, "after-stall", 20);
    recorder.flush(&path).unwrap();
    ledger.assert_in(&path);

    // Fault 2: refused for a while.
    proxy.refuse(true);
    proxy.reset_all();
    let (_, skipped) = wait_for(&events, T, |e| matches!(e, Event::ReconnectFailed { .. }));
    ledger.take_texts(&skipped);
    recorder.flush(&path).unwrap();
    ledger.assert_in(&path);
    proxy.refuse(false);
    let (_, skipped) = wait_for(&events, T, is_reconnected);
    ledger.take_texts(&skipped);
    ledger.exchange(&client, &events, "after-refuse", 20);
    recorder.flush(&path).unwrap();
    ledger.assert_in(&path);

    // Fault 3: a reset while another thread keeps sending. The latency keeps
    // acknowledged sends in flight, so the reset lands mid-stream: some are
    // never echoed, but all of them must be in the file.
    proxy.latency(Duration::from_millis(20));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::Builder::new()
            .name("busy-sender".into())
            .spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let text = format!("busy-{i}");
                    if client.send_text(&text).is_ok() {
                        acked.push(text);
                    }
                    i += 1;
                    // Pacing, not synchronization: the reset lands mid-stream.
                    std::thread::sleep(Duration::from_millis(1));
                }
                acked
            })
            .unwrap()
    };
    let busy_echoes = |ledger: &Ledger| {
        ledger
            .received
            .iter()
            .filter(|t| t.starts_with("busy-"))
            .count()
    };
    let deadline = Instant::now() + T;
    while busy_echoes(&ledger) < 10 {
        assert!(Instant::now() < deadline, "no busy echoes");
        if let Ok(e) = events.recv_timeout(Duration::from_millis(50)) {
            ledger.take_texts([&e]);
        }
    }
    proxy.reset_all();
    let seen = collect(&events, Instant::now() + T, is_reconnected);
    assert!(
        seen.last().is_some_and(|(_, e)| is_reconnected(e)),
        "{seen:#?}"
    );
    ledger.take_texts(seen.iter().map(|(_, e)| e));
    let after_reset = busy_echoes(&ledger);
    let deadline = Instant::now() + T;
    while busy_echoes(&ledger) < after_reset + 10 {
        assert!(Instant::now() < deadline, "no busy echoes after the reset");
        if let Ok(e) = events.recv_timeout(Duration::from_millis(50)) {
            ledger.take_texts([&e]);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let acked = sender.join().unwrap();
    proxy.pass();
    let busy_sent = acked.len();
    let busy_unechoed = busy_sent - busy_echoes(&ledger);
    ledger.sent.extend(acked);
    recorder.flush(&path).unwrap();
    let lifecycle = ledger.assert_in(&path);
    let count = |name: &str| lifecycle.iter().filter(|k| k.type_name() == name).count();
    assert!(count("disconnected") >= 3, "{lifecycle:?}");
    assert!(count("reconnected") >= 3, "{lifecycle:?}");
    assert!(count("reconnecting") >= 3, "{lifecycle:?}");

    client.close().unwrap();
    ledger.assert_in(&path);
    eprintln!(
        "recording: {} sent and {} received entries verified ({busy_sent} from the busy \
         sender, {busy_unechoed} of them not echoed by the flush), {} disconnects recorded",
        ledger.sent.len(),
        ledger.received.len(),
        count("disconnected")
    );
    recorder.stop().unwrap();
}

/// The resident set size of this process, from /proc (Linux only).
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the flooding server reports.
#[derive(Debug)]
enum Flood {
    /// A write blocked (TCP back-pressure) after this many bytes and whole frames.
    Blocked { bytes: usize, frames: u32 },
    /// The server wrote this many frames and the end marker.
    Done { bytes: usize, frames: u32 },
}

/// Write frames of `FRAME` bytes, numbered in their first four bytes, until
/// `TRY_BYTES` are out or a write blocks for `BLOCKED_AFTER`; then finish the
/// frame in progress and send `end <frames>`.
fn flood(
    conn: &mut TcpStream,
    report: &crossbeam_channel::Sender<Flood>,
    try_bytes: usize,
) -> io::Result<()> {
    const FRAME: usize = 16 * 1024;
    const BLOCKED_AFTER: Duration = Duration::from_millis(500);
    accept_upgrade(conn)?;
    conn.set_write_timeout(Some(BLOCKED_AFTER))?;
    let mut payload = vec![0u8; FRAME];
    let (mut bytes, mut frames, mut blocked) = (0usize, 0u32, false);
    while bytes < try_bytes && !blocked {
        payload[..4].copy_from_slice(&frames.to_be_bytes());
        let f = frame(0x2, &payload);
        let mut off = 0;
        while off < f.len() {
            match conn.write(&f[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    off += n;
                    bytes += n;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if !blocked {
                        blocked = true;
                        let _ = report.send(Flood::Blocked { bytes, frames });
                        // From now on wait for the reader, to finish this frame.
                        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        frames += 1;
    }
    conn.write_all(&frame(0x1, format!("end {frames}").as_bytes()))?;
    conn.flush()?;
    let _ = report.send(Flood::Done { bytes, frames });
    Ok(())
}

#[test]
fn a_slow_consumer_makes_the_server_block_instead_of_memory_growing() {
    let _w = watchdog("slow_consumer", Duration::from_secs(90));
    const TRY_BYTES: usize = 256 << 20;
    const BOUND: usize = 64 << 20;
    const CAPACITY: usize = 16;
    let (report_tx, report) = crossbeam_channel::unbounded::<Flood>();
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let floods = Arc::new(AtomicUsize::new(0));
    let server = {
        let floods = floods.clone();
        RawServer::start(move |mut conn| {
            // Only the first connection floods; a stray later one just ends.
            if floods.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            if let Err(e) = flood(&mut conn, &report_tx, TRY_BYTES) {
                eprintln!("flood ended early: {e}");
            }
            // Keep the connection until the test has read everything.
            let _ = released.recv_timeout(Duration::from_secs(60));
        })
    };
    let rss_before = rss_bytes();
    let client = Client::connect(
        Config::builder(server.url())
            .event_capacity(CAPACITY)
            .heartbeat_interval(None) // the raw server never answers pings
            .connect_timeout(Duration::from_secs(2))
            .close_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();

    // The consumer does not read: the server must block long before TRY_BYTES.
    let (blocked_bytes, blocked_frames) = match report.recv_timeout(Duration::from_secs(30)) {
        Ok(Flood::Blocked { bytes, frames }) => (bytes, frames),
        other => panic!("the server never blocked (no back-pressure): {other:?}"),
    };
    let rss_blocked = rss_bytes();
    let held = client.stats().messages_in;
    assert!(
        blocked_bytes < BOUND && blocked_bytes * 4 < TRY_BYTES,
        "{blocked_bytes} bytes written before blocking"
    );
    // What the client holds is the event channel plus one read burst (256
    // messages), far below what the server tried to send.
    assert!(
        held <= 1024,
        "{held} messages read while the consumer slept"
    );
    let growth = match (rss_before, rss_blocked) {
        (Some(a), Some(b)) => {
            let growth = b.saturating_sub(a);
            assert!(growth < BOUND, "RSS grew by {growth} bytes");
            Some(growth)
        }
        _ => None, // not Linux
    };

    // Now the consumer reads: everything the server wrote arrives, in order.
    let events = client.events();
    let (first, _) = wait_for(&events, T, |_| true);
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");
    let mut n = 0u32;
    loop {
        match next_message(&events, T) {
            Message::Binary(b) => {
                assert_eq!(b.len(), 16 * 1024);
                assert_eq!(u32::from_be_bytes(b[..4].try_into().unwrap()), n, "order");
                n += 1;
            }
            Message::Text(t) => {
                assert_eq!(t, format!("end {n}"));
                break;
            }
        }
    }
    match report.recv_timeout(T) {
        Ok(Flood::Done { bytes, frames }) => {
            assert_eq!(frames, n);
            assert_eq!(bytes, n as usize * frame(0x2, &[0; 16 * 1024]).len());
        }
        other => panic!("{other:?}"),
    }
    assert!(n > blocked_frames, "frames blocked in flight arrived too");
    assert_eq!(client.stats().dropped_events, 0);
    eprintln!(
        "slow consumer: server blocked after {blocked_bytes} bytes ({blocked_frames} frames) of \
         {TRY_BYTES} tried; client held {held} messages; RSS growth {growth:?} bytes; \
         {n} frames delivered in order"
    );
    client.close().unwrap();
    drop(release);
    drop(server);
}

// The pool under the same faults is the last test of this file.

// Deribit re-authentication after a stall. The half-open link is the case that
// matters for a trading connection: nothing tells the client the link is dead
// but its own heartbeat, and the connection that replaces it starts
// unauthenticated, so private channels can only be restored after a fresh
// `public/auth` on it.

/// A private Deribit channel: `private/subscribe`, which needs auth first.
const ORDERS: &str = "user.orders.BTC-PERPETUAL.raw";

#[test]
fn deribit_re_authenticates_and_resubscribes_after_a_stall() {
    use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig};
    use zen_websocket::testing::{ConnectionInfo, DeribitServer, RecordedRequest};

    let _w = watchdog("deribit_stall", Duration::from_secs(60));
    let client_id = "stall-test-id";
    let secret = "stall-test-secret-that-must-not-leak";
    let server = DeribitServer::builder()
        .credentials(client_id, secret)
        // Platform heartbeats often enough to see them set up again on the new
        // connection (Deribit's own minimum, 10 s, is too slow for a test).
        .heartbeat_interval_override(Duration::from_millis(100))
        .start()
        .unwrap();
    let proxy = FaultProxy::start(server.addr());
    let dir = TempDir::new("deribit-stall");
    let recording = dir.0.join("session.jsonl");
    let interval = Duration::from_millis(150);
    let timeout = Duration::from_millis(250);
    let connect_timeout = Duration::from_millis(500);
    let config = DeribitConfig::builder()
        .url(proxy.url())
        .credentials(client_id, secret)
        .cancel_on_disconnect(true)
        .client_options({
            let recording = recording.clone();
            move |b| {
                b.heartbeat_interval(interval)
                    .heartbeat_timeout(timeout)
                    .connect_timeout(connect_timeout)
                    .retry_delay(RETRY)
                    .max_retry_delay(MAX_RETRY)
                    .close_timeout(Duration::from_millis(300))
                    .request_timeout(Duration::from_secs(5))
                    .record_to(recording)
            }
        })
        .build()
        .unwrap();
    let client = DeribitClient::connect(config.clone()).unwrap();
    let events = client.events();

    // 1. One key login on connection 1, then a private subscription on it.
    assert_eq!((server.auth_count(), server.refresh_count()), (1, 0));
    let auths: Vec<RecordedRequest> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "public/auth")
        .collect();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(auths[0].connection, 1);
    assert_eq!(auths[0].params["grant_type"], "client_credentials");
    let first_tokens = client.tokens().expect("tokens after the first auth");
    assert_eq!(client.subscribe(&[ORDERS]).unwrap(), [ORDERS]);
    let first = server.connection(1).unwrap();
    assert_eq!(first.subscriptions, [ORDERS]);
    assert!(first.position("public/auth") < first.position("private/subscribe"));

    // 2. A half-open link: only the client's heartbeat can tell.
    proxy.stall_both();
    let stalled_at = Instant::now();
    let cause = wait_disconnected(&events, T);
    let detected = stalled_at.elapsed();
    assert!(
        matches!(*cause, Error::Timeout(TimeoutKind::Pong)),
        "{cause:?}"
    );
    assert!(
        detected <= interval + timeout + Duration::from_secs(2),
        "detected after {detected:?}"
    );
    // An attempt made during the stall never gets its upgrade through (the
    // proxy holds it): it ends with the connect timeout, and no auth was tried.
    let (ev, _) = wait_for(&events, T, |e| matches!(e, Event::ReconnectFailed { .. }));
    let Event::ReconnectFailed { error, .. } = ev else {
        unreachable!()
    };
    assert!(
        matches!(*error, Error::Timeout(TimeoutKind::Connect)),
        "{error:?}"
    );
    assert_eq!(server.auth_count(), 1);
    assert_eq!(client.subscriptions(), [ORDERS], "still tracked");

    // 3. The link heals: reconnect, auth, heartbeat, cancel-on-disconnect,
    //    restore, in that order, on one new connection.
    proxy.pass();
    let passed_at = Instant::now();
    let mut reconnected = None;
    let mut restored = None;
    let seen = collect(&events, passed_at + T, |e| {
        match e {
            Event::Reconnected { attempt } => reconnected = Some(*attempt),
            Event::SubscriptionsRestored { channels } => restored = Some(channels.clone()),
            _ => {}
        }
        reconnected.is_some() && restored.is_some()
    });
    let attempt = reconnected.unwrap_or_else(|| panic!("no Reconnected: {seen:#?}"));
    assert!(attempt >= 2, "attempt 1 timed out in the stall: {attempt}");
    assert_eq!(
        restored.unwrap_or_else(|| panic!("no SubscriptionsRestored: {seen:#?}")),
        [ORDERS]
    );
    // `Reconnected` comes first: the restore ran during the opening and its
    // event waited, so the user sees the connection before what happened on it.
    let position = |pred: fn(&Event) -> bool| seen.iter().position(|(_, e)| pred(e));
    assert!(
        position(is_reconnected) < position(|e| matches!(e, Event::SubscriptionsRestored { .. })),
        "{seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, Event::RestoreFailed { .. } | Event::GaveUp { .. })),
        "{seen:#?}"
    );

    // Attempts that timed out in the stall may reach the server once the proxy
    // lets their held upgrade through, but they carry no request: the new
    // connection is the one other connection that called anything.
    let busy: Vec<ConnectionInfo> = server
        .connections()
        .into_iter()
        .filter(|c| c.id != 1 && !c.methods.is_empty())
        .collect();
    assert_eq!(busy.len(), 1, "{busy:#?}");
    let new = &busy[0];
    let new_requests: Vec<RecordedRequest> = server
        .requests()
        .into_iter()
        .filter(|r| r.connection == new.id)
        .collect();
    let methods: Vec<&str> = new_requests
        .iter()
        .map(|r| r.method.as_str())
        .filter(|m| *m != "public/test") // heartbeat answers may interleave
        .collect();
    assert_eq!(
        methods,
        [
            "public/auth",
            "public/set_heartbeat",
            "private/enable_cancel_on_disconnect",
            "private/subscribe",
        ],
        "{new_requests:#?}"
    );
    // The second login is a key login (not the old connection's refresh
    // token), and the restore asks for the same private channel.
    assert_eq!(new_requests[0].params["grant_type"], "client_credentials");
    assert_eq!(new_requests[0].params["client_secret"], "[REDACTED]");
    let restore = new_requests
        .iter()
        .find(|r| r.method == "private/subscribe")
        .unwrap();
    assert_eq!(restore.params, json!({"channels": [ORDERS]}));
    assert!(new.authenticated);
    assert_eq!(new.subscriptions, [ORDERS]);
    assert_eq!((server.auth_count(), server.refresh_count()), (2, 0));
    let second_tokens = client.tokens().unwrap();
    assert_ne!(second_tokens.access_token(), first_tokens.access_token());

    // 4. Private requests work on the new connection; the server answers them
    //    only on a connection that authenticated, and cancel-on-disconnect
    //    was enabled on it again by `on_connect`.
    let coc = client
        .request("private/get_cancel_on_disconnect", json!({}))
        .unwrap();
    assert_eq!(coc, json!({"scope": "connection", "enabled": true}));
    assert_eq!(
        server
            .requests()
            .last()
            .map(|r| (r.connection, r.method.clone())),
        Some((new.id, "private/get_cancel_on_disconnect".to_owned()))
    );
    // Platform heartbeats were set up again and are answered on it.
    let new_id = new.id;
    server
        .wait_until(T, "a public/test on the new connection", |s| {
            s.connection(new_id).is_some_and(|c| c.test_answers >= 1)
        })
        .unwrap();
    // Notifications of the restored private channel reach the user.
    assert_eq!(server.publish(ORDERS, json!([{"order_id": "o-2"}])), 1);
    let (ev, _) = wait_for(&events, T, |e| matches!(e, Event::Subscription { .. }));
    let Event::Subscription { channel, data } = ev else {
        unreachable!()
    };
    assert_eq!(
        (channel.as_str(), &data),
        (ORDERS, &json!([{"order_id": "o-2"}]))
    );
    assert_eq!(client.client().stats().reconnects, 1);

    // 5. No credential anywhere a user might print or share.
    let shown = format!(
        "{client:?} {config:?} {first_tokens:?} {second_tokens:?} {:?} {seen:?} {:?}",
        client.client(),
        server.requests()
    );
    client.close().unwrap(); // flushes the recording
    let recorded = std::fs::read_to_string(&recording).unwrap();
    for leaked in [
        secret,
        first_tokens.access_token(),
        first_tokens.refresh_token(),
        second_tokens.access_token(),
        second_tokens.refresh_token(),
    ] {
        assert!(
            !shown.contains(leaked),
            "`{leaked}` in Debug output: {shown}"
        );
        assert!(!recorded.contains(leaked), "`{leaked}` in the recording");
    }
    assert!(shown.contains("[REDACTED]"), "{shown}");
    assert!(recorded.contains("[REDACTED]"));
    eprintln!(
        "deribit stall: detected after {detected:?}, reconnected on attempt {attempt} \
         ({:?} after pass), {} proxy attempts, {} server connections",
        seen.last().map(|(at, _)| at.duration_since(passed_at)),
        proxy.attempts(),
        server.total_connections()
    );
}

#[test]
fn the_proxy_forwards_delays_and_counts() {
    // A check of the tool itself, so that a failure above is not the proxy's.
    let _w = watchdog("proxy_self_test", Duration::from_secs(30));
    let server = MockServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr());
    let client = Client::connect(through(&proxy).build().unwrap()).unwrap();
    let events = client.events();
    assert!(proxy.wait_connections(1, T), "{proxy:?}");
    assert_eq!((proxy.attempts(), proxy.forwarded()), (1, 1));
    client.send_text("plain").unwrap();
    assert_eq!(next_text(&events, T), "plain");

    let latency = Duration::from_millis(100);
    proxy.latency(latency);
    let sent = Instant::now();
    client.send_text("slow").unwrap();
    assert_eq!(next_text(&events, T), "slow");
    // One hold each way.
    assert!(sent.elapsed() >= latency * 2, "{:?}", sent.elapsed());
    proxy.pass();

    proxy.stall(support::fault_proxy::Direction::ServerToClient);
    client.send_text("held").unwrap();
    server.assert_message_sent("held", T).unwrap();
    assert!(
        events
            .recv_timeout(Duration::from_millis(200))
            .map_or(true, |e| !matches!(e, Event::Message(_))),
        "an echo passed a stall"
    );
    proxy.pass();
    assert_eq!(next_text(&events, T), "held");

    proxy.reset_all();
    assert!(proxy.wait_attempts(2, T), "{proxy:?}");
    wait_for(&events, T, is_reconnected);
    assert!(proxy.wait_connections(1, T), "{proxy:?}");
    client.close().unwrap();
    assert!(proxy.wait_connections(0, T), "{proxy:?}");
}

/// A transient refusal while a connection is being opened must cost one
/// attempt, not the client: Deribit answers 10040 `retry` ("the request can't
/// be processed right now and should be retried"), and a DeribitClient
/// reconnects forever by default.
#[test]
fn deribit_keeps_reconnecting_after_a_transient_error_in_on_connect() {
    use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig};
    use zen_websocket::testing::DeribitServer;

    let _w = watchdog("deribit_transient", Duration::from_secs(30));
    let server = DeribitServer::start().unwrap();
    let config = DeribitConfig::builder()
        .url(server.url())
        .credentials(
            DeribitServer::DEMO_CLIENT_ID,
            DeribitServer::DEMO_CLIENT_SECRET,
        )
        .client_options(|b| {
            b.retry_delay(RETRY)
                .max_retry_delay(MAX_RETRY)
                .close_timeout(Duration::from_millis(300))
        })
        .build()
        .unwrap();
    let client = DeribitClient::connect(config).unwrap();
    assert_eq!(client.subscribe(&[ORDERS]).unwrap(), [ORDERS]);
    let events = client.events();

    server.fail_method("public/set_heartbeat", 10040, "retry");
    assert_eq!(server.disconnect_all(), 1);
    // Two refused openings in a row, and no GaveUp after the first.
    for attempt in 1..=2 {
        let (ev, skipped) = wait_for(&events, T, |e| {
            matches!(e, Event::ReconnectFailed { .. } | Event::GaveUp { .. })
        });
        match ev {
            Event::ReconnectFailed { error, .. } => assert!(
                matches!(*error, Error::Rpc { code: 10040, .. }),
                "{error:?}"
            ),
            other => panic!(
                "attempt {attempt}: a transient error ended reconnection: {other:?} (after {skipped:#?})"
            ),
        }
    }

    // Once the venue accepts again, the next attempt opens the connection.
    server.clear_failures();
    let (ev, skipped) = wait_for(&events, T, |e| {
        matches!(
            e,
            Event::SubscriptionsRestored { .. } | Event::GaveUp { .. }
        )
    });
    let Event::SubscriptionsRestored { channels } = ev else {
        panic!("{ev:?} after {skipped:#?}")
    };
    assert_eq!(channels, [ORDERS]);
    assert!(skipped.iter().any(is_reconnected), "{skipped:#?}");
    assert!(client
        .request("private/get_cancel_on_disconnect", json!({}))
        .is_ok());
    client.close().unwrap();
}

/// A pool of two clients, each behind its own proxy: a stalled link is found by
/// the heartbeats, the pool routes around it with nothing sent to the dead
/// link, and the client is back in rotation once the link passes again.
#[test]
fn a_pool_routes_around_a_stalled_link_and_takes_it_back() {
    use zen_websocket::{ConnectionState, Pool, PoolEvent};

    let _w = watchdog("pool_stall", Duration::from_secs(60));
    let servers: Vec<MockServer> = (0..2).map(|_| MockServer::start().unwrap()).collect();
    for s in &servers {
        s.set_handler(|_| Reply::None);
    }
    let proxies: Vec<FaultProxy> = servers
        .iter()
        .map(|s| FaultProxy::start(s.addr()))
        .collect();
    let mut builder = Pool::builder()
        .health_interval(Duration::from_millis(50))
        .error_half_life(Duration::from_millis(100));
    for p in &proxies {
        builder = builder.client(
            through(p)
                .heartbeat_interval(Duration::from_millis(150))
                .heartbeat_timeout(Duration::from_millis(250))
                .build()
                .unwrap(),
        );
    }
    let pool = builder.start().unwrap();
    let events = pool.events();
    let ids: Vec<_> = pool.clients().iter().map(|(id, _)| *id).collect();
    let total = |servers: &[MockServer]| servers.iter().map(|s| s.received_count()).sum::<usize>();

    // Both links healthy: traffic spreads over both.
    for i in 0..100 {
        pool.send_balanced(format!("a{i}")).unwrap();
    }
    let deadline = Instant::now() + T;
    while total(&servers) < 100 {
        assert!(Instant::now() < deadline, "phase a not delivered");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        servers.iter().all(|s| s.received_count() > 0),
        "traffic did not spread"
    );

    // Stall the first link; its heartbeat fails it.
    proxies[0].stall_both();
    let stalled = ids[0];
    let deadline = Instant::now() + T;
    let ev = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok((id, PoolEvent::Client(Event::Disconnected { cause }))) if id == stalled => {
                break cause
            }
            Ok(_) => {}
            Err(e) => panic!("the stalled client was never declared dead: {e}"),
        }
    };
    assert!(matches!(*ev, Error::Timeout(TimeoutKind::Pong)), "{ev:?}");
    let on_stalled = servers[0].received_count();
    let on_other = servers[1].received_count();
    for i in 0..100 {
        let id = pool.send_balanced(format!("b{i}")).unwrap();
        assert_ne!(id, stalled, "a message was routed to the dead link");
    }
    servers[1].wait_for_received(on_other + 100, T).unwrap();
    assert_eq!(servers[0].received_count(), on_stalled);

    // The link passes again: the client reconnects and gets traffic again.
    proxies[0].pass();
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok((id, PoolEvent::Client(Event::Reconnected { .. }))) if id == stalled => break,
            Ok(_) => {}
            Err(e) => panic!("the stalled client never came back: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while servers[0].received_count() == on_stalled {
        assert!(
            Instant::now() < deadline,
            "the recovered client got no traffic: {:?}",
            pool.health()
        );
        pool.send_balanced(format!("c{n}")).unwrap();
        n += 1;
        // Pacing, so the health table (refreshed every 50 ms) sees the errors decay.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(pool
        .health()
        .iter()
        .all(|h| h.state == ConnectionState::Connected));
    pool.shutdown().unwrap();
}
