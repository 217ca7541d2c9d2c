//! A TCP fault-injection proxy for the integration tests, on 127.0.0.1 only.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0`; for each accepted client
//! connection it dials the upstream and pumps bytes both ways on two named
//! threads (`fault-proxy-<n>-c2s`, `fault-proxy-<n>-s2c`). Faults are changed
//! at run time and apply at once to live and new connections:
//!
//! - [`pass`](FaultProxy::pass): forward normally (clears every fault);
//! - [`latency`](FaultProxy::latency): hold each forwarded chunk this long;
//! - [`stall`](FaultProxy::stall) / [`stall_both`](FaultProxy::stall_both):
//!   stop forwarding one way or both ways while the sockets stay open (both
//!   ways is a half-open link: only heartbeats can tell);
//! - [`reset_all`](FaultProxy::reset_all): cut every live connection;
//! - [`refuse`](FaultProxy::refuse) / [`refuse_for`](FaultProxy::refuse_for):
//!   accept new connections and close them at once;
//! - [`accepted_upgrades_blackhole`](FaultProxy::accepted_upgrades_blackhole):
//!   accept TCP and never forward anything (a server that never answers the
//!   upgrade).
//!
//! Nothing in the API sleeps to synchronize: [`wait_attempts`](FaultProxy::wait_attempts)
//! and [`wait_connections`](FaultProxy::wait_connections) wait on a condition
//! variable that every change notifies. Dropping the proxy cuts everything and
//! joins every thread it started.
//!
//! What std cannot do, and what we do instead:
//!
//! - **A real RST.** An abortive close needs `SO_LINGER` 0, which std only
//!   offers on nightly (`TcpStream::set_linger`), and we add neither `unsafe`
//!   nor a crate for it. `reset_all` shuts both sockets down (`shutdown(Both)`)
//!   and drops them: the client sees end-of-stream (a FIN), or a reset if its
//!   next write hits the closed socket. Either is a lost connection to it.
//! - **Refusing a dial.** Making `connect` fail with `ECONNREFUSED` means not
//!   listening; we could drop the listener and bind the same port again
//!   later, but another test may take the port meanwhile. So a refused
//!   connection is accepted and closed at once: the client's TCP connect
//!   succeeds and its upgrade fails (end-of-stream or reset). Every such
//!   connection counts in [`attempts`](FaultProxy::attempts), which is what
//!   the backoff tests need. (For a true `ConnectionRefused` use `RefusedPort`.)

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the upstream server.
    ClientToServer,
    /// From the upstream server to the client.
    ServerToClient,
}

impl Direction {
    fn tag(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }
}

/// The faults in force; the default forwards everything at once.
#[derive(Debug, Default)]
struct Faults {
    latency: Duration,
    stall_c2s: bool,
    stall_s2c: bool,
    refuse: bool,
    refuse_until: Option<Instant>,
    blackhole: bool,
}

impl Faults {
    fn stalled(&self, dir: Direction) -> bool {
        match dir {
            Direction::ClientToServer => self.stall_c2s,
            Direction::ServerToClient => self.stall_s2c,
        }
    }

    fn refusing(&self, now: Instant) -> bool {
        self.refuse || self.refuse_until.is_some_and(|t| now < t)
    }
}

/// A live proxied connection: clones of both sockets, kept so that
/// `reset_all` and `drop` can shut them down and wake the pumps' reads.
struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Set when the link was cut; its pumps stop at their next step.
    cut: bool,
    /// Pumps still running; the link is forgotten when both have ended.
    pumps: u8,
}

impl Link {
    fn cut(&mut self) {
        self.cut = true;
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    faults: Faults,
    /// Connections accepted, refused and black-holed ones included.
    attempts: usize,
    /// Connections forwarded to the upstream.
    forwarded: usize,
    links: HashMap<u64, Link>,
    /// Black-holed client sockets, held open until the black hole ends.
    held: Vec<TcpStream>,
    /// Pump threads; finished ones are joined as new connections arrive.
    threads: Vec<JoinHandle<()>>,
    next_id: u64,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every change of `state` (faults, counters, links).
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut st = self.state.lock();
        f(&mut st);
        drop(st);
        self.changed.notify_all();
    }
}

