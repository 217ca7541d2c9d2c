//! Interoperability with a WebSocket server we did not write: Python's `websockets`
//! package (asyncio), run as a child process from `tests/interop/server.py`.
//!
//! # How the Python side is installed
//!
//! The tests install what they need themselves, once, into the cargo target dir:
//! `target/interop-venv/websockets-<WEBSOCKETS_VERSION>/` is a virtual environment
//! made with `python3 -m venv` (or `$ZEN_INTEROP_PYTHON -m venv`) and
//! `pip install websockets==<WEBSOCKETS_VERSION>`. A marker file inside it, written
//! last, says the install finished; later runs find it and install nothing.
//!
//! - Threads of one test binary: the install runs inside a process-wide
//!   `OnceLock`, so one thread installs and the others wait for its result.
//! - Several test binaries (or `cargo test` runs) at once: each builds into its own
//!   temporary directory `target/interop-venv/.tmp-<pid>-<nanos>/`, writes the
//!   marker there, and only then renames the whole directory to its final name.
//!   `rename(2)` of a directory is atomic and fails when the destination already
//!   exists and is not empty, so the final directory is either absent or complete.
//!   A process that loses the race finds the winner's complete venv, uses it, and
//!   deletes its own temporary copy. The venv's `bin/python` works from the renamed
//!   directory (Python finds its `pyvenv.cfg` next to the executable); only the
//!   activation scripts and pip's entry-point shebangs keep the old path, and
//!   neither is used here (`python -m pip`). Temporary directories left by a process
//!   that died are removed by the next install (Linux: when `/proc/<pid>` is gone).
//! - A different pinned version installs beside the old one (another directory), so
//!   a version bump never replaces a venv another process may be running from.
//! - The whole install is bounded by [`INSTALL_TIMEOUT`]: a step still running then
//!   is killed, and every test fails with the step, its exit status and the tail of
//!   its log. There is no silent skip: CI has PyPI access.
//!
//! # The server processes
//!
//! Each test starts its own server ([`PyServer`]), which prints its port on the
//! first line of stdout. The guard kills and waits for it on drop. The server also
//! exits on its own when its stdin (a pipe held by the guard) reaches end of file,
//! so it does not outlive a test process that a watchdog aborted.

mod support;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;
use zen_websocket::crossbeam_channel;
use zen_websocket::{
    Client, CloseInitiator, Config, ConfigBuilder, ConnectionState, Error, Event, Message,
};

/// The pinned `websockets` release (needs Python ≥ 3.11).
const WEBSOCKETS_VERSION: &str = "17.4";
/// Bound on the whole install (venv + pip + check).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on the Python server printing its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on each wait for an event.
const T: Duration = Duration::from_secs(10);
/// Watchdog of one test, started after the install.
const TEST_LIMIT: Duration = Duration::from_secs(60);
const MARKER: &str = ".zen-interop-installed";

// ---------------------------------------------------------------------------
// Installing the Python side
// ---------------------------------------------------------------------------

/// The cargo target dir (`target/`, or wherever `CARGO_TARGET_DIR` points).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn venv_python_in(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn marker_text() -> String {
    format!("websockets=={WEBSOCKETS_VERSION}\n")
}

/// A venv is ready when its marker (written last) names the pinned version.
fn is_ready(venv: &Path) -> bool {
    venv_python_in(venv).exists()
        && fs::read_to_string(venv.join(MARKER)).is_ok_and(|m| m == marker_text())
}

/// The Python interpreter of the interop venv, installing it on first use.
/// Panics (failing the test) with the cause when the install failed.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(install) {
        Ok(p) => p,
        Err(e) => panic!("installing the interop venv failed:\n{e}"),
    }
}

