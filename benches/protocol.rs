//! JSON-RPC request throughput of zen-websocket against raw tungstenite, on loopback.
//!
//! Run with `cargo bench --bench protocol`. Everything runs in this process
//! against a local JSON-RPC echo server (one thread serving each connection,
//! answering `{"jsonrpc":"2.0","id":<id>,"result":<params>}` in order):
//!
//! * sequential: one thread calls `client.request()` in a loop;
//! * concurrent: 8 threads call `request()` on one shared client (one
//!   connection; responses are correlated by id);
//! * raw: one thread with raw tungstenite and hand-written correlation (send
//!   the request, read until the response with its id), doing the same JSON
//!   work as the client (serde_json to encode the request and to read the
//!   response).
//!
//! Heartbeats are off. Best of [`ROUNDS`] rounds per case, the cases
//! interleaved round by round. The last line printed is the machine-readable
//! `RESULT ...` line.

mod support;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tungstenite::Message as WsMessage;
use zen_websocket::{Client, Config};

/// Requests per sequential round (both clients).
const SEQ_REQUESTS: usize = 10_000;
/// Threads of the concurrent case.
const THREADS: usize = 8;
/// Requests per thread per concurrent round.
const PER_THREAD: usize = 2_500;
/// Requests before each timed round.
const WARMUP: usize = 1_000;
/// Rounds per case; the best is kept.
const ROUNDS: usize = 5;
/// The method every request calls.
const METHOD: &str = "bench/echo";
/// The whole run is aborted after this.
const WATCHDOG: Duration = Duration::from_secs(300);
/// Bound on one request of the zen-websocket client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    start_watchdog(WATCHDOG);
    println!("zen-websocket JSON-RPC request bench (loopback, 127.0.0.1)");
    println!(
        "machine: {} cores, load average {} (a busy machine makes every figure noisy)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    );
    println!(
        "config: zen-websocket clients run with heartbeats disabled and no reconnection; \
         sequential {SEQ_REQUESTS} requests, concurrent {THREADS} threads x {PER_THREAD}, \
         {WARMUP} warm-up requests, best of {ROUNDS} rounds"
    );

    let server = Server::start("jsonrpc", Arc::new(()), serve_rpc);
    let url = server.url();
    let (mut seq_best, mut conc_best, mut raw_best) =
        (Run::default(), Run::default(), Run::default());
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        // Alternate which sequential case goes first, so that a burst of load
        // from elsewhere on the machine does not always hit the same one.
        let (raw, seq) = if round % 2 == 1 {
            let raw = raw_sequential(&url);
            (raw, ours_sequential(&url))
        } else {
            let seq = ours_sequential(&url);
            (raw_sequential(&url), seq)
        };
        println!("  round {round}: raw tungstenite, sequential   {raw}");
        println!(
            "  round {round}: zen-websocket, sequential     {seq}  (ratio {:.2})",
            seq.rps / raw.rps
        );
        let conc = ours_concurrent(&url);
        println!("  round {round}: zen-websocket, {THREADS} threads      {conc}");
        ratios.push(seq.rps / raw.rps);
        raw_best = raw_best.best(raw);
        seq_best = seq_best.best(seq);
        conc_best = conc_best.best(conc);
    }
    server.stop();

    ratios.sort_by(f64::total_cmp);
    let ratio = seq_best.rps / raw_best.rps;
    println!("best: raw tungstenite sequential   {raw_best}");
    println!("best: zen-websocket sequential     {seq_best}");
    println!("best: zen-websocket {THREADS} threads      {conc_best}");
    println!(
        "seq/raw: best-of ratio {ratio:.2}, median per-round ratio {:.2} (target >= 0.60); \
         concurrent/seq {:.2}",
        ratios[ratios.len() / 2],
        conc_best.rps / seq_best.rps
    );
    println!(
        "RESULT seq_rps={:.0} concurrent_rps={:.0} raw_seq_rps={:.0}",
        seq_best.rps, conc_best.rps, raw_best.rps
    );
}

/// One timed round: the request rate, and the process CPU each request cost
/// (client and server threads together; on a busy machine the rate suffers
/// from waiting for a core, the CPU cost much less).
#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    cpu_us: Option<f64>,
}

impl Run {
    fn measure(requests: usize, f: impl FnOnce()) -> Run {
        let cpu0 = process_cpu();
        let t0 = Instant::now();
        f();
        let elapsed = t0.elapsed();
        let cpu = process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        Run {
            rps: requests as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.map(|c| c.as_secs_f64() * 1e6 / requests as f64),
        }
    }

    fn best(self, other: Run) -> Run {
        if other.rps > self.rps {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>9.0} req/s", self.rps)?;
        if let Some(cpu) = self.cpu_us {
            write!(f, "  (process CPU ~{cpu:>5.1} µs/req)")?;
        }
        Ok(())
    }
}

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

// ---- the server -------------------------------------------------------------