/// A fault-injection TCP proxy in front of one upstream server.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("faults", &st.faults)
            .field("attempts", &st.attempts)
            .field("links", &st.links.len())
            .finish()
    }
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` and forward every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        assert!(upstream.ip().is_loopback(), "loopback only: {upstream}");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, upstream, s))
            .expect("spawn the proxy's accept thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Forward normally from now on: clears latency, stalls, refusal and the
    /// black hole (held black-holed sockets are closed). Data a stall held
    /// back flows again on the links that are still open.
    pub fn pass(&self) {
        self.shared.update(|st| {
            st.faults = Faults::default();
            release_held(st);
        });
    }

    /// Hold every chunk this long before forwarding it (both directions).
    pub fn latency(&self, d: Duration) {
        self.shared.update(|st| st.faults.latency = d);
    }

    /// Stop forwarding in one direction; the sockets stay open and what
    /// arrives is held back (at most one chunk in the proxy, the rest in the
    /// kernel's buffers, so the sender feels TCP back-pressure).
    pub fn stall(&self, dir: Direction) {
        self.shared.update(|st| match dir {
            Direction::ClientToServer => st.faults.stall_c2s = true,
            Direction::ServerToClient => st.faults.stall_s2c = true,
        });
    }

    /// A half-open link: nothing flows either way, the sockets stay open.
    pub fn stall_both(&self) {
        self.shared.update(|st| {
            st.faults.stall_c2s = true;
            st.faults.stall_s2c = true;
        });
    }

    /// Cut every live connection (`shutdown(Both)` and drop: a FIN, see the
    /// module docs on why not an RST). New connections are not affected.
    pub fn reset_all(&self) {
        self.shared.update(|st| {
            for link in st.links.values_mut() {
                link.cut();
            }
            release_held(st);
        });
    }

    /// Accept new connections and close them at once (`true`) or not.
    pub fn refuse(&self, on: bool) {
        self.shared.update(|st| {
            st.faults.refuse = on;
            if !on {
                st.faults.refuse_until = None;
            }
        });
    }

    /// Refuse new connections (see [`refuse`](Self::refuse)) for `d` from now.
    pub fn refuse_for(&self, d: Duration) {
        self.shared
            .update(|st| st.faults.refuse_until = Some(Instant::now() + d));
    }

    /// Accept TCP and never forward anything (`true`), like a server that
    /// accepts the connection and never answers the upgrade. Turning it off
    /// closes the held sockets.
    pub fn accepted_upgrades_blackhole(&self, on: bool) {
        self.shared.update(|st| {
            st.faults.blackhole = on;
            if !on {
                release_held(st);
            }
        });
    }

    /// Live forwarded connections (cut ones and black-holed ones excluded).
    pub fn connections(&self) -> usize {
        live(&self.shared.state.lock())
    }

    /// Connections accepted so far, refused and black-holed ones included.
    pub fn attempts(&self) -> usize {
        self.shared.state.lock().attempts
    }

    /// Connections forwarded to the upstream so far.
    pub fn forwarded(&self) -> usize {
        self.shared.state.lock().forwarded
    }

    /// Wait until [`attempts`](Self::attempts) is at least `n`; false on timeout.
    pub fn wait_attempts(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| st.attempts >= n)
    }

    /// Wait until [`connections`](Self::connections) is `n` exactly; false on timeout.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| live(st) == n)
    }

    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        loop {
            if done(&st) {
                return true;
            }
            if self
                .shared
                .changed
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                return done(&st);
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.update(|st| {
            st.stopping = true;
            st.faults = Faults::default();
            for link in st.links.values_mut() {
                link.cut();
            }
            release_held(st);
        });
        // Wake the blocking accept so that it sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // The accept thread has ended, so no pump can be added any more.
        let threads = std::mem::take(&mut self.shared.state.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

fn live(st: &State) -> usize {
    st.links.values().filter(|l| !l.cut).count()
}

fn release_held(st: &mut State) {
    for s in st.held.drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let finished = {
            let mut st = shared.state.lock();
            if st.stopping {
                break;
            }
            let (done, running): (Vec<_>, Vec<_>) =
                st.threads.drain(..).partition(|t| t.is_finished());
            st.threads = running;
            done
        };
        for t in finished {
            let _ = t.join();
        }
        let Ok(client) = conn else { continue };
        let _ = client.set_nodelay(true);
        {
            let mut st = shared.state.lock();
            st.attempts += 1;
            let refused = st.faults.refusing(Instant::now());
            if refused {
                drop(st);
                shared.changed.notify_all();
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            if st.faults.blackhole {
                st.held.push(client);
                drop(st);
                shared.changed.notify_all();
                continue;
            }
        }
        shared.changed.notify_all();
        // Dialed on the accept thread: on loopback this takes microseconds.
        let server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = server.set_nodelay(true);
        if let Err(e) = start_link(&shared, client, server) {
            eprintln!("fault proxy: could not start a link: {e}");
        }
    }
}

fn start_link(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    let link = Link {
        client: client.try_clone()?,
        server: server.try_clone()?,
        cut: false,
        pumps: 2,
    };
    let c2s = (client.try_clone()?, server.try_clone()?);
    let s2c = (server, client);
    let mut st = shared.state.lock();
    if st.stopping {
        // `drop` has already cut every link; one added now would never be cut.
        let _ = link.client.shutdown(Shutdown::Both);
        let _ = link.server.shutdown(Shutdown::Both);
        return Ok(());
    }
    let id = st.next_id;
    st.next_id += 1;
    st.forwarded += 1;
    // Registered before the pumps start, so a `reset_all` from now on reaches it.
    st.links.insert(id, link);
    for (dir, (from, to)) in [
        (Direction::ClientToServer, c2s),
        (Direction::ServerToClient, s2c),
    ] {
        let s = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("fault-proxy-{id}-{}", dir.tag()))
            .spawn(move || pump(&s, id, dir, from, to))?;
        st.threads.push(t);
    }
    drop(st);
    shared.changed.notify_all();
    Ok(())
}

/// Why a pump stopped.
enum Stop {
    /// The sender closed its side cleanly: pass the half-close on.
    Eof,
    /// The link was cut, or a socket failed: cut the whole link.
    Cut,
}

fn pump(shared: &Shared, id: u64, dir: Direction, mut from: TcpStream, mut to: TcpStream) {
    let stop = forward(shared, id, dir, &mut from, &mut to);
    let mut st = shared.state.lock();
    let gone = match st.links.get_mut(&id) {
        Some(link) => {
            match stop {
                Stop::Eof => {
                    let _ = to.shutdown(Shutdown::Write);
                }
                Stop::Cut => link.cut(),
            }
            link.pumps -= 1;
            link.pumps == 0
        }
        None => false,
    };
    if gone {
        st.links.remove(&id);
    }
    drop(st);
    shared.changed.notify_all();
}

fn forward(
    shared: &Shared,
    id: u64,
    dir: Direction,
    from: &mut TcpStream,
    to: &mut TcpStream,
) -> Stop {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // A blocking read: `reset_all` and `drop` wake it by shutting the socket down.
        let n = match from.read(&mut buf) {
            Ok(0) => return Stop::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Stop::Cut,
        };
        // Hold the chunk while this direction is stalled, then for the latency.
        let mut st = shared.state.lock();
        let mut hold_until = None;
        loop {
            let cut = st.stopping || st.links.get(&id).is_none_or(|l| l.cut);
            if cut {
                return Stop::Cut;
            }
            if st.faults.stalled(dir) {
                shared.changed.wait(&mut st);
                continue;
            }
            let until = *hold_until.get_or_insert_with(|| Instant::now() + st.faults.latency);
            if Instant::now() >= until {
                break;
            }
            shared.changed.wait_until(&mut st, until);
        }
        drop(st);
        if to.write_all(&buf[..n]).is_err() {
            return Stop::Cut;
        }
    }
}
