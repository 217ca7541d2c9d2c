//! The Deribit adapter end to end: `cargo run --example deribit`.
//!
//! Where it connects comes from the environment:
//!
//! - `DERIBIT_URL`: the WebSocket endpoint, e.g. `wss://test.deribit.com/ws/api/v2`
//!   (Deribit's test network, the default when only a key is given);
//! - `DERIBIT_CLIENT_ID` and `DERIBIT_CLIENT_SECRET`: an API key (both or neither).
//!
//! With none of them set, it starts the embedded `DeribitServer` on 127.0.0.1
//! (no network needed), logs in with the server's demo key, and runs a thread
//! that publishes a trade and a ticker every 20 ms. `--live` still works, as a
//! shorthand for "Deribit's test network, with the key if one is set".
//!
//! Then it authenticates (when it has a key), enables Deribit's heartbeat
//! (`public/set_heartbeat`; the `test_request`s are answered by the client),
//! subscribes to `trades.BTC-PERPETUAL.raw` and `ticker.BTC-PERPETUAL.100ms`,
//! prints the first 5 notifications one per line, calls `public/get_time` and
//! prints the result, unsubscribes, closes and exits 0. Deribit serves `.raw`
//! channels to authenticated connections only, so a live run without a key
//! takes the trades at `100ms` instead.
//!
//! Any failure exits 1 with the error's explanation. Ctrl-C closes the
//! connection cleanly (close handshake, threads joined) and exits 130, the
//! shell's code for "stopped by SIGINT", since the run did not finish.
//!
//! The tests in `tests/deribit.rs` drive [`run`] and [`session`] directly.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use zen_websocket::adapters::deribit::{
    Credentials, DeribitClient, DeribitConfig, Notification, TESTNET_URL,
};
use zen_websocket::crossbeam_channel::{self, select, Receiver, RecvTimeoutError, TryRecvError};
use zen_websocket::testing::DeribitServer;
use zen_websocket::{ConfigError, Error, Event, TimeoutKind};

/// Every trade of BTC-PERPETUAL (authenticated connections only).
pub const TRADES: &str = "trades.BTC-PERPETUAL.raw";
/// The same trades aggregated over 100 ms, which public connections may have.
pub const TRADES_PUBLIC: &str = "trades.BTC-PERPETUAL.100ms";
/// BTC-PERPETUAL's ticker.
pub const TICKER: &str = "ticker.BTC-PERPETUAL.100ms";
/// How many notifications are printed.
pub const SHOWN: usize = 5;
/// How long the notifications may take: the local server publishes every
/// 20 ms; the real venue may be slower to start.
const LOCAL_WAIT: Duration = Duration::from_secs(5);
const LIVE_WAIT: Duration = Duration::from_secs(30);
/// How often the local publisher thread publishes.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// Deribit's platform heartbeat interval asked for (its minimum).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// `writeln!` into the output, as our error.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(|source| Error::Io { context: "printing", source })
    };
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The embedded `DeribitServer`, on loopback, with its demo key.
    Local,
    /// A real endpoint (`Credentials`' `Debug` hides the secret).
    Remote {
        /// The WebSocket URL.
        url: String,
        /// The API key, if any.
        credentials: Option<Credentials>,
    },
}