fn install() -> Result<PathBuf, String> {
    let root = target_dir().join("interop-venv");
    let venv = root.join(format!("websockets-{WEBSOCKETS_VERSION}"));
    if is_ready(&venv) {
        return Ok(venv_python_in(&venv));
    }
    fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    remove_abandoned_tmp_dirs(&root);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!(".tmp-{}-{nanos}", std::process::id());
    let tmp = root.join(&id);
    let log = root.join(format!("{id}.log"));
    let started = Instant::now();
    let deadline = started + INSTALL_TIMEOUT;
    eprintln!(
        "interop: installing websockets=={WEBSOCKETS_VERSION} into {} (log: {})",
        venv.display(),
        log.display()
    );
    let result = build_venv(&tmp, &log, deadline).and_then(|()| publish(&tmp, &venv));
    match result {
        Ok(()) => {
            let _ = fs::remove_file(&log);
            eprintln!("interop: venv ready in {:?}", started.elapsed());
            Ok(venv_python_in(&venv))
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(format!(
                "{e}\n--- tail of {} ---\n{}",
                log.display(),
                tail(&log)
            ))
        }
    }
}

fn build_venv(tmp: &Path, log: &Path, deadline: Instant) -> Result<(), String> {
    let base = std::env::var_os("ZEN_INTEROP_PYTHON").unwrap_or_else(|| "python3".into());
    let mut venv = Command::new(&base);
    venv.arg("-m").arg("venv").arg(tmp);
    run_step("python3 -m venv", venv, log, deadline).map_err(|e| {
        format!("{e}\n(is Python 3.11+ with the venv module installed? set ZEN_INTEROP_PYTHON to choose the interpreter)")
    })?;

    let py = venv_python_in(tmp);
    let mut pip = Command::new(&py);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ])
    .arg(format!("websockets=={WEBSOCKETS_VERSION}"));
    run_step("pip install", pip, log, deadline)?;

    let mut check = Command::new(&py);
    check.arg("-c").arg(format!(
        "import sys, websockets; sys.exit(0 if websockets.__version__ == '{WEBSOCKETS_VERSION}' else 1)"
    ));
    run_step("import websockets", check, log, deadline)?;

    fs::write(tmp.join(MARKER), marker_text()).map_err(|e| format!("writing the marker: {e}"))
}

/// Move the finished venv to its final name, atomically. Losing the race to another
/// process is fine: its venv is just as complete.
fn publish(tmp: &Path, venv: &Path) -> Result<(), String> {
    match fs::rename(tmp, venv) {
        Ok(()) => Ok(()),
        Err(_) if is_ready(venv) => {
            let _ = fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) if venv.exists() => {
            // Not ours and not complete: left by hand or by an older layout. Move it
            // aside (atomically), then try once more.
            let stale = tmp.with_extension("stale");
            fs::rename(venv, &stale).map_err(|e2| {
                format!(
                    "{} exists but is incomplete ({e}); moving it aside failed: {e2}; delete it",
                    venv.display()
                )
            })?;
            let _ = fs::remove_dir_all(&stale);
            match fs::rename(tmp, venv) {
                Ok(()) => Ok(()),
                Err(_) if is_ready(venv) => {
                    let _ = fs::remove_dir_all(tmp);
                    Ok(())
                }
                Err(e) => Err(format!("renaming into {}: {e}", venv.display())),
            }
        }
        Err(e) => Err(format!("renaming into {}: {e}", venv.display())),
    }
}

/// Run one install step with stdout and stderr appended to `log`; kill it at `deadline`.
fn run_step(what: &str, mut cmd: Command, log: &Path, deadline: Instant) -> Result<(), String> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("log: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("PIP_NO_INPUT", "1")
        .env_remove("PIP_USER")
        .env_remove("PIP_TARGET")
        .env_remove("PIP_PREFIX")
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start {cmd:?}: {e}"))?;
    let status = wait_until(&mut child, deadline)
        .map_err(|e| format!("{what}: waiting for {cmd:?}: {e}"))?;
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{what}: {cmd:?} failed with {s}")),
        None => Err(format!(
            "{what}: {cmd:?} was still running when the install bound of {INSTALL_TIMEOUT:?} ran out; killed"
        )),
    }
}

