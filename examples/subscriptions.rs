//! Subscriptions that survive a reconnect: `cargo run --example subscriptions`.
//!
//! Starts the embedded testing server on 127.0.0.1 with a JSON-RPC handler
//! that confirms `subscribe` requests, subscribes to two channels, receives
//! the notifications the server pushes, then has the server drop the TCP
//! connection. The client reconnects by itself, restores both channels in one
//! message, and notifications flow again. Any failure exits non-zero with the
//! error's explanation.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zen_websocket::crossbeam_channel::Receiver;
use zen_websocket::testing::{Disconnect, MockServer, Reply};
use zen_websocket::{Client, Config, Error, Event, Message, TimeoutKind};

const CHANNELS: [&str; 2] = ["trades.BTC-PERPETUAL", "ticker.BTC-PERPETUAL"];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subscriptions failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

/// Confirm every `subscribe` with the channels it asked for.
fn handler(m: &Message) -> Reply {
    let Some(call) = m.json() else {
        return Reply::None;
    };
    match call["method"].as_str() {
        Some("subscribe") => Reply::Text(
            json!({"jsonrpc": "2.0", "id": call["id"], "result": call["params"]["channels"]})
                .to_string(),
        ),
        _ => Reply::None,
    }
}

/// What the server pushes on a channel (the default JSON-RPC dialect).
fn notification(channel: &str, data: Value) -> String {
    json!({"jsonrpc": "2.0", "method": "subscription",
           "params": {"channel": channel, "data": data}})
    .to_string()
}

fn run() -> Result<(), Error> {
    let server = MockServer::builder().handler(handler).start()?;
    println!("started the testing server at {}", server.url());
    let client = Client::connect(
        Config::builder(server.url())
            .retry_delay(Duration::from_millis(50))
            .max_retry_delay(Duration::from_millis(200))
            .build()?,
    )?;
    let events = client.events();
    println!("connected");

    for channel in CHANNELS {
        let confirmed = client.subscribe(&[channel])?;
        println!("subscribed, the server confirmed {confirmed:?}");
    }
    println!("tracked: {:?}", client.subscriptions());

    push_and_receive(&server, &events, 1)?;

    println!("the server drops the TCP connection (no close frame)");
    server.simulate_disconnect(Disconnect::Abrupt);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match next_event(&events, deadline)? {
            Event::Disconnected { cause } => println!("event: Disconnected ({cause})"),
            Event::Reconnecting { attempt, delay, .. } => {
                println!("event: Reconnecting (attempt {attempt}, after {delay:?})")
            }
            Event::Reconnected { attempt } => println!("event: Reconnected (attempt {attempt})"),
            Event::SubscriptionsRestored { channels } => {
                println!("event: SubscriptionsRestored {channels:?}");
                break;
            }
            Event::RestoreFailed { error, .. } => return Err(clone_error(&error)),
            ev if ev.is_terminal() => return Err(Error::Closed),
            other => println!("event: {other:?}"),
        }
    }
    let subscribes = server
        .received()
        .iter()
        .filter_map(Message::json)
        .filter(|v| v["method"] == "subscribe")
        .count();
    println!(
        "the server saw {subscribes} subscribe messages: one per channel, then one restore for both"
    );

    push_and_receive(&server, &events, 2)?;
    client.close()?;
    println!("closed");
    Ok(())
}

/// The server pushes one notification per channel; print each as it arrives.
fn push_and_receive(
    server: &MockServer,
    events: &Receiver<Event>,
    round: u32,
) -> Result<(), Error> {
    for (i, channel) in CHANNELS.iter().enumerate() {
        server.inject_text(&notification(
            channel,
            json!({"round": round, "seq": i, "price": 42_000 + i}),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < CHANNELS.len() {
        if let Event::Subscription { channel, data } = next_event(events, deadline)? {
            println!("notification on {channel}: {data}");
            got += 1;
        }
    }
    Ok(())
}

fn next_event(events: &Receiver<Event>, deadline: Instant) -> Result<Event, Error> {
    events
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| Error::Timeout(TimeoutKind::Wait))
}

/// Events share their errors (`Arc<Error>`); `Error` is not `Clone`, so carry its text.
fn clone_error(e: &Error) -> Error {
    Error::Assertion(format!("restoring the subscriptions failed: {e}"))
}