impl Target {
    /// From `DERIBIT_URL`, `DERIBIT_CLIENT_ID` and `DERIBIT_CLIENT_SECRET`
    /// (empty counts as unset), and `--live`.
    pub fn from_env(live: bool) -> Result<Target, Error> {
        Target::from_vars(live, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// The same, reading variables through `var`: local when nothing is set
    /// and `live` is false; else remote, at `DERIBIT_URL` or the testnet.
    pub fn from_vars(live: bool, var: impl Fn(&str) -> Option<String>) -> Result<Target, Error> {
        let half = |set: &'static str, missing: &str| {
            Error::Config(ConfigError::new(
                set,
                format!("is set but {missing} is not"),
            ))
        };
        let credentials = match (var("DERIBIT_CLIENT_ID"), var("DERIBIT_CLIENT_SECRET")) {
            (Some(id), Some(secret)) => Some(Credentials::new(id, secret)),
            (None, None) => None,
            (Some(_), None) => return Err(half("DERIBIT_CLIENT_ID", "DERIBIT_CLIENT_SECRET")),
            (None, Some(_)) => return Err(half("DERIBIT_CLIENT_SECRET", "DERIBIT_CLIENT_ID")),
        };
        let url = var("DERIBIT_URL");
        if url.is_none() && credentials.is_none() && !live {
            return Ok(Target::Local);
        }
        Ok(Target::Remote {
            url: url.unwrap_or_else(|| TESTNET_URL.to_owned()),
            credentials,
        })
    }
}

/// How a run ended (failures are errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole flow ran.
    Done,
    /// `stop` was rung (Ctrl-C) or its sender went away; the client was closed.
    Interrupted,
}