/// Wait for `child` until `deadline`; kill and reap it then (returning `None`).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Remove `.tmp-<pid>-*` directories whose process is gone (only where `/proc`
/// says so; elsewhere they are left alone).
fn remove_abandoned_tmp_dirs(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// A running `tests/interop/server.py`; killed and reaped on drop.
struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl PyServer {
    fn start() -> PyServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/server.py");
        let mut child = Command::new(python())
            .arg("-I") // isolated: no PYTHON* variables, no user site
            .arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let mut server = PyServer {
            stdin: child.stdin.take(),
            child,
            port: 0,
            stderr: log.clone(),
            readers: Vec::new(),
        };
        server.readers.push(
            std::thread::Builder::new()
                .name("py-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                        log.push_str(&line);
                        log.push('\n');
                    }
                })
                .expect("spawn stderr reader"),
        );
        let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<String>>(1);
        server.readers.push(
            std::thread::Builder::new()
                .name("py-stdout".into())
                .spawn(move || {
                    let mut reader = BufReader::new(stdout);
                    let mut line = String::new();
                    let _ = tx.send(reader.read_line(&mut line).map(|_| line));
                    // Keep draining so that the server never blocks on a full pipe.
                    let _ = std::io::copy(&mut reader, &mut std::io::sink());
                })
                .expect("spawn stdout reader"),
        );
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => server.fail(&format!("reading its port: {e}")),
            Err(_) => server.fail(&format!("no port within {STARTUP_TIMEOUT:?}")),
        };
        match line.trim().parse::<u16>() {
            Ok(port) if port != 0 => server.port = port,
            _ => server.fail(&format!("expected a port on stdout, got {line:?}")),
        }
        server
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait();
        // The readers end once the process is gone.
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        panic!(
            "python server: {what} (exit: {status:?})\n--- its stderr ---\n{}",
            self.stderr_text()
        );
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- python server stderr (port {}) ---\n{}",
                self.port,
                self.stderr_text()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Test helpers
// ---------------------------------------------------------------------------

/// Install (bounded by its own timeout), then arm the test's watchdog and start a
/// server.
fn setup(name: &'static str) -> (Watchdog, PyServer) {
    python();
    let w = watchdog(name, TEST_LIMIT);
    (w, PyServer::start())
}

fn fast(url: &str) -> ConfigBuilder {
    Config::builder(url)
        .connect_timeout(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(20))
        .max_retry_delay(Duration::from_millis(100))
        .close_timeout(Duration::from_secs(2))
}

fn connect(builder: ConfigBuilder) -> Client {
    let config = builder.build().expect("a valid config");
    let url = config.url();
    Client::connect(config).unwrap_or_else(|e| panic!("connecting to {url}: {e} ({e:?})"))
}

/// A deterministic pseudo-random payload (xorshift), so a shifted or truncated
/// echo cannot pass by accident.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Compare large payloads without printing megabytes.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

fn expect_binary(events: &crossbeam_channel::Receiver<Event>, want: &[u8], what: &str) {
    match next_message(events, T) {
        Message::Binary(b) => assert_same_bytes(&b, want, what),
        Message::Text(t) => panic!("{what}: expected binary, got text of {} bytes", t.len()),
    }
}

