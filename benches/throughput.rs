//! Throughput and latency of zen-websocket against raw tungstenite, on loopback.
//!
//! Run with `cargo bench --bench throughput`. Everything runs in this process
//! against servers on 127.0.0.1:
//!
//! * (a) inbound flood: a cheap server writes pre-encoded 100-byte text frames
//!   (then a final `END` marker) straight onto the TCP socket; we measure the
//!   messages per second that reach the consumer (for zen-websocket a thread
//!   reading `client.events()`, for raw tungstenite the loop calling
//!   `ws.read()`). Best of [`FLOOD_ROUNDS`] rounds per side, a fresh connection
//!   per round, the sides interleaved round by round.
//! * (b) echo round trip of a 64-byte text message: p50 and p99.
//!
//! The last line printed is the machine-readable `RESULT ...` line.

mod support;

use std::net::TcpStream;
use std::sync::Arc;

use std::time::{Duration, Instant};
use support::*;

use tungstenite::Message as WsMessage;
use zen_websocket::{Client, Config, Event, Message};

/// Text messages per flood round (before the `END` marker).
const FLOOD_MESSAGES: usize = 1_000_000;
/// Rounds per side; the best is kept.
const FLOOD_ROUNDS: usize = 5;
/// The tuned read buffer for the zen-websocket flood client.
const TUNED_READ_BUFFER: usize = 128 * 1024;

/// Payload size of an echo message.
const ECHO_PAYLOAD: usize = 64;
const ECHO_WARMUP: usize = 1_000;
const ECHO_ITERATIONS: usize = 20_000;

/// The whole run is aborted after this.
const WATCHDOG: Duration = Duration::from_secs(240);

fn main() {
    start_watchdog(WATCHDOG);
    println!("zen-websocket throughput bench (loopback, 127.0.0.1)");
    println!(
        "config: zen-websocket clients run with heartbeats disabled (.heartbeat_interval(None)) \
         and no reconnection; raw tungstenite uses its default WebSocketConfig (128 KiB read buffer)"
    );

    // ---- (a) inbound flood -------------------------------------------------
    let flood = Server::start(
        "flood",
        Arc::<[u8]>::from(flood_stream(FLOOD_MESSAGES)),
        serve_flood,
    );
    let flood_url = flood.url();
    println!(
        "flood: {FLOOD_MESSAGES} x {FLOOD_PAYLOAD}-byte text messages per round + \"{END_MARKER}\", \
         best of {FLOOD_ROUNDS} rounds, fresh connection per round"
    );
    let mut raw_best = 0f64;
    let mut tuned_best = 0f64;
    let mut default_best = 0f64;
    for round in 1..=FLOOD_ROUNDS {
        let raw = flood_raw(&flood_url);
        println!("  round {round}: raw tungstenite                  {raw}");
        let tuned = flood_ours(&flood_url, Some(TUNED_READ_BUFFER));
        println!("  round {round}: zen-websocket (read buf 128 KiB) {tuned}");
        let default = flood_ours(&flood_url, None);
        println!("  round {round}: zen-websocket (default read buf)  {default}");
        raw_best = raw_best.max(raw.rate);
        tuned_best = tuned_best.max(tuned.rate);
        default_best = default_best.max(default.rate);
    }
    let flood_ratio = tuned_best / raw_best;
    println!(
        "flood best: raw tungstenite          {:>12.0} msg/s",
        raw_best
    );
    println!(
        "flood best: zen-websocket (128 KiB)  {:>12.0} msg/s  ratio {:.2}",
        tuned_best, flood_ratio
    );
    println!(
        "flood best: zen-websocket (default)  {:>12.0} msg/s  ratio {:.2}",
        default_best,
        default_best / raw_best
    );
    println!("note: RESULT flood_ratio uses the tuned client (.read_buffer_size(128 * 1024))");
    flood.stop();

    // ---- (b) echo round trip -----------------------------------------------
    let echo = Server::start("echo", Arc::new(()), serve_echo);
    let echo_url = echo.url();
    println!(
        "echo: {ECHO_PAYLOAD}-byte text, {ECHO_WARMUP} warm-up + {ECHO_ITERATIONS} timed round trips"
    );
    let ours = rtt_ours(&echo_url);
    println!("  zen-websocket   {ours}");
    let raw = rtt_raw(&echo_url);
    println!("  raw tungstenite {raw}");
    echo.stop();

    println!(
        "RESULT flood_ratio={:.2} rtt_p50_us={:.1} raw_rtt_p50_us={:.1} rtt_p99_us={:.1} raw_rtt_p99_us={:.1}",
        flood_ratio, ours.p50_us, raw.p50_us, ours.p99_us, raw.p99_us
    );
}

