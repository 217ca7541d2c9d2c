//! The testing server leaves no thread behind. Alone in its own test binary
//! (so its own process), because it counts the process's threads by name.

#![cfg(target_os = "linux")]

use std::fs;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use zen_websocket::testing::MockServer;

/// Names of this process's threads that belong to a mock server (Linux cuts
/// thread names to 15 bytes, which keeps the `zen-ws-mock-` prefix).
fn mock_threads() -> Vec<String> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("zen-ws-mock-"))
        .collect()
}

/// Wait (bounded) until the mock threads are `acc` acceptors, `conn` connection
/// threads and `read` reader threads, and return the names last seen.
///
/// Exact counts need a wait: a new thread carries its creator's name until it
/// names itself, and a joined thread can linger in /proc for a moment after
/// `join` returns (the kernel reaps it just after waking the joiner).
fn wait_for_threads(acc: usize, conn: usize, read: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let threads = mock_threads();
        let count = |kind: &str| threads.iter().filter(|t| t.starts_with(kind)).count();
        let seen = (
            count("zen-ws-mock-acc"),
            count("zen-ws-mock-con"),
            count("zen-ws-mock-rea"),
        );
        if seen == (acc, conn, read) && threads.len() == acc + conn + read {
            return threads;
        }
        assert!(
            Instant::now() < deadline,
            "expected {acc} acceptor, {conn} connection and {read} reader threads; saw {threads:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stop_and_drop_join_every_thread() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = MockServer::start()?;
    let tls = MockServer::start_tls()?;
    let (_a, _) = tungstenite::connect(server.url())?;
    let (_b, _) = tungstenite::connect(server.url())?;
    // A client that never finishes its handshake, on each server.
    let _idle = TcpStream::connect_timeout(&server.addr(), Duration::from_secs(5))?;
    let _idle_tls = TcpStream::connect_timeout(&tls.addr(), Duration::from_secs(5))?;
    // Each connection has a thread and a reader thread (names cut to 15 bytes).
    wait_for_threads(2, 4, 4);

    let started = Instant::now();
    server.stop();
    drop(tls);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_for_threads(0, 0, 0);

    server.restart()?;
    wait_for_threads(1, 0, 0);
    drop(server);
    wait_for_threads(0, 0, 0);
    Ok(())
}