/// Ask the server which close code the client sent on the connection tagged `tag`.
fn close_code_seen_by_server(server: &PyServer, tag: &str) -> String {
    let probe = connect(fast(&server.url(&format!("/last-close/{tag}"))));
    let answer = next_text(&probe.events(), T);
    probe.close().unwrap();
    answer
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn text_and_binary_messages_echo_through_the_python_server() {
    let (_w, server) = setup("echo");
    let client = connect(fast(&server.url("/echo")));
    let events = client.events();
    let (first, _) = wait_for(&events, T, |_| true);
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");

    let texts = [
        "hello",
        "",
        "héllo wörld — ünïcödé",
        "日本語のテキスト",
        "🦀🎉 emoji, with a ZWJ sequence: 👩‍👩‍👧",
    ];
    for text in texts {
        client.send_text(text).unwrap();
        assert_eq!(next_text(&events, T), text);
    }
    // 2-, 3- and 4-byte characters, 450 KB in all.
    let long = "ж日🦀".repeat(50_000);
    client.send_text(long.clone()).unwrap();
    let echoed = next_text(&events, T);
    assert_same_bytes(echoed.as_bytes(), long.as_bytes(), "long multi-byte text");

    let all_bytes: Vec<u8> = (0..=255).collect();
    for data in [vec![], vec![0u8], all_bytes] {
        client.send_binary(data.clone()).unwrap();
        assert_eq!(next_message(&events, T), Message::Binary(data));
    }

    let stats = client.stats();
    assert_eq!(stats.messages_out, 9);
    assert_eq!(stats.messages_in, 9);
    assert_eq!(stats.bytes_in, stats.bytes_out);
    client.close().unwrap();
}

#[test]
fn a_one_mib_binary_and_a_one_mib_text_echo_intact() {
    let (_w, server) = setup("one_mib");
    let client = connect(fast(&server.url("/echo")));
    let events = client.events();

    let data = pattern(1 << 20, 0x5eed);
    client.send_binary(data.clone()).unwrap();
    expect_binary(&events, &data, "1 MiB binary");

    // Several in a row: frame boundaries must not drift.
    let more: Vec<Vec<u8>> = (0..3).map(|i| pattern(1 << 20, 100 + i)).collect();
    for m in &more {
        client.send_binary(m.clone()).unwrap();
    }
    for (i, m) in more.iter().enumerate() {
        expect_binary(&events, m, &format!("1 MiB binary #{i}"));
    }

    // 1 MiB of text made of 4-byte characters.
    let text = "🦀".repeat((1 << 20) / 4);
    client.send_text(text.clone()).unwrap();
    let echoed = next_text(&events, T);
    assert_same_bytes(echoed.as_bytes(), text.as_bytes(), "1 MiB text");
    client.close().unwrap();
}

#[test]
fn fragmented_server_messages_arrive_whole() {
    let (_w, server) = setup("fragmented");
    let client = connect(fast(&server.url("/fragmented")));
    let events = client.events();
    client.send_text("go").unwrap();

    // Three text fragments whose boundaries split "ö" and "🎉".
    assert_eq!(next_text(&events, T), "Hello, fragmented wörld 🎉");
    // Five binary fragments: [0], [1,1], [2,2,2], ...
    let small: Vec<u8> = (0u8..5)
        .flat_map(|i| std::iter::repeat_n(i, usize::from(i) + 1))
        .collect();
    expect_binary(&events, &small, "fragmented binary");
    // 64 fragments of 16 KiB.
    let big: Vec<u8> = (0u8..64)
        .flat_map(|i| std::iter::repeat_n(i, 16384))
        .collect();
    expect_binary(&events, &big, "1 MiB in 64 fragments");

    // Nothing else was delivered in between (no partial frames as messages).
    client.send_text("after").unwrap();
    assert_eq!(next_text(&events, T), "after");
    assert_eq!(client.stats().messages_in, 4);
    client.close().unwrap();
}

#[test]
fn server_initiated_pings_are_answered_with_pongs() {
    let (_w, server) = setup("server_pings");
    let client = connect(fast(&server.url("/ping")));
    let events = client.events();
    let deadline = Instant::now() + T;
    let mut last;
    loop {
        client.send_text("status").unwrap();
        let answer = next_text(&events, T);
        last = answer
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("the server's status is not a number: {answer:?}"));
        if last >= 3 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last >= 3,
        "the server got {last} pongs back in {T:?} (pings every 50 ms)"
    );
    assert!(client.is_connected());
    client.close().unwrap();
}

/// The server closes with `code` after our first message; with reconnection off
/// the client reports exactly that close and stops.
fn peer_close_reaches_the_client(name: &'static str, code: u16, reconnect: bool) {
    let (_w, server) = setup(name);
    let tag = format!("peer-close-{code}");
    let client = connect(
        fast(&server.url(&format!("/close/{code}?tag={tag}")))
            .reconnect_on_error(reconnect)
            .retry_count(Some(2)),
    );
    let events = client.events();
    client.send_text("please close").unwrap();
    let (end, skipped) = wait_for(&events, T, Event::is_terminal);
    match end {
        Event::Closed {
            code: got,
            reason,
            initiator,
        } => {
            assert_eq!(got, code, "close code; events before: {skipped:#?}");
            assert_eq!(reason, format!("bye {code}"));
            assert_eq!(initiator, CloseInitiator::Peer);
        }
        other => panic!("expected Closed {{ code: {code} }}, got {other:?} after {skipped:#?}"),
    }
    assert!(
        !skipped
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. } | Event::Reconnected { .. })),
        "no reconnection expected: {skipped:#?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(client.send_text("too late").is_err());
    client.close().unwrap();
    // The client completed the handshake: the server got a close frame back
    // (1006 would mean none), echoing the code.
    let seen = close_code_seen_by_server(&server, &tag);
    assert!(
        seen.split(' ').next() == Some(code.to_string().as_str()),
        "the server saw the client's close reply as {seen:?}"
    );
}

