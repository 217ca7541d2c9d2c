//! JSON-RPC requests: `cargo run --example jsonrpc_client`.
//!
//! Starts the embedded testing server on 127.0.0.1 with a handler that speaks
//! JSON-RPC 2.0, then makes requests, a batch, a request that times out (and
//! shows its late response arriving as an event) and one the server refuses
//! with an error object. Any unexpected outcome exits non-zero with the
//! error's explanation.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zen_websocket::testing::{MockServer, Reply};
use zen_websocket::{Client, Config, Error, Event, Message, TimeoutKind};

/// How long `public/slow` makes the caller wait.
const SLOW: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jsonrpc_client failed: {}", e.explain());
            ExitCode::FAILURE
        }
    }
}

/// The server side: `{"id":..,"method":..,"params":..}` in, `{"jsonrpc":"2.0","id":..,"result":..}` out.
fn answer(call: &Value) -> Option<Value> {
    let id = call.get("id")?.clone(); // notifications get no answer
    let params = call.get("params").cloned().unwrap_or(Value::Null);
    let reply = match call["method"].as_str().unwrap_or_default() {
        "public/get_time" => json!({"jsonrpc": "2.0", "id": id, "result": 1_700_000_000_000u64}),
        "private/buy" => json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": 10009, "message": "not_enough_funds", "data": {"needed": 42.5}
        }}),
        "public/slow" => {
            // Runs on the server's connection thread: a slow venue.
            std::thread::sleep(SLOW);
            json!({"jsonrpc": "2.0", "id": id, "result": params})
        }
        _ => json!({"jsonrpc": "2.0", "id": id, "result": params}),
    };
    Some(reply)
}

fn handler(m: &Message) -> Reply {
    match m.json() {
        Some(Value::Array(calls)) => {
            let answers: Vec<Value> = calls.iter().filter_map(answer).collect();
            Reply::Text(Value::Array(answers).to_string())
        }
        Some(call) => answer(&call).map_or(Reply::None, |a| Reply::Text(a.to_string())),
        None => Reply::None,
    }
}

fn unexpected(what: &str, got: impl std::fmt::Debug) -> Error {
    Error::Assertion(format!("expected {what}, got {got:?}"))
}

fn run() -> Result<(), Error> {
    let server = MockServer::builder().handler(handler).start()?;
    println!("started a JSON-RPC testing server at {}", server.url());
    let client = Client::connect(
        Config::builder(server.url())
            .request_timeout(Duration::from_secs(5))
            .build()?,
    )?;
    println!("connected");

    // Plain requests: the result, or the error.
    let time = client.request("public/get_time", Value::Null)?;
    println!("request public/get_time -> {time}");
    let echo = client.request("public/echo", json!({"hello": "world"}))?;
    println!("request public/echo {{\"hello\":\"world\"}} -> {echo}");

    // A batch: one frame, results in the order of the calls.
    let results = client.batch_request(
        &[
            ("public/get_time", Value::Null),
            ("public/echo", json!([1, 2, 3])),
            ("private/buy", json!({"amount": 10})),
        ],
        Duration::from_secs(5),
    )?;
    println!("batch of {} calls in one frame:", results.len());
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => println!("  [{i}] ok    {v}"),
            Err(e) => println!("  [{i}] error {e}"),
        }
    }

    // A timeout: the caller gets Timeout(Request) at once, the slot is freed,
    // and the answer that comes later is handed over as an event.
    let events = client.events();
    let started = Instant::now();
    match client.request_with_timeout("public/slow", json!({"n": 7}), Duration::from_millis(150)) {
        Err(e @ Error::Timeout(TimeoutKind::Request)) => println!(
            "request public/slow with a 150 ms timeout -> {e} after {:?} ({} pending)",
            started.elapsed(),
            client.stats().pending_requests
        ),
        other => return Err(unexpected("a request timeout", other)),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::LateResponse(late)) => {
                println!(
                    "late response for request {} after {:?}: {:?}",
                    late.id,
                    started.elapsed(),
                    late.outcome
                );
                break;
            }
            Ok(_) => continue,
            Err(_) => return Err(Error::Timeout(TimeoutKind::Wait)),
        }
    }

    // An RPC error: the server's code, message and data.
    match client.request("private/buy", json!({"amount": 10})) {
        Err(Error::Rpc {
            code,
            message,
            data,
        }) => {
            println!("request private/buy -> RPC error {code} {message:?}, data {data:?}")
        }
        other => return Err(unexpected("an RPC error", other)),
    }

    let stats = client.stats();
    println!(
        "latency over {} responses: p50 {:?}, p99 {:?}; {} pending",
        stats.request_latency.count,
        stats.request_latency.p50.unwrap_or_default(),
        stats.request_latency.p99.unwrap_or_default(),
        stats.pending_requests
    );
    client.close()?;
    println!("closed");
    Ok(())
}
