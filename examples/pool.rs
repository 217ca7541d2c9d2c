//! A supervised pool riding out a server outage: `cargo run --example pool`.
//!
//! It starts three embedded echo servers on 127.0.0.1 and a pool of three
//! clients, then sends 3000 messages with `send_balanced`. A third of the way
//! through it stops one server; two thirds through it starts it again. The
//! pool's health is printed as it goes, and every echo is counted per message
//! id from the pool's merged event channel. The last line is one JSON object:
//!
//! ```text
//! {"sent":3000,"received":3000,"duplicates":0,"failovers":0}
//! ```
//!
//! The exit status is 0 only if every message was echoed exactly once.
//!
//! The stop is graceful, as a server going down for maintenance does it: the
//! server refuses new upgrades, sends "going away" (1001) to its clients, and
//! is stopped once the pool sees its client down. Before that we wait for the
//! echoes of everything sent so far, so that no message is in flight to it:
//! a message written to a socket just before the server dies can be lost on
//! the way, and no client can know (that is what request/response protocols
//! and their ids are for). What this shows is that the pool moves the traffic
//! without losing or repeating a message on its side.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zen_websocket::pool::{ClientId, Pool, PoolEvent};
use zen_websocket::testing::{Disconnect, MockServer};
use zen_websocket::{Config, ConnectionState, Error, Event, Message};

const MESSAGES: usize = 3000;
/// Pace of the sends, so that the outage lasts long enough to watch the
/// client give up and the pool restart it.
const PACE: Duration = Duration::from_micros(700);
/// Bound on each wait of the run.
const WAIT: Duration = Duration::from_secs(10);
/// Bound on the whole run.
const WATCHDOG: Duration = Duration::from_secs(90);

fn main() -> ExitCode {
    start_watchdog(WATCHDOG);
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pool example failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

/// What the event consumer saw.
#[derive(Default)]
struct Echoes {
    /// Echoes per message id.
    counts: Vec<u32>,
    /// Echoes that were not ours.
    strays: usize,
}

fn run() -> Result<bool, Error> {
    let mut servers = [
        MockServer::start()?,
        MockServer::start()?,
        MockServer::start()?,
    ];
    let mut builder = Pool::builder()
        .health_interval(Duration::from_millis(50))
        .restart_delay(Duration::from_millis(100))
        .max_restart_delay(Duration::from_millis(300))
        .max_restarts(30)
        // Short, so that the restarted client earns traffic back within this
        // short run (the default, 30 s, suits long-running systems).
        .error_half_life(Duration::from_millis(100));
    for s in &servers {
        builder = builder.client(
            Config::builder(s.url())
                .connect_timeout(Duration::from_secs(2))
                .close_timeout(Duration::from_millis(500))
                // Quick pings, so that RTT shows in the health table.
                .heartbeat_interval(Duration::from_millis(100))
                // The client itself retries twice, then supervision takes over.
                .retry_count(Some(2))
                .retry_delay(Duration::from_millis(50))
                .max_retry_delay(Duration::from_millis(100))
                .build()?,
        );
    }
    let pool = builder.start()?;
    let victim = 1;
    let Some(victim_id) = id_of(&pool, &servers[victim]) else {
        eprintln!("no client talks to {}", servers[victim].url());
        return Ok(false);
    };
    println!(
        "pool of {} clients started; client {victim_id} talks to the server that will be stopped",
        pool.len()
    );

    // The consumer: counts echoes per message id, prints what supervision does.
    let echoes = Arc::new(Mutex::new(Echoes {
        counts: vec![0; MESSAGES],
        strays: 0,
    }));
    let echoed = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (events, echoes, echoed) = (pool.events(), echoes.clone(), echoed.clone());
        std::thread::Builder::new()
            .name("example-consumer".into())
            .spawn(move || consume(events, &echoes, &echoed))
            .map_err(|e| Error::Io {
                context: "spawning the consumer",
                source: e,
            })?
    };

    let started = Instant::now();
    let mut per_third: [HashMap<ClientId, usize>; 3] = Default::default();
    let mut send_errors = 0usize;
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            println!("--- {i} sent: stopping the server of client {victim_id}");
            // Nothing in flight to it (see the top of this file).
            wait("the echoes of everything sent so far", || {
                echoed.load(Ordering::Acquire) >= i - send_errors
            })?;
            servers[victim].refuse_upgrades(Some(503));
            servers[victim].simulate_disconnect(Disconnect::GoingAway);
            wait("the pool to see the client down", || {
                pool.health()
                    .iter()
                    .any(|h| h.id == victim_id && h.state != ConnectionState::Connected)
            })?;
            servers[victim].stop();
            print_health(&pool);
        }
        if i == 2 * MESSAGES / 3 {
            println!("--- {i} sent: starting the server again");
            print_health(&pool);
            servers[victim].refuse_upgrades(None);
            servers[victim].restart()?;
            wait("the client to be back", || {
                pool.health().iter().any(|h| {
                    h.id == victim_id && h.state == ConnectionState::Connected && h.score > 0
                })
            })?;
            print_health(&pool);
        }
        match pool.send_balanced(format!("msg-{i}")) {
            Ok(id) => *per_third[i * 3 / MESSAGES].entry(id).or_default() += 1,
            Err(e) => {
                send_errors += 1;
                eprintln!("send {i} failed: {}", e.explain());
            }
        }
        if i % 500 == 499 {
            println!("--- {} sent", i + 1);
            print_health(&pool);
        }
        std::thread::sleep(PACE);
    }
    let sent = MESSAGES - send_errors;
    let all_in = wait("every echo", || echoed.load(Ordering::Acquire) >= sent).is_ok();
    println!(
        "--- done in {:?}{}",
        started.elapsed(),
        if all_in { "" } else { " (some echoes missing)" }
    );
    print_health(&pool);
    for (third, counts) in per_third.iter().enumerate() {
        let mut counts: Vec<_> = counts.iter().map(|(id, n)| (*id, *n)).collect();
        counts.sort();
        let shown: Vec<String> = counts
            .iter()
            .map(|(id, n)| format!("client {id}: {n}"))
            .collect();
        println!("third {}: {}", third + 1, shown.join(", "));
    }
    let stats = pool.stats();
    println!(
        "pool stats: {} sent, {} failovers, {} restarts",
        stats.balanced_sends, stats.failovers, stats.restarts
    );
    pool.shutdown()?;
    if consumer.join().is_err() {
        eprintln!("the consumer thread panicked");
        return Ok(false);
    }

    let echoes = echoes.lock();
    let received: u64 = echoes.counts.iter().map(|&c| u64::from(c)).sum();
    let duplicates = echoes.counts.iter().filter(|&&c| c > 1).count();
    let missing = echoes.counts.iter().filter(|&&c| c == 0).count();
    if missing > 0 || echoes.strays > 0 {
        eprintln!(
            "{missing} message(s) never echoed, {} stray echo(es)",
            echoes.strays
        );
    }
    println!(
        "{{\"sent\":{sent},\"received\":{received},\"duplicates\":{duplicates},\"failovers\":{}}}",
        stats.failovers
    );
    Ok(send_errors == 0
        && missing == 0
        && duplicates == 0
        && echoes.strays == 0
        && received == MESSAGES as u64)
}