#[test]
fn a_normal_close_1000_reaches_the_client() {
    peer_close_reaches_the_client("close_1000", 1000, false);
}

#[test]
fn a_going_away_close_1001_reaches_the_client_when_reconnection_is_off() {
    peer_close_reaches_the_client("close_1001", 1001, false);
}

#[test]
fn an_application_close_4000_reaches_the_client() {
    peer_close_reaches_the_client("close_4000", 4000, false);
}

#[test]
fn a_policy_violation_close_1008_reaches_the_client() {
    peer_close_reaches_the_client("close_1008", 1008, false);
}

#[test]
fn a_policy_violation_close_1008_is_not_retried_even_with_reconnection_on() {
    // The client treats 1008 as "the same connection would be refused again".
    peer_close_reaches_the_client("close_1008_reconnect", 1008, true);
}

#[test]
fn a_going_away_close_reconnects_and_echo_works_again() {
    let (_w, server) = setup("reconnect_1001");
    // The first connection for this tag is closed with 1001; later ones echo.
    let client = connect(
        fast(&server.url("/close/1001?once=reconnect"))
            .reconnect_on_error(true)
            .retry_count(Some(5)),
    );
    let events = client.events();
    client.send_text("please close").unwrap();
    let (back, skipped) = wait_for(&events, T, |e| {
        assert!(!e.is_terminal(), "expected a reconnect, got {e:?}");
        matches!(e, Event::Reconnected { .. })
    });
    assert!(
        matches!(back, Event::Reconnected { attempt: 1 }),
        "{back:?}"
    );
    let cause = skipped.iter().find_map(|e| match e {
        Event::Disconnected { cause } => Some(cause.clone()),
        _ => None,
    });
    match cause.as_deref() {
        Some(Error::PeerClosed { code: 1001, reason }) => assert_eq!(reason, "bye 1001"),
        other => panic!("expected Disconnected by PeerClosed(1001), got {other:?} in {skipped:#?}"),
    }

    client.send_text("again").unwrap();
    assert_eq!(next_text(&events, T), "again");
    client.send_binary(vec![1u8, 2, 3]).unwrap();
    assert_eq!(next_message(&events, T), Message::Binary(vec![1, 2, 3]));
    assert_eq!(client.stats().reconnects, 1);
    assert!(client.is_connected());
    client.close().unwrap();
    let (end, _) = wait_for(&events, T, Event::is_terminal);
    assert!(
        matches!(
            end,
            Event::Closed {
                code: 1000,
                initiator: CloseInitiator::User,
                ..
            }
        ),
        "{end:?}"
    );
}

