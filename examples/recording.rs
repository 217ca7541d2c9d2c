//! Record a session: `cargo run --example recording -- [URL] [PATH]`.
//!
//! Connects to URL (with no URL, or `-`, to the embedded testing server, an
//! echo server on 127.0.0.1) with recording on, sends 100 text and 10 binary
//! messages, waits for their echoes, closes, and prints the recording's
//! metadata as one JSON object on the last line. PATH defaults to a file in
//! the system's temporary directory; an existing file is appended to.
//!
//! If the recording cannot be written (try PATH `/dev/full`), it exits
//! non-zero with a message that names the path and the cause.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zen_websocket::crossbeam_channel::Receiver;
use zen_websocket::recorder::{self, flush_on_ctrl_c};
use zen_websocket::testing::MockServer;
use zen_websocket::{Client, Config, Error, Event, Message, TimeoutKind};

const TEXTS: usize = 100;
const BINARIES: usize = 10;
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recording failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    // Ctrl-C would otherwise lose what the recorder still has queued.
    flush_on_ctrl_c()?;
    let mut args = std::env::args().skip(1);
    let url_arg = args.next().filter(|u| u != "-");
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("zen-ws-recording-{}.jsonl", std::process::id()))
    });
    // Keep the server alive for the whole run when we started it ourselves.
    let (url, _server) = match url_arg {
        Some(url) => (url, None),
        None => {
            let server = MockServer::start()?;
            println!("started the testing server at {}", server.url());
            (server.url(), Some(server))
        }
    };

    let config = Config::builder(url.as_str())
        .connect_timeout(Duration::from_secs(5))
        .record_to(&path)
        .build()?;
    let client = Client::connect(config)?;
    println!("connected to {url}, recording to {}", path.display());

    let events = client.events();
    for i in 0..TEXTS {
        client.send_text(format!("message {i}"))?;
    }
    for i in 0..BINARIES {
        let payload: Vec<u8> = (0..32u8).map(|b| b ^ (i as u8)).collect();
        client.send_binary(payload)?;
    }
    let (texts, binaries) = await_echoes(&events, TEXTS + BINARIES)?;
    println!(
        "sent {TEXTS} text and {BINARIES} binary messages; echoed: {texts} text, {binaries} binary"
    );

    // close() flushes the recording and reports a failed write.
    client.close()?;
    println!("closed; the recording is on disk");

    let meta = recorder::metadata(&path)?;
    println!("{}", meta.to_json());
    Ok(())
}

/// Waits for `n` messages; returns how many were text and how many binary.
fn await_echoes(events: &Receiver<Event>, n: usize) -> Result<(usize, usize), Error> {
    let deadline = Instant::now() + ECHO_TIMEOUT;
    let (mut texts, mut binaries) = (0, 0);
    while texts + binaries < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Message(Message::Text(_))) => texts += 1,
            Ok(Event::Message(Message::Binary(_))) => binaries += 1,
            Ok(e) if e.is_terminal() => return Err(Error::Closed),
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "only {} of {n} echoes within {ECHO_TIMEOUT:?}",
                    texts + binaries
                );
                return Err(Error::Timeout(TimeoutKind::Wait));
            }
        }
    }
    Ok((texts, binaries))
}
