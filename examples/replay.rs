//! Replay a recording to a client: `cargo run --example replay -- [PATH]`.
//!
//! With no PATH it first records a small session against the embedded
//! testing server (a few texts, a binary message, a server push). Then it
//! starts a `ReplayServer` on 127.0.0.1 that plays the recording's inbound
//! frames, connects a client to it, and prints what the client received.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zen_websocket::recorder::{flush_on_ctrl_c, ReplayOptions, ReplayServer};
use zen_websocket::testing::MockServer;
use zen_websocket::{Client, Config, Error, Event, Message, TimeoutKind};

/// The replay has ended when nothing arrives for this long.
const QUIET: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    // Ctrl-C during the first recording would otherwise lose its tail.
    flush_on_ctrl_c()?;
    let path = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => make_recording()?,
    };

    let server = ReplayServer::start(&path, ReplayOptions::default())?;
    println!(
        "replaying {} ({} inbound frames of connection {}) on {}",
        path.display(),
        server.frames_to_play(),
        server
            .conn()
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        server.url()
    );
    let client = Client::connect(
        Config::builder(server.url())
            .reconnect_on_error(false)
            .build()?,
    )?;
    let events = client.events();
    let mut received = 0;
    while received < server.frames_to_play() {
        match events.recv_timeout(QUIET) {
            Ok(Event::Message(Message::Text(t))) => {
                received += 1;
                println!("received text: {t}");
            }
            Ok(Event::Message(Message::Binary(b))) => {
                received += 1;
                println!("received binary ({} bytes): {:02x?}", b.len(), b);
            }
            Ok(Event::Closed { code, reason, .. }) => {
                received += 1;
                println!("closed by the server with code {code} {reason:?}");
                break;
            }
            Ok(_) => {}
            Err(_) => {
                println!("nothing more within {QUIET:?}");
                break;
            }
        }
    }
    client.close()?;
    println!(
        "the client received {received} of {} frames",
        server.frames_to_play()
    );
    Ok(())
}

/// Records a short session against the testing server; returns the file.
fn make_recording() -> Result<PathBuf, Error> {
    let path = std::env::temp_dir().join(format!("zen-ws-replay-{}.jsonl", std::process::id()));
    let server = MockServer::start()?;
    let client = Client::connect(Config::builder(server.url()).record_to(&path).build()?)?;
    let events = client.events();
    for i in 1..=3 {
        client.send_text(format!(r#"{{"op":"hello","n":{i}}}"#))?;
    }
    client.send_binary(vec![0xde, 0xad, 0xbe, 0xef])?;
    let mut echoes = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while echoes < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Message(_)) => echoes += 1,
            Ok(_) => {}
            Err(_) => return Err(Error::Timeout(TimeoutKind::Wait)),
        }
    }
    server.inject_text(r#"{"channel":"ticker","price":101.5}"#);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Message(_)) => break,
            Ok(_) => {}
            Err(_) => return Err(Error::Timeout(TimeoutKind::Wait)),
        }
    }
    client.close()?; // flushes the recording
    println!("recorded a short session to {}", path.display());
    Ok(path)
}
