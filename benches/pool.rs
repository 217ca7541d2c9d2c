//! What health-based routing costs: messages per second through
//! `Pool::send_balanced` against `Client::send_text` on one client, same
//! servers, same run.
//!
//! Run with `cargo bench --bench pool`. Three embedded servers on 127.0.0.1
//! record what they receive and answer nothing (so no events pile up);
//! heartbeats are off. Four ways of sending [`MESSAGES`] 64-byte text
//! messages are measured in each round (the order rotates between rounds),
//! and the servers must hold everything before the next one starts:
//!
//! - `direct`: `send_text` on one client (to the first server);
//! - `balanced`: `send_balanced` on a pool of three clients, one per server;
//! - `direct x3`: `send_text` on three direct clients in turn, one per
//!   server: the pool's spread without its routing;
//! - `pool of 1`: `send_balanced` on a pool with one client, to the first
//!   server: the routing on exactly the path of `direct`.
//!
//! The best of [`ROUNDS`] rounds per side is kept. The `RESULT` line (the
//! last one printed) compares `balanced` with `direct`, as asked:
//! `balanced_ratio = balanced / direct`, `route_us = 1/balanced - 1/direct`
//! in microseconds. On a machine with few cores the server side weighs in
//! that comparison (three busy server connections take CPU from the sender),
//! so the line before it shows the two comparisons that isolate routing:
//! `balanced` against `direct x3`, and `pool of 1` against `direct`.

use std::time::{Duration, Instant};

use zen_websocket::pool::Pool;
use zen_websocket::testing::{MockServer, Reply};
use zen_websocket::{Client, Config};

/// Messages per side per round.
const MESSAGES: usize = 50_000;
/// Rounds; the best rate per side is kept.
const ROUNDS: usize = 12;
/// Payload size.
const PAYLOAD: usize = 64;
/// Bound on waiting for the servers to catch up after a side.
const DRAIN: Duration = Duration::from_secs(60);
/// The whole run is aborted after this.
const WATCHDOG: Duration = Duration::from_secs(300);

/// One way of sending.
enum Side {
    Direct(Client),
    InTurn(Vec<Client>),
    Balanced(Pool),
}

impl Side {
    /// Send `n` messages; the rate in messages per second.
    fn run(&self, payload: &str, n: usize) -> f64 {
        let started = Instant::now();
        for i in 0..n {
            let sent = match self {
                Side::Direct(c) => c.send_text(payload),
                Side::InTurn(cs) => cs[i % cs.len()].send_text(payload),
                Side::Balanced(p) => p.send_balanced(payload).map(|_| ()),
            };
            if let Err(e) = sent {
                fail("a send", e);
            }
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    fn close(self) {
        let closed = match self {
            Side::Direct(c) => c.close(),
            Side::InTurn(cs) => cs.iter().try_for_each(Client::close),
            Side::Balanced(p) => {
                let stats = p.stats();
                assert_eq!(stats.failovers, 0, "no failover expected: {stats:?}");
                p.shutdown()
            }
        };
        if let Err(e) = closed {
            fail("closing", e);
        }
    }
}

fn main() {
    start_watchdog(WATCHDOG);
    println!("zen-websocket pool bench (loopback, 127.0.0.1)");
    println!(
        "{MESSAGES} x {PAYLOAD}-byte text messages per side per round, best of {ROUNDS} rounds; \
         3 servers that do not answer; heartbeats off"
    );
    let servers: Vec<MockServer> = (0..3)
        .map(|_| {
            let s = MockServer::start().unwrap_or_else(|e| fail("starting a server", e));
            s.set_handler(|_| Reply::None);
            s
        })
        .collect();
    let config = |s: &MockServer| {
        Config::builder(s.url())
            .heartbeat_interval(None)
            .write_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| fail("building a config", e))
    };
    let connect = |s: &MockServer| {
        Client::connect(config(s)).unwrap_or_else(|e| fail("connecting a client", e))
    };
    let pool = |servers: &[MockServer]| {
        servers
            .iter()
            .fold(Pool::builder(), |b, s| b.client(config(s)))
            .start()
            .unwrap_or_else(|e| fail("starting a pool", e))
    };
    let sides = [
        ("direct", Side::Direct(connect(&servers[0]))),
        ("balanced", Side::Balanced(pool(&servers))),
        (
            "direct x3",
            Side::InTurn(servers.iter().map(connect).collect()),
        ),
        ("pool of 1", Side::Balanced(pool(&servers[..1]))),
    ];
    let payload = "x".repeat(PAYLOAD);

    // Warm-up: connections, allocator, caches.
    for (_, side) in &sides {
        side.run(&payload, MESSAGES / 10);
        drain(&servers, MESSAGES / 10);
    }

    let mut best = [0f64; 4];
    for round in 0..ROUNDS {
        // Rotate the order so that no side always runs on a machine warmed
        // (or tired) by another.
        let mut rates = [0f64; 4];
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            rates[i] = sides[i].1.run(&payload, MESSAGES);
            drain(&servers, MESSAGES);
        }
        let shown: Vec<String> = sides
            .iter()
            .zip(rates)
            .map(|((name, _), r)| format!("{name} {r:>7.0}"))
            .collect();
        println!("  round {} (msg/s): {}", round + 1, shown.join("  "));
        for (b, r) in best.iter_mut().zip(rates) {
            *b = b.max(r);
        }
    }
    let [direct, balanced, in_turn, pool1] = best;
    let added_us = |routed: f64, plain: f64| (1.0 / routed - 1.0 / plain) * 1e6;
    println!(
        "best (msg/s): direct {direct:.0}, balanced {balanced:.0}, direct x3 {in_turn:.0}, \
         pool of 1 {pool1:.0}"
    );
    println!(
        "routing alone: balanced vs direct x3: ratio {:.2}, {:.2} us/msg; \
         pool of 1 vs direct: ratio {:.2}, {:.2} us/msg",
        balanced / in_turn,
        added_us(balanced, in_turn),
        pool1 / direct,
        added_us(pool1, direct)
    );
    for (_, side) in sides {
        side.close();
    }
    let (plain_ns, routed_ns) = no_io(&servers[0]);
    println!(
        "without I/O (rate-limited clients refuse before writing): send_text {plain_ns:.0} ns, \
         send_balanced_with(_, 1) on 3 such clients {routed_ns:.0} ns: routing plus the \
         failure's bookkeeping costs {:.2} us/msg",
        (routed_ns - plain_ns) / 1e3
    );
    println!(
        "RESULT balanced_ratio={:.2} route_us={:.2}",
        balanced / direct,
        added_us(balanced, direct)
    );
}