// ---- (a) flood clients ------------------------------------------------------

struct FloodRound {
    rate: f64,
    elapsed: Duration,
    cpu: Option<Duration>,
}

impl std::fmt::Display for FloodRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>12.0} msg/s  ({:>7.1} ms",
            self.rate,
            self.elapsed.as_secs_f64() * 1e3
        )?;
        if let Some(cpu) = self.cpu {
            // Process-wide CPU (client threads + the cheap server thread), so it
            // may exceed wall time on two cores.
            write!(
                f,
                ", process CPU ~{:.0} ms = {:.2} µs/msg",
                cpu.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e6 / FLOOD_MESSAGES as f64
            )?;
        }
        write!(f, ")")
    }
}

fn flood_round(elapsed: Duration, cpu: Option<Duration>) -> FloodRound {
    FloodRound {
        // The clock runs from the first message to the END marker.
        rate: (FLOOD_MESSAGES - 1) as f64 / elapsed.as_secs_f64(),
        elapsed,
        cpu,
    }
}

fn bench_config(url: &str) -> zen_websocket::ConfigBuilder {
    Config::builder(url)
        .heartbeat_interval(None)
        .reconnect_on_error(false)
}

/// zen-websocket: the consumer is a separate thread reading `client.events()`.
fn flood_ours(url: &str, read_buffer: Option<usize>) -> FloodRound {
    let mut builder = bench_config(url);
    if let Some(n) = read_buffer {
        builder = builder.read_buffer_size(n);
    }
    let config = builder.build().expect("building the flood client config");
    let cpu0 = process_cpu();
    let client = Client::connect(config).expect("connecting the zen-websocket flood client");
    let events = client.events();
    let consumer = std::thread::Builder::new()
        .name("bench-flood-consumer".into())
        .spawn(move || {
            let mut count = 0usize;
            let mut first = None;
            loop {
                // The fast path takes what is queued without reading the clock
                // (`recv_timeout` computes a deadline on every call); only an
                // empty channel falls back to the bounded blocking wait.
                let next = match events.try_recv() {
                    Ok(ev) => Ok(ev),
                    Err(_) => events.recv_timeout(READ_TIMEOUT),
                };
                match next {
                    Ok(Event::Message(Message::Text(t))) => {
                        if t == END_MARKER {
                            break;
                        }
                        assert_eq!(t.len(), FLOOD_PAYLOAD, "unexpected flood message");
                        first.get_or_insert_with(Instant::now);
                        count += 1;
                    }
                    Ok(Event::Connected { .. }) => {}
                    Ok(other) => panic!("unexpected event during the flood: {other:?}"),
                    Err(e) => panic!("no flood message within {READ_TIMEOUT:?}: {e}"),
                }
            }
            let first = first.expect("the flood delivered no message");
            (count, first.elapsed())
        })
        .expect("spawning the consumer thread");
    let (count, elapsed) = consumer.join().expect("the flood consumer panicked");
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    assert_eq!(count, FLOOD_MESSAGES, "zen-websocket lost flood messages");
    client.close().expect("closing the flood client");
    flood_round(elapsed, cpu)
}

fn raw_connect(url: &str) -> tungstenite::WebSocket<TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let stream = TcpStream::connect(&addr).expect("connecting the raw tungstenite client");
    configure(&stream).expect("configuring the raw client socket");
    let (ws, _response) = tungstenite::client::client(url, stream)
        .map_err(|e| e.to_string())
        .expect("raw tungstenite handshake");
    ws
}