/// Answer every request with its params as the result, in order, until the
/// client closes. Reads the id and params straight from the text (cheap: the
/// server must not be the bottleneck), with serde_json as the fallback.
fn serve_rpc(stream: TcpStream, _: &()) -> Result<(), String> {
    configure(&stream)?;
    let mut ws = tungstenite::accept(stream).map_err(|e| format!("handshake: {e}"))?;
    loop {
        match ws.read() {
            Ok(WsMessage::Text(t)) => {
                let reply = answer(t.as_str())?;
                ws.send(WsMessage::text(reply))
                    .map_err(|e| format!("answering: {e}"))?;
            }
            Ok(WsMessage::Close(_)) => return finish_server(&mut ws),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

fn answer(request: &str) -> Result<String, String> {
    if let (Some(id), Some(params)) = (scan_id(request), scan_params(request)) {
        return Ok(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{params}}}"#
        ));
    }
    let v: Value = serde_json::from_str(request).map_err(|e| format!("bad request: {e}"))?;
    Ok(json!({"jsonrpc": "2.0", "id": v["id"], "result": v["params"]}).to_string())
}

/// The digits after the first `"id":` (the bench's params hold no `"id"` key).
fn scan_id(text: &str) -> Option<&str> {
    let start = text.find(r#""id":"#)? + 5;
    let len = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    (len > 0).then(|| &text[start..start + len])
}

/// `"params"` is the last member in both orders serde_json may write (sorted
/// keys, or insertion order), so the value runs to the closing brace.
fn scan_params(text: &str) -> Option<&str> {
    let start = text.find(r#""params":"#)? + 9;
    text.strip_suffix('}').and_then(|t| t.get(start..))
}

// ---- the clients ------------------------------------------------------------

fn bench_config(url: &str) -> Config {
    Config::builder(url)
        .heartbeat_interval(None)
        .reconnect_on_error(false)
        .request_timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the bench client config")
}

fn check(result: &Value, n: usize) {
    assert_eq!(
        result["n"].as_u64(),
        Some(n as u64),
        "wrong result: {result}"
    );
}

/// One thread, `request()` in a loop.
fn ours_sequential(url: &str) -> Run {
    let client = Client::connect(bench_config(url)).expect("connecting the bench client");
    for n in 0..WARMUP {
        check(
            &client
                .request(METHOD, json!({"n": n}))
                .expect("warm-up request"),
            n,
        );
    }
    let run = Run::measure(SEQ_REQUESTS, || {
        for n in 0..SEQ_REQUESTS {
            check(
                &client.request(METHOD, json!({"n": n})).expect("request"),
                n,
            );
        }
    });
    client.close().expect("closing the bench client");
    run
}

/// `THREADS` threads sharing one client (one connection).
fn ours_concurrent(url: &str) -> Run {
    let client = Client::connect(bench_config(url)).expect("connecting the bench client");
    for n in 0..WARMUP {
        check(
            &client
                .request(METHOD, json!({"n": n}))
                .expect("warm-up request"),
            n,
        );
    }
    let start = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            let start = start.clone();
            std::thread::Builder::new()
                .name(format!("bench-caller-{t}"))
                .spawn(move || {
                    start.wait();
                    for i in 0..PER_THREAD {
                        let n = t * PER_THREAD + i;
                        check(
                            &client.request(METHOD, json!({"n": n})).expect("request"),
                            n,
                        );
                    }
                })
                .expect("spawning a caller thread")
        })
        .collect();
    let run = Run::measure(THREADS * PER_THREAD, || {
        start.wait();
        for w in workers {
            w.join().expect("a caller thread panicked");
        }
    });
    assert_eq!(client.stats().pending_requests, 0);
    client.close().expect("closing the bench client");
    run
}

/// Raw tungstenite on one thread: send, then read until the matching id.
fn raw_sequential(url: &str) -> Run {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let stream = TcpStream::connect(addr).expect("connecting the raw client");
    configure(&stream).expect("configuring the raw client socket");
    let (mut ws, _) = tungstenite::client::client(url, stream)
        .map_err(|e| e.to_string())
        .expect("raw tungstenite handshake");
    let mut call = |n: usize| {
        let id = n as u64 + 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": METHOD, "params": {"n": n}});
        ws.send(WsMessage::text(request.to_string()))
            .expect("sending a raw request");
        loop {
            match ws.read().expect("reading a raw response") {
                WsMessage::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("a JSON response");
                    if v["id"].as_u64() == Some(id) {
                        check(&v["result"], n);
                        return;
                    }
                }
                WsMessage::Close(_) => panic!("the server closed the raw connection"),
                _ => {}
            }
        }
    };
    for n in 0..WARMUP {
        call(n);
    }
    let run = Run::measure(SEQ_REQUESTS, || {
        for n in 0..SEQ_REQUESTS {
            call(n);
        }
    });
    ws.close(None).expect("sending the raw close frame");
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("raw close handshake failed: {e}"),
        }
    }
    run
}