#[test]
fn a_connection_dropped_without_a_close_frame_is_reported_as_1006() {
    let (_w, server) = setup("abort_1006");
    let client = connect(fast(&server.url("/abort")).reconnect_on_error(false));
    let events = client.events();
    client.send_text("please drop").unwrap();
    let (end, skipped) = wait_for(&events, T, Event::is_terminal);
    assert!(
        matches!(
            end,
            Event::Closed {
                code: 1006,
                initiator: CloseInitiator::Peer,
                ..
            }
        ),
        "{end:?} after {skipped:#?}"
    );
    assert!(
        skipped
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "{skipped:#?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[test]
fn a_connection_dropped_without_a_close_frame_reconnects() {
    let (_w, server) = setup("abort_reconnect");
    let client = connect(fast(&server.url("/abort?once=drop")).retry_count(Some(5)));
    let events = client.events();
    client.send_text("please drop").unwrap();
    let (back, skipped) = wait_for(&events, T, |e| {
        assert!(!e.is_terminal(), "expected a reconnect, got {e:?}");
        matches!(e, Event::Reconnected { .. })
    });
    assert!(
        matches!(back, Event::Reconnected { .. }),
        "{back:?} {skipped:#?}"
    );
    client.send_text("again").unwrap();
    assert_eq!(next_text(&events, T), "again");
    assert_eq!(client.stats().reconnects, 1);
    client.close().unwrap();
}

#[test]
fn our_heartbeat_pings_get_pongs_from_the_python_server() {
    let (_w, server) = setup("heartbeats");
    let client = connect(
        fast(&server.url("/echo"))
            .heartbeat_interval(Duration::from_millis(100))
            .heartbeat_timeout(Duration::from_secs(2)),
    );
    let events = client.events();
    let deadline = Instant::now() + T;
    while client.stats().pongs_received < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = client.stats();
    assert!(
        stats.pongs_received >= 3,
        "pongs received: {} (pings sent: {})",
        stats.pongs_received,
        stats.pings_sent
    );
    assert!(stats.pings_sent >= stats.pongs_received, "{stats:?}");
    assert!(stats.last_rtt.is_some(), "{stats:?}");
    // The connection stayed up the whole time, and still echoes.
    client.send_text("still here").unwrap();
    assert_eq!(next_text(&events, T), "still here");
    assert!(
        !events
            .try_iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "the connection dropped"
    );
    assert_eq!(client.stats().reconnects, 0);
    client.close().unwrap();
}

#[test]
fn our_close_handshake_reaches_the_server_with_1000() {
    let (_w, server) = setup("user_close");
    let close_timeout = Duration::from_secs(2);
    let client = connect(
        fast(&server.url("/echo?tag=user-close"))
            .close_timeout(close_timeout)
            .reconnect_on_error(false),
    );
    let events = client.events();
    client.send_text("hi").unwrap();
    assert_eq!(next_text(&events, T), "hi");

    let started = Instant::now();
    client.close().unwrap();
    let took = started.elapsed();
    assert!(
        took < close_timeout,
        "close() took {took:?}: the server's close reply was not seen"
    );
    let (end, _) = wait_for(&events, T, Event::is_terminal);
    match end {
        Event::Closed {
            code,
            reason,
            initiator,
        } => {
            assert_eq!(code, 1000);
            assert_eq!(reason, "");
            assert_eq!(initiator, CloseInitiator::User);
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(close_code_seen_by_server(&server, "user-close"), "1000");
}

#[test]
fn dropping_the_last_handle_closes_with_1000_too() {
    let (_w, server) = setup("drop_close");
    let client = connect(fast(&server.url("/echo?tag=dropped")).reconnect_on_error(false));
    client.send_text("hi").unwrap();
    assert_eq!(next_text(&client.events(), T), "hi");
    drop(client);
    assert_eq!(close_code_seen_by_server(&server, "dropped"), "1000");
}

#[test]
fn a_burst_of_server_messages_arrives_complete_and_in_order() {
    let (_w, server) = setup("burst");
    let n = 5000;
    let client = connect(fast(&server.url(&format!("/burst/{n}"))));
    let events = client.events();
    for i in 0..n {
        assert_eq!(next_text(&events, T), format!("burst {i}"));
    }
    client.send_text("end").unwrap();
    assert_eq!(next_text(&events, T), "end");
    client.close().unwrap();
}

#[test]
fn several_clients_share_one_python_server() {
    let (_w, server) = setup("many_clients");
    let url = server.url("/echo");
    let threads: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = connect(fast(&url));
                let events = client.events();
                for i in 0..200 {
                    let text = format!("client {c} message {i} — ✓");
                    client.send_text(text.clone()).unwrap();
                    assert_eq!(next_text(&events, T), text);
                }
                let data = pattern(64 * 1024, c);
                client.send_binary(data.clone()).unwrap();
                expect_binary(&events, &data, "64 KiB binary");
                client.close().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
}

/// Not a test of the client: the install is shared by every test of this binary
/// and is made once.
#[test]
fn the_interop_venv_is_installed_once_with_the_pinned_version() {
    let py = python();
    let venv = py.parent().and_then(Path::parent).expect("venv dir");
    assert!(is_ready(venv), "{} has no marker", venv.display());
    let mut out = String::new();
    let mut child = Command::new(py)
        .args([
            "-I",
            "-c",
            "import websockets; print(websockets.__version__)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the venv python");
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .unwrap();
    let status = wait_until(&mut child, Instant::now() + T).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(out.trim(), WEBSOCKETS_VERSION);
}
