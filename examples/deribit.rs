//! The Deribit adapter: `cargo run --example deribit`.
//!
//! With no arguments it starts the embedded `DeribitServer` on 127.0.0.1 (no
//! network needed), connects with the demo credentials, subscribes to
//! `ticker.BTC-PERPETUAL.100ms`, has the server publish a few ticks, prints
//! them, asks `public/get_time`, closes and exits 0.
//!
//! With `--live` it does the same against Deribit's test network
//! (`wss://test.deribit.com/ws/api/v2`), which needs internet access; the real
//! venue publishes the ticks. Set `DERIBIT_CLIENT_ID` and
//! `DERIBIT_CLIENT_SECRET` (a testnet API key) to authenticate; without them
//! the example stays on public data. Any failure exits non-zero with the
//! error's explanation.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig, Notification};
use zen_websocket::testing::DeribitServer;
use zen_websocket::{Error, Event, TimeoutKind};

const CHANNEL: &str = "ticker.BTC-PERPETUAL.100ms";
const TICKS: usize = 3;

fn main() -> ExitCode {
    let live = std::env::args().skip(1).any(|a| a == "--live");
    match run(live) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deribit example failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

fn run(live: bool) -> Result<(), Error> {
    // Keep the local server alive for the whole run when we started it.
    let (config, server) = if live {
        let mut builder = DeribitConfig::builder();
        match (
            std::env::var("DERIBIT_CLIENT_ID"),
            std::env::var("DERIBIT_CLIENT_SECRET"),
        ) {
            (Ok(id), Ok(secret)) => builder = builder.credentials(id, secret),
            _ => println!("no DERIBIT_CLIENT_ID/DERIBIT_CLIENT_SECRET: public data only"),
        }
        (builder.build()?, None)
    } else {
        let server = DeribitServer::start()?;
        println!("started the Deribit test server at {}", server.url());
        let config = DeribitConfig::builder()
            .url(server.url())
            .credentials(
                DeribitServer::DEMO_CLIENT_ID,
                DeribitServer::DEMO_CLIENT_SECRET,
            )
            .build()?;
        (config, Some(server))
    };

    let client = DeribitClient::connect(config)?;
    match client.tokens() {
        // Tokens' Debug hides the tokens themselves.
        Some(tokens) => println!(
            "connected to {} and authenticated: {tokens:?}",
            client.config().url()
        ),
        None => println!("connected to {} (public access)", client.config().url()),
    }

    let confirmed = client.subscribe(&[CHANNEL])?;
    println!("subscribed to {confirmed:?}");
    if let Some(server) = &server {
        for i in 0..TICKS {
            let price = 42_000.0 + i as f64 * 0.5;
            server.publish(
                CHANNEL,
                json!({"instrument_name": "BTC-PERPETUAL", "mark_price": price, "timestamp": i}),
            );
        }
    }

    let events = client.events();
    let deadline = Instant::now() + Duration::from_secs(if live { 30 } else { 5 });
    let mut seen = 0;
    while seen < TICKS {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .map_err(|_| Error::Timeout(TimeoutKind::Wait))?;
        match Notification::from_event(event) {
            Ok(n) => {
                seen += 1;
                println!(
                    "tick {seen} on {}: mark price {}",
                    n.channel, n.data["mark_price"]
                );
            }
            Err(e) if e.is_terminal() => return Err(Error::Closed),
            Err(Event::Reconnecting { attempt, delay, .. }) => {
                println!("reconnecting (attempt {attempt}) in {delay:?}")
            }
            Err(_) => {}
        }
    }

    let now_ms = client.request("public/get_time", json!({}))?;
    println!("server time: {now_ms} ms since the epoch");
    client.close()?;
    println!("closed");
    Ok(())
}