fn main() -> ExitCode {
    let live = std::env::args().skip(1).any(|a| a == "--live");
    // The handler only rings; the flow notices, closes the client and returns.
    let (stop, stopped) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        // Full: a ring is already pending.
        let _ = stop.try_send(());
    }) {
        eprintln!("deribit example failed: cannot handle Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = io::stdout().lock();
    match Target::from_env(live).and_then(|target| run(target, &stopped, &mut out)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => {
            eprintln!("interrupted: connection closed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("deribit example failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

/// The whole example for `target`, printing to `out`; ringing `stop` (or
/// dropping its sender) interrupts it.
pub fn run(target: Target, stop: &Receiver<()>, out: &mut dyn Write) -> Result<Outcome, Error> {
    match target {
        Target::Local => {
            // Alive for the whole run: dropping it stops the server.
            let server = DeribitServer::start()?;
            say!(out, "started the Deribit test server at {}", server.url())?;
            let config = local_config(&server)?;
            with_publisher(&server, || session(config, LOCAL_WAIT, stop, out))?
        }
        Target::Remote { url, credentials } => {
            let mut builder = DeribitConfig::builder()
                .url(url)
                .heartbeat_interval(HEARTBEAT);
            match credentials {
                Some(c) => builder = builder.credentials(c.client_id(), c.client_secret()),
                None => say!(
                    out,
                    "no DERIBIT_CLIENT_ID/DERIBIT_CLIENT_SECRET: public data only"
                )?,
            }
            session(builder.build()?, LIVE_WAIT, stop, out)
        }
    }
}

/// The configuration for the local `server`: its URL and demo key.
pub fn local_config(server: &DeribitServer) -> Result<DeribitConfig, Error> {
    Ok(DeribitConfig::builder()
        .url(server.url())
        .credentials(
            DeribitServer::DEMO_CLIENT_ID,
            DeribitServer::DEMO_CLIENT_SECRET,
        )
        .heartbeat_interval(HEARTBEAT)
        .build()?)
}

/// Run `body` while a thread publishes a trade and a ticker on `server` every
/// 20 ms; the thread is stopped and joined before this returns, whatever
/// `body` does.
pub fn with_publisher<R>(server: &DeribitServer, body: impl FnOnce() -> R) -> Result<R, Error> {
    thread::scope(|scope| {
        // Declared in the scope: when `body` returns or unwinds, dropping the
        // sender disconnects the channel, which ends the publisher's wait at
        // once, and the scope joins it.
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let publisher = thread::Builder::new()
            .name("deribit-example-publisher".to_owned())
            .spawn_scoped(scope, move || publish_until(server, &stopped))
            .map_err(|source| Error::Io {
                context: "spawning the publisher thread",
                source,
            })?;
        let result = body();
        drop(stop);
        if publisher.join().is_err() {
            eprintln!("the publisher thread panicked");
        }
        Ok(result)
    })
}

/// Publish until `stop` disconnects: its timeout is the tick.
fn publish_until(server: &DeribitServer, stop: &Receiver<()>) {
    let mut n: u64 = 0;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(PUBLISH_EVERY) {
        n += 1;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let price = DeribitServer::MARK_PRICE + (n % 20) as f64 * 0.5;
        server.publish(
            TRADES,
            json!([{
                "trade_seq": n,
                "trade_id": format!("demo-{n}"),
                "instrument_name": "BTC-PERPETUAL",
                "direction": if n % 2 == 0 { "buy" } else { "sell" },
                "price": price,
                "amount": 10 * (n % 5 + 1),
                "timestamp": now_ms,
            }]),
        );
        server.publish(
            TICKER,
            json!({
                "instrument_name": "BTC-PERPETUAL",
                "mark_price": price,
                "best_bid_price": price - 0.5,
                "best_ask_price": price + 0.5,
                "timestamp": now_ms,
            }),
        );
    }
}

/// Connect with `config` and run the flow, waiting up to `wait` for the
/// notifications; the client is closed on every path.
pub fn session(
    config: DeribitConfig,
    wait: Duration,
    stop: &Receiver<()>,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    let client = DeribitClient::connect(config)?;
    let outcome = flow(&client, wait, stop, out);
    // Dropping would close too; closing here reports its error.
    let closed = client.close();
    let outcome = outcome?;
    closed?;
    say!(out, "closed")?;
    Ok(outcome)
}

/// True once `stop` was rung or its sender is gone.
fn interrupted(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

fn flow(
    client: &DeribitClient,
    wait: Duration,
    stop: &Receiver<()>,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    let url = client.config().url();
    let trades = match client.tokens() {
        // Tokens' Debug hides the tokens themselves.
        Some(tokens) => {
            say!(out, "connected to {url}, authenticated: {tokens:?}")?;
            TRADES
        }
        None => {
            say!(out, "connected to {url} (public access)")?;
            TRADES_PUBLIC
        }
    };
    say!(
        out,
        "heartbeat: public/set_heartbeat every {:?}, test_requests answered automatically",
        client.config().heartbeat_interval()
    )?;
    if interrupted(stop) {
        return Ok(Outcome::Interrupted);
    }

    let confirmed = client.subscribe(&[trades, TICKER])?;
    say!(out, "subscribed to {}", confirmed.join(", "))?;
    let events = client.events();
    let deadline = Instant::now() + wait;
    let mut shown = 0;
    while shown < SHOWN {
        let left = deadline.saturating_duration_since(Instant::now());
        select! {
            recv(stop) -> _ => return Ok(Outcome::Interrupted),
            recv(events) -> event => {
                // Disconnected: the connection thread has ended.
                let event = event.map_err(|_| Error::Closed)?;
                match Notification::from_event(event) {
                    Ok(n) => {
                        shown += 1;
                        say!(out, "notification {shown}/{SHOWN} on {}: {}", n.channel, n.data)?;
                    }
                    Err(Event::Reconnecting { attempt, delay, cause }) => {
                        say!(out, "reconnecting (attempt {attempt}) in {delay:?}: {cause}")?;
                    }
                    Err(Event::GaveUp { last_error, .. }) => {
                        say!(out, "gave up reconnecting: {last_error}")?;
                        return Err(Error::Closed);
                    }
                    Err(e) if e.is_terminal() => return Err(Error::Closed),
                    Err(_) => {}
                }
            }
            default(left) => return Err(Error::Timeout(TimeoutKind::Wait)),
        }
    }
    if interrupted(stop) {
        return Ok(Outcome::Interrupted);
    }

    let now_ms = client.request("public/get_time", json!({}))?;
    say!(out, "public/get_time: {now_ms} (ms since the Unix epoch)")?;
    client.unsubscribe(&[trades, TICKER])?;
    say!(out, "unsubscribed from {trades}, {TICKER}")?;
    Ok(Outcome::Done)
}
