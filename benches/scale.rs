//! Many idle connections: resident memory per connection and CPU while idle.
//!
//! Run with `cargo bench --bench scale` (`SCALE_CONNS` changes the count,
//! default 1000). The server runs in a child process (this same binary, started
//! with `ZEN_SCALE_SERVER=1`) so that the figures are the client's alone. Every
//! client keeps heartbeats on (`SCALE_HEARTBEAT_MS`, default 5000, so pings do
//! happen during the idle window) and the default buffer sizes.
//!
//! The last line is `RESULT conns=<n> rss_per_conn_kib=<n> idle_cpu_pct=<n>`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zen_websocket::testing::MockServer;
use zen_websocket::{Client, Config};

fn main() {
    if std::env::var_os("ZEN_SCALE_SERVER").is_some() {
        serve();
        return;
    }
    support::start_watchdog(Duration::from_secs(300));
    let conns: usize = env_or("SCALE_CONNS", 1000);
    let heartbeat = Duration::from_millis(env_or("SCALE_HEARTBEAT_MS", 5000));
    let idle = Duration::from_secs(env_or("SCALE_IDLE_SECS", 10));

    // Three descriptors per connection (the socket and two clones); make sure
    // the soft limit allows them. The limit is inherited, so check, not set.
    if let Some(limit) = open_files_limit() {
        assert!(
            limit as usize > conns * 3 + 64,
            "raise the open-files limit (ulimit -n {}) for {conns} connections",
            conns * 3 + 64
        );
    }

    let exe = std::env::current_exe().expect("the bench's own path");
    let mut child = Command::new(exe)
        .env("ZEN_SCALE_SERVER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server process");
    let mut lines = BufReader::new(child.stdout.take().expect("server stdout")).lines();
    let url = lines
        .next()
        .expect("the server's URL")
        .expect("reading the server's URL");
    println!("server process {} at {url}", child.id());

    let rss_before = rss_kib();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let config = Config::builder(url.as_str())
            .heartbeat_interval(heartbeat)
            .build()
            .expect("config");
        clients.push(Client::connect(config).unwrap_or_else(|e| panic!("connection {i}: {e}")));
    }
    println!("opened {conns} connections in {:?}", started.elapsed());
    // Let every thread reach its idle wait before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib();
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / conns as f64;
    println!("resident: {rss_before} KiB before, {rss_after} KiB after = {per_conn:.1} KiB per connection");

    let cpu0 = cpu_ticks();
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let wall = t0.elapsed();
    let cpu = cpu_ticks() - cpu0;
    // /proc reports clock ticks, 100 per second on Linux.
    let cpu_pct = cpu as f64 / 100.0 / wall.as_secs_f64() * 100.0;
    let pings: u64 = clients.iter().map(|c| c.stats().pings_sent).sum();
    let pongs: u64 = clients.iter().map(|c| c.stats().pongs_received).sum();
    println!(
        "idle {wall:?}: {cpu} ticks = {cpu_pct:.2}% of one core; {pings} pings, {pongs} pongs"
    );
    assert!(
        clients.iter().all(Client::is_connected),
        "a connection dropped while idle"
    );

    let t = Instant::now();
    drop(clients);
    println!("closed all in {:?}", t.elapsed());
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "RESULT conns={conns} rss_per_conn_kib={:.0} idle_cpu_pct={cpu_pct:.2}",
        per_conn.ceil()
    );
}

/// The child: a testing server that lives until stdin closes.
fn serve() {
    let server = MockServer::start().expect("starting the server");
    println!("{}", server.url());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