/// The CPU cost of routing alone: clients whose rate limit is spent refuse
/// every send before writing, so nothing touches a socket. `send_text` on
/// one of them against `send_balanced_with(_, 1)` on a pool of three: the
/// difference is the pick plus the bookkeeping of a failed attempt (the cause
/// list, the error count), an upper bound of what a successful pick costs.
fn no_io(server: &MockServer) -> (f64, f64) {
    const N: usize = 1_000_000;
    let limited = || {
        Config::builder(server.url())
            .heartbeat_interval(None)
            .rate_limit(zen_websocket::rate_limit::RateLimit::new(1.0, 1e-9))
            .build()
            .unwrap_or_else(|e| fail("building a config", e))
    };
    let spend = |c: &Client| {
        let _ = c.send_text("spend the only token");
    };
    let direct = Client::connect(limited()).unwrap_or_else(|e| fail("connecting", e));
    spend(&direct);
    let pool = Pool::builder()
        .clients(limited(), 3)
        .start()
        .unwrap_or_else(|e| fail("starting a pool", e));
    for (_, c) in pool.clients() {
        spend(&c);
    }
    let (mut plain, mut routed) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..N {
            if direct.send_text("x").is_ok() {
                fail("the rate limit", "a send went out");
            }
        }
        plain = plain.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        let t = Instant::now();
        for _ in 0..N {
            if pool.send_balanced_with("x", 1).is_ok() {
                fail("the rate limit", "a send went out");
            }
        }
        routed = routed.min(t.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    if let Err(e) = pool.shutdown().and_then(|()| direct.close()) {
        fail("closing", e);
    }
    server.clear_received();
    (plain, routed)
}

/// Wait until the servers hold all `sent` messages (so that one side's
/// backlog does not slow the next), then forget them.
fn drain(servers: &[MockServer], sent: usize) {
    let deadline = Instant::now() + DRAIN;
    loop {
        let received: usize = servers.iter().map(|s| s.received_count()).sum();
        if received >= sent {
            assert_eq!(received, sent, "the servers received more than was sent");
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("the servers got {received} of {sent} within {DRAIN:?}");
            std::process::exit(1);
        }
        // Nothing signals "all in" across three servers: poll with a deadline.
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in servers {
        s.clear_received();
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("pool bench: {what} failed: {e}");
    std::process::exit(1);
}

fn start_watchdog(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("bench-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("pool bench exceeded {limit:?}; aborting");
            std::process::exit(2);
        });
}
