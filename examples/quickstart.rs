//! The newcomer's first run: `cargo run --example quickstart`.
//!
//! With no arguments it starts the embedded testing server on 127.0.0.1 (an
//! echo server), connects, sends three messages, prints each reply and closes.
//! With a URL (`cargo run --example quickstart -- wss://host/path`) it does the
//! same against that server. Any failure exits non-zero with the error's
//! explanation.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use zen_websocket::testing::MockServer;
use zen_websocket::{Client, Config, Error, Event, Message};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    // Keep the server alive for the whole run when we started it ourselves.
    let (url, _server) = match std::env::args().nth(1) {
        Some(url) => (url, None),
        None => {
            let server = MockServer::start()?;
            println!("started the testing server at {}", server.url());
            (server.url(), Some(server))
        }
    };
    let client = Client::connect(
        Config::builder(url.as_str())
            .connect_timeout(Duration::from_secs(5))
            .build()?,
    )?;
    println!("connected to {url}");
    let events = client.events();
    for i in 1..=3 {
        let text = format!("hello {i}");
        client.send_text(text.as_str())?;
        let reply = next_message(&events, Duration::from_secs(5))?;
        println!("{reply}");
    }
    client.close()?;
    println!("closed");
    Ok(())
}

/// Wait for the next data message, skipping lifecycle events.
fn next_message(
    events: &zen_websocket::crossbeam_channel::Receiver<Event>,
    timeout: Duration,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Message(Message::Text(t))) => return Ok(t),
            Ok(Event::Message(Message::Binary(b))) => return Ok(format!("<{} bytes>", b.len())),
            Ok(e) if e.is_terminal() => return Err(Error::Closed),
            Ok(_) => continue,
            Err(_) => return Err(Error::Timeout(zen_websocket::TimeoutKind::Wait)),
        }
    }
}