/// Read the merged events until the pool shuts down.
fn consume(
    events: zen_websocket::crossbeam_channel::Receiver<(ClientId, PoolEvent)>,
    echoes: &Mutex<Echoes>,
    echoed: &AtomicUsize,
) {
    for (id, event) in events.iter() {
        match event {
            PoolEvent::Client(Event::Message(Message::Text(text))) => {
                let n = text
                    .strip_prefix("msg-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n < MESSAGES);
                let mut e = echoes.lock();
                match n {
                    Some(n) => e.counts[n] += 1,
                    None => e.strays += 1,
                }
                drop(e);
                echoed.fetch_add(1, Ordering::Release);
            }
            PoolEvent::Client(Event::Message(_)) => echoes.lock().strays += 1,
            PoolEvent::Client(Event::Disconnected { cause }) => {
                println!("  client {id}: disconnected ({cause})")
            }
            PoolEvent::Client(Event::GaveUp { attempts, .. }) => {
                println!("  client {id}: gave up reconnecting after {attempts} attempts")
            }
            PoolEvent::Restarting { attempt, delay, .. } => {
                println!("  client {id}: pool restart {attempt} in {delay:?}")
            }
            PoolEvent::RestartFailed { attempt, error } => {
                println!("  client {id}: pool restart {attempt} failed ({error})")
            }
            PoolEvent::Restarted { attempt } => {
                println!("  client {id}: restarted by the pool (attempt {attempt})")
            }
            PoolEvent::Client(Event::Reconnected { attempt }) => {
                println!("  client {id}: reconnected by itself (attempt {attempt})")
            }
            PoolEvent::Failed { reason } => println!("  client {id}: FAILED: {reason}"),
            _ => {}
        }
    }
}

/// The pool client that talks to `server`.
fn id_of(pool: &Pool, server: &MockServer) -> Option<ClientId> {
    pool.health()
        .into_iter()
        .find(|h| h.url == server.url())
        .map(|h| h.id)
}

/// Poll `cond` every 2 ms until it holds, for at most [`WAIT`].
fn wait(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() >= deadline {
            eprintln!("timed out waiting for {what}");
            return Err(Error::Timeout(zen_websocket::TimeoutKind::Wait));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn print_health(pool: &Pool) {
    for h in pool.health() {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.1}ms", d.as_secs_f64() * 1e3)
            })
        };
        println!(
            "  client {} {:<13} score {:>3}  rtt {:>7} p99 {:>7}  errors {:>5.2}  restarts {}  {:?}",
            h.id,
            format!("{:?}", h.state),
            h.score,
            ms(h.rtt),
            ms(h.rtt_p99),
            h.recent_errors,
            h.restarts,
            h.supervision,
        );
    }
}

/// Abort the run if it hangs.
fn start_watchdog(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("example-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("the pool example exceeded {limit:?}; aborting");
            std::process::exit(2);
        });
}