fn raw_close(mut ws: tungstenite::WebSocket<TcpStream>) {
    ws.close(None).expect("sending the raw close frame");
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("raw close handshake failed: {e}"),
        }
    }
}

/// Raw tungstenite: the consumer is the loop calling `ws.read()`.
fn flood_raw(url: &str) -> FloodRound {
    let cpu0 = process_cpu();
    let mut ws = raw_connect(url);
    let mut count = 0usize;
    let mut first = None;
    loop {
        match ws.read().expect("raw flood read") {
            WsMessage::Text(t) => {
                if t.as_str() == END_MARKER {
                    break;
                }
                assert_eq!(t.len(), FLOOD_PAYLOAD, "unexpected flood message");
                first.get_or_insert_with(Instant::now);
                count += 1;
            }
            other => panic!("unexpected raw flood message: {other:?}"),
        }
    }
    let elapsed = first.expect("the flood delivered no message").elapsed();
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    assert_eq!(count, FLOOD_MESSAGES, "raw tungstenite lost flood messages");
    raw_close(ws);
    flood_round(elapsed, cpu)
}

// ---- (b) echo clients -------------------------------------------------------

struct Rtt {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

impl std::fmt::Display for Rtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:>7.1} µs  p99 {:>7.1} µs  mean {:>7.1} µs  max {:>8.1} µs",
            self.p50_us, self.p99_us, self.mean_us, self.max_us
        )
    }
}

fn summarize(mut samples: Vec<Duration>) -> Rtt {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |p: usize| us(samples[(samples.len() * p / 100).min(samples.len() - 1)]);
    Rtt {
        p50_us: at(50),
        p99_us: at(99),
        mean_us: samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64,
        max_us: us(*samples.last().expect("no samples")),
    }
}

fn echo_payload() -> String {
    (0..ECHO_PAYLOAD)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect()
}

/// zen-websocket: `send_text`, then wait for the echo on `events()`.
fn rtt_ours(url: &str) -> Rtt {
    let config = bench_config(url)
        .build()
        .expect("building the echo client config");
    let client = Client::connect(config).expect("connecting the zen-websocket echo client");
    let events = client.events();
    let payload = echo_payload();
    let mut samples = Vec::with_capacity(ECHO_ITERATIONS);
    for i in 0..ECHO_WARMUP + ECHO_ITERATIONS {
        let t0 = Instant::now();
        client
            .send_text(payload.as_str())
            .expect("sending an echo message");
        loop {
            match events.recv_timeout(READ_TIMEOUT) {
                Ok(Event::Message(Message::Text(t))) => {
                    assert_eq!(t.len(), ECHO_PAYLOAD, "unexpected echo");
                    break;
                }
                Ok(Event::Connected { .. }) => {}
                Ok(other) => panic!("unexpected event during the echo test: {other:?}"),
                Err(e) => panic!("no echo within {READ_TIMEOUT:?}: {e}"),
            }
        }
        if i >= ECHO_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    client.close().expect("closing the echo client");
    summarize(samples)
}

/// Raw tungstenite: `ws.send`, then `ws.read`.
fn rtt_raw(url: &str) -> Rtt {
    let mut ws = raw_connect(url);
    let payload = echo_payload();
    let mut samples = Vec::with_capacity(ECHO_ITERATIONS);
    for i in 0..ECHO_WARMUP + ECHO_ITERATIONS {
        let t0 = Instant::now();
        ws.send(WsMessage::text(payload.as_str()))
            .expect("sending a raw echo message");
        match ws.read().expect("reading a raw echo") {
            WsMessage::Text(t) => assert_eq!(t.len(), ECHO_PAYLOAD, "unexpected echo"),
            other => panic!("unexpected raw echo: {other:?}"),
        }
        if i >= ECHO_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    raw_close(ws);
    summarize(samples)
}

// ---- helpers ----------------------------------------------------------------

/// User + system CPU time of the whole process, from /proc (Linux only; `None`
/// elsewhere). Assumes the usual 100 Hz clock tick, so it is coarse (10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
